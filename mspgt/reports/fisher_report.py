"""Report of the A.5 test (experiment=fisher): a markdown table and a figure of the Fisher traces and of the
measured against the predicted KL per scale."""

from __future__ import annotations

import math
from pathlib import Path

SCALE_COLOURS = {"local": "#1f77b4", "intermediate": "#ff7f0e", "global": "#2ca02c"}


def _g(x: float | None, spec: str = ".3g") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def fisher_markdown(result: dict) -> str:
    v, h = result["verdict"], result["heldout"]
    lines = [
        f"# A.5: brittleness from the Fisher information ({result['model']['name']}, "
        f"control={result.get('control', {}).get('key', 'none')})", "",
        f"Held-out sentences {h['first_sentence']}..{h['first_sentence'] + h['n_sentences'] - 1} of the corpus "
        f"({h['n_positions']} predicted positions; KL on the first {h['kl_sentences']}), "
        f"{result['fisher']['samples_per_position']} draws of y per position, {result['draws']} noise draws per sigma.",
        "", f"**Verdict: {v['value']}** ({v['rule']}).", "",
        "| scale (blocks) | sigma | predicted KL/token | measured KL/token | measured / predicted | dNLL/token |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result["scales"].items():
        for p in r["per_sigma"]:
            lines.append(
                f"| {name} ({r['first_last'][0]}-{r['first_last'][1]}) | {p['sigma']:g} "
                f"| {_g(p['predicted_kl'])} ± {_g(p['predicted_kl_se'], '.2g')} "
                f"| {_g(p['measured_kl'])} ± {_g(p['measured_kl_se'], '.2g')} "
                f"| {_g(p['ratio'])} ± {_g(p['ratio_se'], '.2g')} | {_g(p['dnll'])} ± {_g(p['dnll_se'], '.2g')} |")
    lines += ["", "| scale | (1/2) sum s_l^2 Tr F_l | KL slope vs sigma^2 | slope / predicted | R^2 | dNLL slope / predicted "
              "| holds |", "|---|---|---|---|---|---|---|"]
    for name, r in result["scales"].items():
        f, n = r["fit_kl"], r["fit_dnll"]
        lines.append(f"| {name} | {_g(r['predicted_coefficient'])} ± {_g(r['predicted_coefficient_se'], '.2g')} "
                     f"| {_g(f['slope'])} | {_g(f['slope_over_predicted'])} | {_g(f['r2'], '.4f')} "
                     f"| {_g(n['slope_over_predicted'])} | {'yes' if r['holds'] else 'no'} |")
    f = result["fisher"]
    lines += ["", "Tr F_l per predicted token (± SE over sentences), l = 0..L: " + ", ".join(
        f"{i}: {_g(x)} ± {_g(se, '.2g')}" for i, (x, se) in enumerate(zip(f["per_token"], f["se"], strict=True))),
        "", "Definitions (ours where the paper's equations are unreadable): " + "; ".join(
            f"{k}: {d}" for k, d in result["definitions"].items()) + "."]
    return "\n".join(lines) + "\n"


def fisher_figure(result: dict, path: Path) -> Path:
    """Left: Tr F_l and s_l^2 Tr F_l per block. Right: measured KL per token against sigma^2, per scale, with
    the predicted line (sigma^2 / 2) sum s_l^2 Tr F_l."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    f, s = result["fisher"], np.asarray(result["activation_std"]["values"], dtype=float)
    tr, se = np.asarray(f["per_token"], dtype=float), np.asarray(f["se"], dtype=float)
    layers = np.arange(len(tr))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    a.errorbar(layers, tr, yerr=se, fmt="o-", ms=3, label="Tr F_l")
    a.plot(layers, s**2 * tr, "s--", ms=3, label="s_l^2 Tr F_l")
    for name, r in result["scales"].items():
        lo, hi = r["first_last"]
        a.axvspan(lo - 0.5, hi + 0.5, color=SCALE_COLOURS.get(name, "grey"), alpha=0.12)
    a.set_yscale("log")
    a.set_xlabel("state h_l (block l)")
    a.set_ylabel("per predicted token")
    a.set_title("Fisher trace per block (± SE); scales shaded")
    a.legend()
    sig = np.asarray(result["sigmas"], dtype=float)
    grid = np.geomspace(sig.min(), sig.max(), 50)
    for name, r in result["scales"].items():
        colour = SCALE_COLOURS.get(name, "grey")
        for p in r["per_sigma"]:
            b.scatter([p["sigma"] ** 2] * len(p["measured_kl_draws"]), p["measured_kl_draws"], color=colour, s=12)
        b.plot(grid**2, r["predicted_coefficient"] * grid**2, color=colour, label=f"{name}: predicted")
    b.set_xscale("log")
    b.set_yscale("log")
    b.set_xlabel("sigma^2")
    b.set_ylabel("KL(p || p_e) per predicted token")
    b.set_title(f"measured (dots) vs predicted (lines): {result['verdict']['value']}")
    b.legend()
    fig.suptitle(f"A.5 Fisher test, {result['model']['name']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.savefig(Path(path).with_suffix(".pdf"))  # the same figure as PDF beside the PNG, for papers
    plt.close(fig)
    return Path(path)
