"""Information curves of the boundary pass with bootstrap bands, the eq. 28 test at the detected boundaries,
and their figure (appendix A.4). Curves over the states h_0..h_L (index = l):
- `entropy`: S(h_l); `mi_input`: I(h_0; h_l); `mi_adjacent`: I(h_{l-1}; h_l) (index 0 empty);
- `mi_input_null`, `mi_adjacent_null`: the same MI with h_l's tokens permuted within each group (the shuffle
  null; the MI curves are tested as their excess over it);
- `v_info_<task>`: I_V(h_l -> Y_task) from the trained probes, on the held-out groups.
All bits, all named as our estimators of the paper's mutual information (InformationSettings.describe).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from mspgt.files import json_safe
from mspgt.fusion.bootstrap import percentile_interval, resample_counts
from mspgt.fusion.phase_transition import RULE, combine_verdicts, eq28_test
from mspgt.signals.information import (
    NULL_OF,
    InformationSettings,
    label_marginal_ce,
    v_information,
    weighted_curves,
)
from mspgt.statistics import CorpusStatistics


def information_curves(stats: CorpusStatistics, probes: Any, weights: np.ndarray | None,
                       seed_counts: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every available curve for group weights None, [G] or [B, G] -> [L+1] or [B, L+1] each. With several
    probe training seeds (ProbeSeeds), V-information is the mean over the seeds of each seed's, and with
    seed_counts [B, P] each resample weighs the seeds by its draw (as the boundary bootstrap does)."""
    out = {c: weighted_curves(v, weights) for c, v in stats.information.items()}
    runs = list(getattr(probes, "runs", None) or ([probes] if probes is not None else []))
    if not runs or not runs[0].heldout_ce:
        return out
    eval_groups = np.nonzero(stats.group_is_eval)[0]
    index = np.searchsorted(eval_groups, stats.probe_eval.group)  # [N] position among held-out groups
    w = None if weights is None else np.asarray(weights)[..., eval_groups]
    for t in runs[0].heldout_ce:
        prior = label_marginal_ce(stats.probe_train.labels[t], stats.probe_eval.labels[t], len(stats.label_names[t]))
        per_seed = np.stack([v_information(prior, r.heldout_ce[t].astype(float), index, len(eval_groups), w)
                             for r in runs])  # [P, L+1] or [P, B, L+1]
        if seed_counts is None or per_seed.ndim == 2:
            out[f"v_info_{t}"] = per_seed.mean(0)
        else:
            out[f"v_info_{t}"] = np.einsum("bp,pbl->bl", seed_counts, per_seed) / seed_counts.sum(1, keepdims=True)
    return out


def information_result(stats: CorpusStatistics, probes: Any, boundaries: dict[str, int | None], cfg: DictConfig
                       ) -> dict[str, Any] | None:
    """Curves (point, bootstrap band), the eq. 28 test per curve and boundary; None without stored curves.
    The MI curves are tested against their shuffle null over the same resamples; the null curves themselves
    are reported, not tested."""
    if not stats.information:
        return None
    settings = InformationSettings.from_config(cfg.extraction.information) or InformationSettings()
    b, k = cfg.bootstrap, int(cfg.extraction.information.get("kink_window", 3))
    point = information_curves(stats, probes, None)
    counts = resample_counts(stats.n_groups, int(b.n_resamples), np.random.default_rng(b.seed))  # as the CIs
    n_seeds = len(getattr(probes, "runs", None) or [None])
    seed_counts = (resample_counts(n_seeds, int(b.n_resamples), np.random.default_rng([int(b.seed), 1]))
                   if n_seeds > 1 else None)  # the boundary bootstrap's seed draws (fusion/bootstrap.py)
    boot = information_curves(stats, probes, counts, seed_counts)
    kink_points = {name: int(layer) - 1 for name, layer in boundaries.items() if layer is not None}
    nulls = set(NULL_OF.values())
    curves, tests = {}, {}
    for name, curve in point.items():
        band = [percentile_interval(boot[name][:, i], float(b.ci_level)) for i in range(curve.shape[-1])]
        curves[name] = {"value": curve.tolist(), "ci_low": [lo for lo, _ in band], "ci_high": [hi for _, hi in band]}
        if name in nulls:
            continue
        null = NULL_OF.get(name)  # MI curves: tested against their shuffle null (stored since STATS_VERSION 5)
        tests[name] = eq28_test(curve, boot[name], kink_points, k, float(b.ci_level),
                                point[null] if null else None, boot[null] if null else None)
    tokens = stats.information_tokens
    return json_safe({
        "estimator": settings.describe(), "settings": settings.key(), "unit": "bits", "states": "h_0..h_L (index = l)",
        "tokens_per_group": None if tokens is None else {"min": int(tokens.min()), "median": float(np.median(tokens)),
                                                         "max": int(tokens.max())},
        "curves": curves,
        "eq28": {"rule": RULE, "k": k, "tests": tests, "verdict": combine_verdicts(t["verdict"] for t in tests.values())}})


def information_figure(result: dict[str, Any], path: str | Path) -> Path:
    """One panel per curve family (entropy and MI; V-information), bootstrap bands, boundaries dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info = result["information"]
    groups = [[c for c in info["curves"] if not c.startswith("v_info")],
              [c for c in info["curves"] if c.startswith("v_info")]]
    groups = [g for g in groups if g]
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.2), squeeze=False)
    for ax, names in zip(axes[0], groups, strict=True):
        for name in names:
            c = info["curves"][name]
            x = np.arange(len(c["value"]))
            v = np.asarray(c["value"], dtype=float)
            test = info["eq28"]["tests"].get(name)
            label = f"{name} (eq. 28: {test['verdict']})" if test else f"{name} (shuffle null)"
            ax.plot(x, v, marker="o", ms=3, ls="-" if test else ":", label=label)
            ax.fill_between(x, np.asarray(c["ci_low"], dtype=float), np.asarray(c["ci_high"], dtype=float), alpha=0.25)
        for bname, b in result["boundaries"].items():
            if b.get("layer"):
                ax.axvline(b["layer"] - 1, ls="--", color="k", lw=0.8)
                ax.text(b["layer"] - 1, ax.get_ylim()[1], f" {bname} (h_{b['layer'] - 1})", va="top", fontsize=8)
        ax.set_xlabel("state h_l")
        ax.set_ylabel("bits")
        ax.legend(fontsize=7)
    fig.suptitle(f"Information curves (our MI estimators), {result['model']['name']}; bands: 95% bootstrap")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.savefig(Path(path).with_suffix(".pdf"))  # the same figure as PDF beside the PNG, for papers
    plt.close(fig)
    return Path(path)


def _f(x: float | None, spec: str = "+.4f") -> str:
    return "n/a" if x is None else format(x, spec)


def information_markdown(result: dict[str, Any]) -> str:
    info = result.get("information")
    if not info:
        return ""
    e = info["eq28"]
    tokens = info.get("tokens_per_group")
    lines = ["", f"## Information phase transition (appendix eq. 28): **{e['verdict']}**", "",
             f"Estimators: {info['estimator']}.", "",
             *([f"Tokens per group in the kernels: {tokens['min']}-{tokens['max']} (median {tokens['median']:g})."]
               if tokens else []),
             f"Rule: {e['rule']}; k = {e['k']}.", "",
             "| curve | tested as | boundary | kink | 95% CI | shuffle null's kink | layer null 95th pct of abs "
             "| verdict |", "|---|---|---|---|---|---|---|---|"]
    if not any(t["boundaries"] for t in e["tests"].values()):
        lines.append("| (no boundary was found: nothing to test) | | | | | | | |")
    for name, t in e["tests"].items():
        tested_as = "excess over shuffle null" if "shuffle" in t.get("null", "") else "curve"
        for bname, b in t["boundaries"].items():
            lines.append(f"| {name} | {tested_as} | {bname} (h_{b['kink_point']}) | {_f(b['kink'])} | "
                         f"[{_f(b['ci_low'])}, {_f(b['ci_high'])}] | {_f(b.get('kink_shuffle_null'))} | "
                         f"{_f(b['null_threshold'], '.4f')} | {b['verdict']} |")
    return "\n".join(lines) + "\n"
