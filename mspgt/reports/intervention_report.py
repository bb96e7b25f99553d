"""Reports of Experiment 2: a markdown table in the style of the paper's Table 2, a figure in the style of
Figures 7-9 (relative change per metric, bars coloured by scale: local blue, intermediate orange, global
green), the results JSON and the samples.

One run writes its own report; `python -m mspgt.reports.intervention_report <folder> [...]` gathers every
intervention.json under the folders (e.g. a sweep's multirun folder) into one table and one figure.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from mspgt.files import json_safe, write_json_atomic
from mspgt.layers import SCALE_BOUNDARIES

SCALE_COLOURS = {"local": "#1f77b4", "intermediate": "#ff7f0e", "global": "#2ca02c", "none": "#7f7f7f"}
SCALE_ORDER = {"none": 0, "local": 1, "intermediate": 2, "global": 3}


def _num(x: float | None, fmt: str = ".3g") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _change(c: dict, alpha: float) -> str:
    rel = c.get("relative_change_pct")
    if rel is None or not math.isfinite(rel):
        return "n/a"
    p = c.get("p")
    star = "*" if p is not None and math.isfinite(p) and p < alpha else ""
    return f"{rel:+.2f}%{star}"


def brittleness_cell(b: dict) -> str:
    """The brittleness with its resampling null where recorded: `20.44% (floor 8.96%, p=0.0005)`."""
    value = _num(b.get("value"), ".2f") + "%"
    null = b.get("null")
    return value if not null else f"{value} (floor {_num(null.get('floor'), '.2f')}%, p={_num(null.get('p'), '.2g')})"


BRITTLENESS_NOTE = ("brittleness: mean |relative change| over the metrics (ours, docs/method.md); floor: the 95th "
                    "percentile of its resampling null, p: the sign-flip permutation p over prompts (a brittleness "
                    "below the floor is no evidence that the noise did anything)")


def unaccepted_boundaries(scale: dict) -> tuple[str, ...]:
    """The boundaries that delimit this run's scale (mspgt.layers.SCALE_BOUNDARIES) but failed the acceptance
    rule in the stored boundary result it was drawn from; () for explicit scale.layers or scale=none."""
    bounds = (scale.get("boundary") or {}).get("boundaries") or {}
    return tuple(n for n in SCALE_BOUNDARIES.get(str(scale.get("name")), ())
                 if isinstance(bounds.get(n), dict) and bounds[n].get("accepted") is False)


def scale_label(result: dict) -> str:
    s = result["scale"]
    return f"{s['name']} ({s['first_last'][0]}-{s['first_last'][1]})" if s["first_last"] else s["name"]


def table2_markdown(results: list[dict]) -> str:
    """Relative change of each metric mean, noised vs clean (Table 2 style); * marks p < alpha."""
    if not results:
        return "(no intervention results)\n"
    metrics = list(results[0]["metrics"])
    cols = [results[0]["metrics"][m]["column"] for m in metrics]
    lines = [
        "| Model | Scale (blocks) | sigma | " + " | ".join(cols) + " | Brittleness |",
        "|---|---|---|" + "---|" * len(cols) + "---|",
    ]
    for r in sorted(
        results,
        key=lambda r: (r["model"]["name"], SCALE_ORDER.get(r["scale"]["name"], 9), r["sigma_setting"]),
    ):
        alpha = r.get("alpha", 0.05)
        cells = [_change(r["metrics"][m], alpha) for m in metrics]
        sigma = "-" if r["sigma"] is None else f"{r['sigma']:g}"
        lines.append(
            f"| {r['model']['name']} | {scale_label(r)} | {sigma} | "
            + " | ".join(cells)
            + f" | {brittleness_cell(r['brittleness'])} |"
        )
    alpha = results[0].get("alpha", 0.05)
    lines.append("")
    lines.append(f"Relative change of the per-prompt mean, noised vs clean; * = paired t-test p < {alpha:g}; "
                 f"{BRITTLENESS_NOTE}.")
    return "\n".join(lines) + "\n"


def detail_markdown(result: dict) -> str:
    """Everything one run measured, with its settings."""
    r = result
    m, s = r["model"], r["scale"]
    lines = [
        f"# Scale intervention: {m['name']} ({m['family']}, {m['n_blocks']} blocks), scale={scale_label(r)}, "
        f"sigma={'-' if r['sigma'] is None else format(r['sigma'], 'g')}"
        + ("" if r.get("control", {}).get("name", "none") == "none" else f", control={r['control']['key']}"),
        "",
        table2_markdown([r]),
        "| Metric | Clean mean | Noised mean | Change % [95% CI] | t | p | Cohen's d_z | pairs (dropped) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, c in r["metrics"].items():
        lo, hi = c["relative_change_ci95"]
        lines.append(
            f"| {name} | {_num(c['clean_mean'], '.4g')} | {_num(c['noised_mean'], '.4g')} | "
            f"{_num(c['relative_change_pct'], '+.2f')} [{_num(lo, '+.1f')}, {_num(hi, '+.1f')}] | "
            f"{_num(c['t'], '.3f')} | {_num(c['p'], '.3g')} | {_num(c['cohens_dz'], '.3f')} | {c['n']} ({c['n_dropped']}) |"
        )
    b = r["brittleness"]
    gen, timing = r["generation"], r["timing"]
    lines += [
        "",
        f"**Brittleness coefficient**: {_num(b['value'], '.2f')}% ({b['definition']}).",
        "",
        "Settings:",
        f"- blocks noised: {s['blocks'] or 'none'} (source: {s['source']}); noise: {r['noise']['formula']}",
        f"- s_l: {r['activation_std']['kind']} std of clean activations on {r['activation_std']['n_sentences']} "
        f"corpus sentences (first token excluded: {r['activation_std']['exclude_first_token']}); "
        f"noise std requested/realised per block: "
        + ", ".join(
            f"{k}: {_num(v, '.3g')}/{_num(r['noise']['realised_std'].get(k), '.3g')}"
            for k, v in r["noise"]["requested_std"].items()
        ),
        f"- prompts: {gen['n_prompts']} (first {gen['prompt_words']} words of corpus sentences, data key "
        f"{r['data']['key']}), {gen['samples_per_prompt']} samples each, max {gen['max_new_tokens']} new tokens, "
        f"temperature {gen['temperature']}, top_p {gen['top_p']}, top_k {gen['top_k']}, sampling seed {gen['seed']}, "
        f"noise seed {gen['noise_seed']}",
        "- metrics: " + "; ".join(f"{k}: {v['meaning']}" for k, v in r["metrics"].items()),
        f"- grammar backend: {r['grammar']['backend']} ({r['grammar']['detail']}); SBERT: {r['sbert']['compared']}",
        f"- test: {r['test']}" + (f"; sensitivity: {r['power']['n_prompts']} prompts detect d_z >= "
                                  f"{_num(r['power']['detectable_dz'], '.2f')} with power {r['power']['power']:g}"
                                  if r.get("power") else ""),
        f"- timing: generation clean {timing['generation_clean_s']:.1f} s, noised {timing['generation_noised_s']:.1f} s, "
        f"metrics {timing['metrics_s']:.1f} s ({100 * timing['metrics_share_of_generation_plus_metrics']:.0f}% of "
        f"generation + metrics), total {timing['total_s']:.1f} s on {r['device']}",
    ]
    if r["pairing"]["replay_identical"] is not None:
        lines.append(f"- baseline replay identical: {r['pairing']['replay_identical']}")
    return "\n".join(lines) + "\n"


def plot_relative_changes(results: list[dict], path: Path) -> Path:
    """Grouped bars: relative change (%) per metric, one bar per run, coloured by scale (Figures 7-9)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(results[0]["metrics"])
    n = len(results)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(1.6 * len(metrics) + 2.5, 4.2))
    largest = 0.0
    for k, r in enumerate(
        sorted(results, key=lambda r: (SCALE_ORDER.get(r["scale"]["name"], 9), r["sigma_setting"]))
    ):
        alpha = r.get("alpha", 0.05)
        xs, ys, errs, stars = [], [], [[], []], []
        for i, m in enumerate(metrics):
            c = r["metrics"][m]
            rel = c["relative_change_pct"]
            rel = rel if rel is not None and math.isfinite(rel) else 0.0
            lo, hi = (v if v is not None and math.isfinite(v) else rel for v in c["relative_change_ci95"])
            xs.append(i - 0.4 + width * (k + 0.5))
            ys.append(rel)
            errs[0].append(max(rel - lo, 0.0))
            errs[1].append(max(hi - rel, 0.0))
            stars.append(c["p"] is not None and math.isfinite(c["p"]) and c["p"] < alpha)
        label = f"{r['model']['name']} {scale_label(r)}" + (
            "" if r["sigma"] is None else f", sigma={r['sigma']:g}"
        )
        ax.bar(
            xs,
            ys,
            width,
            yerr=errs,
            capsize=2,
            label=label,
            color=SCALE_COLOURS.get(r["scale"]["name"], "#9467bd"),
            edgecolor="black",
            linewidth=0.4,
            alpha=0.55 + 0.45 * (k + 1) / n,
        )
        for x, y, lo_err, hi_err, star in zip(xs, ys, errs[0], errs[1], stars, strict=True):
            end = y + hi_err if y >= 0 else y - lo_err  # beyond the error bar
            text = f"{y:+.0f}%" + ("*" if star else "")
            ax.annotate(text, (x, end), ha="center", va="bottom" if y >= 0 else "top", fontsize=7)
            largest = max(largest, abs(end))
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(metrics)), [results[0]["metrics"][m]["column"] for m in metrics], fontsize=8)
    if largest > 300:  # one huge change would flatten the rest: symmetric log scale beyond +-10%
        ax.set_yscale("symlog", linthresh=10)
        ax.set_ylabel("relative change vs clean (%, symlog)")
    else:
        ax.set_ylabel("relative change vs clean (%)")
    ax.margins(y=0.15)
    ax.set_title(
        "Scale interventions: change of each metric (* paired t-test p < alpha; bars: 95% CI)", fontsize=9
    )
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    fig.savefig(Path(path).with_suffix(".pdf"))  # the same figure as PDF beside the PNG, for papers
    plt.close(fig)
    return path


def write_intervention_report(result: dict, samples: list[dict], out_dir: Path) -> dict[str, Path]:
    """intervention.json, intervention_table.md, intervention.png, samples.jsonl in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    safe = json_safe(result)
    files = {
        "json": out_dir / "intervention.json",
        "markdown": out_dir / "intervention_table.md",
        "figure": out_dir / "intervention.png",
        "samples": out_dir / "samples.jsonl",
    }
    write_json_atomic(files["json"], safe)
    files["markdown"].write_text(detail_markdown(safe))
    plot_relative_changes([safe], files["figure"])
    with open(files["samples"], "w", encoding="utf-8") as f:
        for row in samples:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return files


def collect_results(folders: list[Path]) -> list[dict]:
    """Every intervention.json under `folders`."""
    return [
        json.loads(p.read_text())
        for folder in folders
        for p in sorted(Path(folder).rglob("intervention.json"))
    ]


def write_intervention_summary(folders: list[Path], out: Path) -> Path | None:
    """One Table 2 (`intervention_summary.md`) and one figure for every intervention.json under `folders`;
    None if there is none. Called at the end of every sweep (mspgt/cluster/callbacks.py) and by `main`."""
    results = collect_results(folders)
    if not results:
        return None
    out.mkdir(parents=True, exist_ok=True)
    (out / "intervention_summary.md").write_text(table2_markdown(results))
    plot_relative_changes(results, out / "intervention_summary.png")
    return out / "intervention_summary.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Gather intervention results into one Table 2 and one figure."
    )
    parser.add_argument(
        "folders", nargs="+", type=Path, help="folders searched for intervention.json (recursively)"
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the first folder)")
    args = parser.parse_args(argv)
    table = write_intervention_summary(args.folders, args.out or args.folders[0])
    if table is None:
        raise SystemExit(f"no intervention.json under {[str(f) for f in args.folders]}")
    print(table.read_text())
    print(f"wrote {table} and {table.with_suffix('.png')}")


if __name__ == "__main__":
    main()
