"""The controls comparison (docs/controls.md): per boundary, the point and CI under each control, and a verdict
by a rule fixed before any control was run.

A sweep `python -m mspgt.run -m control=none,random_init,shuffled_words` ends with `controls.md`,
`controls.json`, `controls.png` and a W&B run (job_type `controls`) in the sweep folder (mspgt/cluster/summary.py,
so a Slurm multirun gets it too); by hand over any folders:

    python -m mspgt.reports.controls <sweep dir or folders> [--out DIR]

Boundary results are grouped into comparisons by model, data and every other override but the control; each
group needs one control=none result (the reference).

Pre-registered rule (ours, docs/controls.md "The rule"):
- A control REPRODUCES a boundary b of the real model when one of the control's own two boundary point
  estimates (its L-I or its I-G: its two most prominent peaks, whichever name they got) lies inside the real
  model's 95% bootstrap CI of b (both ends included; a CI that no resample gave: the point itself). With
  several seeds of a control, it reproduces b when any seed's run does.
  Why the control's point in the real CI, and not "the CIs overlap": the real CI is the set of layers the real
  estimator picks under resampling, so a control point inside it is a boundary where the real one is; a CI
  overlap would let a noisy control (a random network's CIs are wide) "reproduce" every boundary by its
  noise alone. Either of the control's points counts, not only the same-named one, because names follow
  layer order: a control that lacks the early peak calls its late peaks L-I and I-G. A control with a single
  peak (so no boundary reported) puts its one point there.
- `learnt` when random_init does not reproduce b; `architecture` when it does (the boundary is there before
  any training).
- `needs word order` when shuffled_words does not reproduce b (no peak, or its peaks outside the CI);
  `survives shuffling` when it does.
- `not tested` where that control's result is missing; `no boundary` where the real model has no such peak.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mspgt.controls import NONE, RANDOM_INIT, SHUFFLED_WORDS, control_from_record
from mspgt.reports.store import write_json_atomic
from mspgt.results import BoundaryResult

log = logging.getLogger(__name__)

LEARNT, ARCHITECTURE = "learnt", "architecture"
NEEDS_ORDER, SURVIVES = "needs word order", "survives shuffling"
NOT_TESTED, NO_BOUNDARY = "not tested", "no boundary"
RULE = ("a control reproduces a boundary when one of its own two boundary point estimates lies inside the real "
        "model's 95% CI (ends included; any seed); learnt = random_init does not reproduce it; needs word order = "
        "shuffled_words does not reproduce it (pre-registered, docs/controls.md)")
# what a comparison varies, not what groups it (and a study's job number: mspgt/cluster/study.py)
IGNORED_OVERRIDES = ("control", "control.seed", "control.name", "study.job")


@dataclass(frozen=True)
class ControlRun:
    """One boundary result of a comparison: its control and what it found."""

    control: str  # the control's key: none, random_init-seed0, ...
    control_name: str  # none, random_init, shuffled_words
    folder: str
    points: dict[str, int | None]  # boundary name -> point estimate
    cis: dict[str, tuple[int, int] | None]  # boundary name -> 95% CI
    accepted: dict[str, bool]
    evidence: list[float | None]  # fused E(l), l = 1..L
    n_blocks: int
    peaks: list[int] = field(default_factory=list)  # every peak passing the prominence threshold

    def candidates(self) -> dict[str, int]:
        """The points this run puts a boundary at: its L-I and I-G; with fewer than two peaks (no boundary
        reported), its single peak, if any, named `single peak`."""
        found = {n: p for n, p in self.points.items() if p is not None}
        if not found and len(self.peaks) == 1:
            return {"single peak": int(self.peaks[0])}
        return found

    @classmethod
    def of(cls, result: BoundaryResult, folder: str) -> ControlRun:
        c = control_from_record(result.control)
        cis = {n: None if b.ci_low is None else (int(b.ci_low), int(b.ci_high)) for n, b in result.boundaries.items()}
        return cls(c.key, c.name, folder, {n: b.layer for n, b in result.boundaries.items()}, cis,
                   {n: bool(b.accepted) for n, b in result.boundaries.items()}, list(result.evidence), result.n_blocks,
                   [int(x) for x in (result.peaks or {}).get("layers", [])])


@dataclass(frozen=True)
class ControlOnBoundary:
    """One control's evidence on one real boundary."""

    control: str
    same_name_layer: int | None  # the control's boundary of the same name
    same_name_ci: tuple[int, int] | None
    reproduced_by: str | None  # which of the control's boundaries lies in the real CI (None: neither)
    reproduces: bool


@dataclass(frozen=True)
class BoundaryVerdict:
    """One real boundary under the controls, and the verdicts of the pre-registered rule."""

    boundary: str
    layer: int | None
    ci: tuple[int, int] | None
    accepted: bool
    controls: list[ControlOnBoundary]
    learnt: str  # learnt | architecture | not tested | no boundary
    word_order: str  # needs word order | survives shuffling | not tested | no boundary


@dataclass
class Comparison:
    """One model on one corpus (and settings) under every control the sweep ran."""

    model: str
    data: str
    settings: dict[str, str]  # the other overrides the group shares
    runs: list[ControlRun]
    boundaries: list[BoundaryVerdict] = field(default_factory=list)
    cpu: str = ""


def reproduces(real_layer: int | None, real_ci: tuple[int, int] | None,
               control_points: dict[str, int]) -> str | None:
    """The name of the control boundary whose point lies inside the real CI (the rule above), or None."""
    if real_layer is None:
        return None
    lo, hi = real_ci if real_ci is not None else (real_layer, real_layer)
    for name, point in control_points.items():
        if point is not None and lo <= point <= hi:
            return name
    return None


def _verdict(real_layer: int | None, found: list[bool], yes: str, no: str) -> str:
    if real_layer is None:
        return NO_BOUNDARY
    if not found:
        return NOT_TESTED
    return yes if any(found) else no


def judge(real: ControlRun, controls: list[ControlRun]) -> list[BoundaryVerdict]:
    """Per real boundary: each control's point, CI and whether it reproduces it; the two verdicts."""
    out = []
    for name in real.points:
        layer, ci = real.points[name], real.cis.get(name)
        on = [ControlOnBoundary(c.control, c.points.get(name), c.cis.get(name),
                                by := reproduces(layer, ci, c.candidates()), by is not None) for c in controls]
        by_name = {c.control: c.control_name for c in controls}
        random = [o.reproduces for o in on if by_name[o.control] == RANDOM_INIT]
        shuffled = [o.reproduces for o in on if by_name[o.control] == SHUFFLED_WORDS]
        out.append(BoundaryVerdict(name, layer, ci, real.accepted.get(name, False), on,
                                   _verdict(layer, random, ARCHITECTURE, LEARNT),
                                   _verdict(layer, shuffled, SURVIVES, NEEDS_ORDER)))
    return out


def compare(entries: list[tuple[BoundaryResult, str, dict[str, str]]]) -> list[Comparison]:
    """Group (result, folder, overrides) by model, data and the other overrides; judge every group that has a
    control=none result and at least one other control. Newest last: a later duplicate replaces an earlier."""
    groups: dict[tuple, dict[str, tuple[BoundaryResult, str]]] = defaultdict(dict)
    settings: dict[tuple, dict[str, str]] = {}
    for result, folder, overrides in entries:
        other = {k: v for k, v in overrides.items() if k not in IGNORED_OVERRIDES}
        key = (result.name, str(result.data.get("key")), tuple(sorted(other.items())))
        groups[key][control_from_record(result.control).key] = (result, folder)
        settings[key] = other
    out = []
    for key, by_control in groups.items():
        if NONE not in by_control or len(by_control) < 2:
            continue
        runs = [ControlRun.of(r, f) for r, f in by_control.values()]
        runs.sort(key=lambda r: (r.control != NONE, r.control_name != RANDOM_INIT, r.control))
        real, controls = runs[0], runs[1:]
        cpu = str(by_control[NONE][0].machine.get("cpu", ""))
        cmp = Comparison(key[0], key[1], settings[key], runs, judge(real, controls), cpu)
        out.append(cmp)
    return out


# -- reading a sweep ---------------------------------------------------------------------------------------
def _overrides(folder: Path) -> dict[str, str]:
    from omegaconf import OmegaConf

    saved = folder / ".hydra" / "overrides.yaml"
    if not saved.exists():
        return {}
    return {str(i).partition("=")[0].lstrip("+~"): str(i).partition("=")[2] for i in OmegaConf.load(saved)}


def collect(folders: list[Path]) -> list[tuple[BoundaryResult, str, dict[str, str]]]:
    """Every boundary results.json under `folders` (oldest first), with its folder and its overrides."""
    paths = sorted({p for f in folders for p in Path(f).rglob("results.json")}, key=lambda p: p.stat().st_mtime)
    out = []
    for path in paths:
        try:
            r = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(r, dict) and r.get("experiment") == "boundary" and "boundaries" in r:
            out.append((BoundaryResult.from_json(r, str(path)), str(path.parent), _overrides(path.parent)))
    return out


# -- reports -----------------------------------------------------------------------------------------------
def _ci(ci: tuple[int, int] | None) -> str:
    return "-" if ci is None else f"[{ci[0]}, {ci[1]}]"


def point_text(layer: int | None, ci: tuple[int, int] | None) -> str:
    """`2 [1, 3]`, `2 -` (no CI) or `none`."""
    return "none" if layer is None else f"{layer} {_ci(ci)}"


def _reproduced(o: ControlOnBoundary, c: Comparison) -> str:
    """`yes (its L-I)`, `yes (its single peak, block 3)` or `no`."""
    if not o.reproduces:
        return "no"
    if o.reproduced_by == "single peak":
        run = next(r for r in c.runs if r.control == o.control)
        return f"yes (its single peak, block {run.candidates()['single peak']})"
    return f"yes (its {o.reproduced_by})"


def controls_markdown(comparisons: list[Comparison]) -> str:
    lines = ["# Controls: are the boundaries learnt, and do they need word order?", "",
             f"Rule (pre-registered): {RULE}.", ""]
    for c in comparisons:
        extra = ", ".join(f"{k}={v}" for k, v in c.settings.items() if k not in ("model", "data"))
        lines += [f"## {c.model} on {c.data}" + (f" ({extra})" if extra else ""), ""]
        controls = [r.control for r in c.runs[1:]]
        head = ["boundary", "none: block [95% CI]", *[f"{k}: block [CI]" for k in controls],
                *[f"{k} reproduces" for k in controls], "learnt?", "word order?"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for b in c.boundaries:
            cells = [b.boundary, point_text(b.layer, b.ci) + ("" if b.accepted else " (not accepted)")]
            cells += [point_text(o.same_name_layer, o.same_name_ci) for o in b.controls]
            cells += [_reproduced(o, c) for o in b.controls]
            cells += [b.learnt, b.word_order]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Peaks of every run (all with prominence >= the threshold are in its results.json): "
                  + "; ".join(f"{r.control}: L-I {r.points.get('L-I')}, I-G {r.points.get('I-G')}, peaks "
                              f"{r.peaks or 'none'} ({r.folder})" for r in c.runs), ""]
        if c.cpu:
            lines += [f"Computed on: {c.cpu}.", ""]
    return "\n".join(lines) + "\n"


def controls_record(comparisons: list[Comparison]) -> dict[str, Any]:
    return {"rule": RULE, "comparisons": [asdict(c) for c in comparisons]}


COLOURS = {NONE: "black", RANDOM_INIT: "tab:orange", SHUFFLED_WORDS: "tab:blue"}


def controls_figure(comparisons: list[Comparison], path: Path) -> Path:
    """Per comparison: the fused evidence E(l) under each control (left), and per boundary the point and 95% CI
    under each control (right); the real model's CIs shaded in both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(comparisons), 2, figsize=(11, 3.6 * len(comparisons)), dpi=130, squeeze=False)
    for (left, right), c in zip(axes, comparisons, strict=True):
        for b in c.boundaries:
            if b.layer is not None:
                lo, hi = b.ci if b.ci is not None else (b.layer, b.layer)
                left.axvspan(lo - 0.5, hi + 0.5, color="grey", alpha=0.15)
        for r in c.runs:
            colour = COLOURS.get(r.control_name, "tab:green")
            x = list(range(1, len(r.evidence) + 1))
            left.plot(x, [float("nan") if v is None else v for v in r.evidence], color=colour, lw=2 if r.control == NONE else 1.3,
                      marker="o", ms=2.5, label=r.control)
        left.set_xlabel("block l")
        left.set_ylabel("fused evidence E(l)")
        left.set_title(f"{c.model} on {c.data}: E(l) per control (grey: real 95% CIs)", fontsize=9)
        left.legend(fontsize=7)
        width = 0.8 / max(1, len(c.runs))
        for i, b in enumerate(c.boundaries):
            for j, r in enumerate(c.runs):
                layer, ci = r.points.get(b.boundary), r.cis.get(b.boundary)
                if layer is None:
                    continue
                lo, hi = ci if ci is not None else (layer, layer)
                x = i - 0.4 + width * (j + 0.5)
                right.errorbar([x], [layer], yerr=[[layer - lo], [hi - layer]], fmt="o",
                               color=COLOURS.get(r.control_name, "tab:green"), capsize=3,
                               label=r.control if i == 0 else None)
            if b.layer is not None:
                lo, hi = b.ci if b.ci is not None else (b.layer, b.layer)
                right.fill_between([i - 0.45, i + 0.45], lo - 0.5, hi + 0.5, color="grey", alpha=0.15)
        right.set_xticks(range(len(c.boundaries)),
                         [f"{b.boundary}\n{b.learnt}; {b.word_order}" for b in c.boundaries], fontsize=7)
        right.set_ylabel("block (point, 95% CI)")
        right.set_title("boundaries per control", fontsize=9)
        if right.get_legend_handles_labels()[0]:
            right.legend(fontsize=7)
    cpu = next((c.cpu for c in comparisons if c.cpu), "")
    fig.text(0.01, 0.005, f"Computed on {cpu}" if cpu else "", fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def write_controls(folders: list[Path], out: Path, tracking: Any = None, group: str | None = None) -> list[Comparison]:
    """controls.{md,json,png} in `out` and a W&B run (tracking; group: the sweep's name) over the boundary
    results under `folders`; [] (nothing written) where no group has control=none and another control."""
    comparisons = compare(collect(folders))
    if not comparisons:
        return []
    out.mkdir(parents=True, exist_ok=True)
    record = controls_record(comparisons)
    write_json_atomic(out / "controls.json", record)
    (out / "controls.md").write_text(controls_markdown(comparisons))
    controls_figure(comparisons, out / "controls.png")
    log.info("controls comparison: %s", out / "controls.md")
    if tracking is not None and tracking.mode != "disabled":
        from mspgt.reports.tracking import Tracker

        tracker = Tracker(tracking, out, job_type="controls", name=f"{out.name}-controls", group=group or out.name,
                          tags=["controls"], config={"rule": RULE, "folders": [str(f) for f in folders]})
        rows = [[c.model, c.data, b.boundary, b.layer, *(b.ci or (None, None)), o.control, o.same_name_layer,
                 *(o.same_name_ci or (None, None)), o.reproduces, b.learnt, b.word_order]
                for c in comparisons for b in c.boundaries for o in b.controls]
        tracker.table("controls", ["model", "data", "boundary", "layer", "ci_low", "ci_high", "control",
                                   "control_layer", "control_ci_low", "control_ci_high", "reproduces", "learnt",
                                   "word_order"], rows)
        tracker.image("controls", out / "controls.png")
        tracker.summary({f"{c.model}/{b.boundary}/{k}": v for c in comparisons for b in c.boundaries
                         for k, v in (("learnt", b.learnt), ("word_order", b.word_order))})
        tracker.finish()
    return comparisons


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Compare boundary results under the controls (docs/controls.md)")
    parser.add_argument("folders", nargs="+", type=Path, help="a sweep folder, or folders searched for results.json")
    parser.add_argument("--out", type=Path, default=None, help="where controls.{md,json,png} go (default: first folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out or args.folders[0]
    if not write_controls(args.folders, out):
        raise SystemExit(f"no model under {[str(f) for f in args.folders]} has a control=none result and another "
                         "control's: run `python -m mspgt.run -m control=none,random_init,shuffled_words`")
    print((out / "controls.md").read_text())


__all__ = ["Comparison", "compare", "controls_markdown", "judge", "reproduces", "write_controls"]


if __name__ == "__main__":
    main()
