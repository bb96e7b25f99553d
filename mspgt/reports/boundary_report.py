"""Boundary experiment reports: the figure (in the style of the paper's Figures 3-6), markdown, W&B."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from mspgt.fusion.edge_check import edge_check_text
from mspgt.fusion.fuse import minmax_normalise
from mspgt.reports.rivals_report import rivals_panel
from mspgt.reports.tracking import Tracker
from mspgt.results import BoundaryResult

SIGNAL_LABELS = {
    "representation_change": "1 - CKA(h_{l-1}, h_l)",
    "probe_jump": "|F(l) - F(l-1)| (probe F1)",
    "attention_drift": "JS(A_l, A_{l-1})",
}
BOUNDARY_COLOURS = {"L-I": "tab:red", "I-G": "tab:purple"}
CONTROL_MEANING = {
    "none": "none (the model's own weights, sentences as written)",
    "random_init": "random_init (the same architecture, config and tokenizer; weights from its own initialiser)",
    "shuffled_words": "shuffled_words (each sentence's words in a seeded random order; each word keeps its labels)",
}


def boundary_figure(result: BoundaryResult, path: Path) -> Path:
    """Normalised signals, the fused evidence curve (bold black), the two peaks (dashed) and CIs (shaded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = np.array(result.layers)
    if result.rivals and result.rivals.get("curves"):  # the rival curves in a panel under the fused curve
        fig, (ax, ax_rivals) = plt.subplots(2, 1, figsize=(8, 7.4), dpi=130, sharex=True,
                                            gridspec_kw={"height_ratios": [1.3, 1]})
        rivals_panel(ax_rivals, result.rivals, result.boundaries, BOUNDARY_COLOURS, (result.config or {}).get("rivals"))
    else:
        fig, ax = plt.subplots(figsize=(8, 4.2), dpi=130)
    for name, values in result.signals.items():
        ax.plot(layers, minmax_normalise(np.asarray(values, dtype=float)), marker="o", ms=3, lw=1.2, alpha=0.8,
                label=SIGNAL_LABELS.get(name, name))
    ax.plot(layers, result.evidence, color="black", lw=2.8, label="fused evidence E(l)")
    for name, b in result.boundaries.items():
        c = BOUNDARY_COLOURS[name]
        if b.ci_low is not None:
            ax.axvspan(b.ci_low - 0.5, b.ci_high + 0.5, color=c, alpha=0.12)
        if b.layer is not None:
            ax.axvline(b.layer, color=c, ls="--", lw=1.8,
                       label=f"{name} = {b.layer} ({b.relative:.1%}), 95% CI [{b.ci_low}, {b.ci_high}]"
                       + ("" if b.accepted else " not accepted"))
    m = result.model
    control = result.control.get("key", "none")
    ax.set_title(f"{m['name']} ({m['n_blocks']} blocks): boundary detection, {result.data['name']} "
                 f"({result.data['n_sentences']} sentences)" + ("" if control == "none" else f", control={control}"))
    ax.set_xlabel("block l")
    ax.set_ylabel("normalised signal")
    ax.set_xlim(layers[0] - 0.5, layers[-1] + 0.5)
    ax.set_ylim(-0.03, 1.05)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    fig.savefig(Path(path).with_suffix(".pdf"))  # the same figure as PDF beside the PNG, for papers
    plt.close(fig)
    return path


def _fmt(x: Any, spec: str = "") -> str:
    return "-" if x is None else format(x, spec)


def boundary_markdown(result: BoundaryResult) -> str:
    m, d = result.model, result.data
    lines = [
        f"## Boundaries: {m['name']} ({m['n_blocks']} blocks) on {d['name']} ({d['n_sentences']} sentences, "
        f"{d['n_groups']} groups of {d['group_size']}), control={result.control.get('key', 'none')}",
        "",
        f"Control: {CONTROL_MEANING.get(result.control.get('name', 'none'), '')} (docs/controls.md)",
        "",
        "| boundary | block | relative | 95% CI | width | accepted | resamples without it | undefined | "
        "relabelled by matching | most selected |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, b in result.boundaries.items():
        freq = sorted(b.selection_frequency.items(), key=lambda kv: -kv[1])[:3]
        top = ", ".join(f"{k}: {v / b.n_resamples:.0%}" for k, v in freq) or "-"
        ci = "-" if b.ci_low is None else f"[{b.ci_low}, {b.ci_high}]"
        undefined = f"{b.n_undefined}" + (
            f" ({', '.join(f'{k}: {v}' for k, v in b.undefined_signals.items() if v)} NaN)"
            if b.undefined_signals else "")
        lines.append(f"| {name} | {_fmt(b.layer)} | {_fmt(b.relative, '.1%')} | {ci} | {_fmt(b.width)} | "
                     f"{'yes' if b.accepted else 'no'} | {b.n_missing} / {b.n_resamples} | {undefined} | "
                     f"{b.n_relabelled} | {top} |")
    sample = result.probe_sample
    if sample:
        lines += ["", "Probe sample: " + "; ".join(
            f"{side} {sample[side]['words']} words from {sample[side]['groups']} of {sample[side]['groups_on_side']} "
            f"groups (at most {sample[side]['max_words_per_group']} per group)" for side in ("train", "eval"))
            + f" ({sample['rule']})."]
    if not result.found_two_peaks:
        lines += ["", f"Fewer than two peaks with prominence >= the threshold: peaks at {result.peaks['layers']}."]
    if result.edge_check is not None:
        lines += ["", edge_check_text(result.edge_check, result.n_blocks)]
    lines += ["", "| block | " + " | ".join(result.signals) + " | E(l) |",
              "|---|" + "---|" * (len(result.signals) + 1)]
    for i, layer in enumerate(result.layers):
        vals = " | ".join(f"{result.signals[k][i]:.4f}" for k in result.signals)
        lines.append(f"| {layer} | {vals} | {result.evidence[i]:.3f} |")
    lines += ["", "Notes:"] + [f"- {k}: {v}" for k, v in result.notes.items()]
    t = result.timings
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items())]
    return "\n".join(lines) + "\n"


def log_boundary_to_wandb(cfg: DictConfig, out_dir: Path, result: BoundaryResult, figure: Path,
                          sweep: str | None = None) -> None:
    """One W&B run per job: summary (boundaries, CIs), the per-layer table, the per-layer curves as series over
    `layer/block` (W&B overlays the jobs of a sweep) and the figure; `sweep` (the
    sweep's folder name, from mspgt/run.py) is the W&B group."""

    tracker = Tracker(
        cfg.tracking, out_dir, job_type="boundary", name=f"boundary-{cfg.model.name}-{out_dir.name}",
        group=sweep or f"boundary-{out_dir.name}",
        tags=[cfg.model.family, cfg.model.name, f"control:{result.control.get('key', 'none')}"],
        config=result.config,
    )
    summary: dict[str, Any] = {"n_blocks": result.model["n_blocks"], "found_two_peaks": result.found_two_peaks,
                               "control": result.control.get("key", "none")}
    for name, b in result.boundaries.items():
        k = name.replace("-", "_")
        for field in ("layer", "relative", "ci_low", "ci_high", "width", "accepted", "n_missing", "n_undefined",
                      "n_relabelled"):
            summary[f"{k}/{field}"] = getattr(b, field)
    if result.edge_check is not None:  # the interior detection of an edge boundary (fusion/edge_check.py)
        summary["edge_check/interior_two_peaks"] = result.edge_check["found_two_peaks"]
        for name, b in result.edge_check["boundaries"].items():
            summary[f"edge_check/{name.replace('-', '_')}/layer"] = b["layer"]
            summary[f"edge_check/{name.replace('-', '_')}/accepted"] = b["accepted"]
    summary.update({f"timings/{k}": v for k, v in result.timings.items()})
    tracker.summary(summary)
    cols = ["block", *result.signals, "evidence"]
    rows = [[layer, *[result.signals[k][i] for k in result.signals], result.evidence[i]]
            for i, layer in enumerate(result.layers)]
    tracker.table("per_layer", cols, rows)
    tracker.series("layer/block", [{"layer/block": layer, **{f"layer/{k}": result.signals[k][i] for k in result.signals},
                                    "layer/evidence": result.evidence[i]} for i, layer in enumerate(result.layers)])
    tracker.image("boundaries", figure)
    if result.information and (figure.parent / "information.png").exists():  # the eq. 28 test
        tests = result.information["eq28"]["tests"]
        tracker.table("eq28", ["curve", "boundary", "kink", "ci_low", "ci_high", "null_threshold", "verdict"],
                      [[c, n, b["kink"], b["ci_low"], b["ci_high"], b["null_threshold"], b["verdict"]]
                       for c, t in tests.items() for n, b in t["boundaries"].items()])
        tracker.image("information", figure.parent / "information.png")
    if result.rivals:  # rival transitions and their distance to the boundaries
        tracker.table("rival_agreement", ["transition", "boundary", "distance", "ci_low", "ci_high", "coincides"],
                      [[a["transition"], a["boundary"], a["distance"], a["ci_low"], a["ci_high"], a["coincides"]]
                       for a in result.rivals["agreement"]])
        tracker.summary({f"rivals/{t['name']}": t["block"] for t in result.rivals["transitions"]})
    tracker.finish()
