"""The paper's Figure 10: relative L-I and I-G boundary positions of every model, grouped by family, with the
bootstrap CIs of our runs, and the paper's four models (Table 3, their reported blocks; no CIs) drawn beside
them in their families for comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The paper's four models: display name, family, and the boundaries it reports (method.md; Table 3).
PAPER_MODELS = (
    ("Llama-2-7B (paper)", "llama", 13, 16, 32),
    ("Llama-3-8B (paper)", "llama", 13, 16, 32),
    ("Qwen1.5-7B (paper)", "qwen", 2, 8, 32),
    ("Qwen2.5-7B (paper)", "qwen", 2, 20, 28),
)
MARKERS = {"L-I": ("o", "#d62728"), "I-G": ("s", "#9467bd")}


def figure10_points(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per model to draw, family by family: ours (with CIs) then the paper's (without)."""
    points = []
    for m in record["models"]:
        n = m["n_blocks"]
        entry = {"label": m["model"], "family": m["family"], "paper": False,
                 "not_accepted": [name for name in MARKERS if m["relative"][name] is not None
                                  and not m.get("accepted", {}).get(name, True)]}
        for name in MARKERS:
            rel, ci = m["relative"][name], m["ci"][name]
            entry[name] = None if rel is None else (rel, None if ci is None else (ci[0] / n, ci[1] / n))
        points.append(entry)
    for label, family, li, ig, n in PAPER_MODELS:
        points.append({"label": label, "family": family, "paper": True, "not_accepted": [],
                       "L-I": (li / n, None), "I-G": (ig / n, None)})
    return sorted(points, key=lambda p: (p["family"], p["paper"], p["label"]))


def robustness_figure(record: dict[str, Any], path: str | Path) -> Path:
    """Draw Figure 10 to `path` (png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = figure10_points(record)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(points) + 2), 4.8))
    previous = None
    for x, p in enumerate(points):
        if p["family"] != previous:
            if previous is not None:
                ax.axvline(x - 0.5, color="grey", lw=0.8, ls=":")
            ax.text(x - 0.4, 1.02, p["family"], fontsize=10, fontweight="bold")
            previous = p["family"]
        for i, (name, (marker, colour)) in enumerate(MARKERS.items()):
            value = p[name]
            if value is None:
                continue
            rel, ci = value
            offset = -0.12 if i == 0 else 0.12
            yerr = None if ci is None else [[rel - ci[0]], [ci[1] - rel]]
            weak = name in p["not_accepted"]  # drawn faint, with an x over it: a peak, not a boundary
            ax.errorbar([x + offset], [rel], yerr=yerr, fmt=marker, color=colour, capsize=4,
                        mfc="none" if p["paper"] else colour, ms=8, alpha=0.35 if weak else 1.0,
                        label=f"{name}{' (paper)' if p['paper'] else ' (not accepted)' if weak else ''}")
            if weak:
                ax.plot([x + offset], [rel], "x", color="black", ms=7)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_xticks(range(len(points)), [p["label"] for p in points], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("relative position l / L")
    ax.set_title("Boundary positions by family (paper Fig. 10); bars: 95% bootstrap CIs (ours); faint with x: "
                 "not accepted", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.savefig(Path(path).with_suffix(".pdf"))  # the same figure as PDF beside the PNG, for papers
    plt.close(fig)
    return Path(path)
