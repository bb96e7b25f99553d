"""Every results table, built from run folders, so that no number in a document is typed by hand.

    python -m mspgt.reports.tables RUN_OR_SWEEP_DIR... [--format md|latex] [--out FILE]

Reads the result files under the folders (`results.json` of experiment=boundary, `intervention.json`,
`fisher.json`; the boundary store's copies are not read, so `outputs/` can be given whole) and prints, for
the results found:
- the boundary table (each run's L-I and I-G: block, relative position, 95% CI, acceptance, selection);
- the variant table (one row per run where several runs share a model and corpus: a sweep over
  `signals=` / `weights=` / fusion settings), labelled by the overrides that differ between the runs;
- the controls table (per real boundary: does random_init or shuffled_words reproduce it; learnt, needs word
  order: the pre-registered rule of mspgt/reports/controls.py);
- the eq. 28 table (information curves: `information.eq28.tests[curve].boundaries[name]`, with whatever
  columns those records hold);
- the intervention table (paper Table 2 style: relative change per metric, paired-t p, brittleness with its
  resampling null);
- the Fisher table (appendix A.5: predicted against measured KL per scale);
- the robustness verdicts (mspgt/reports/robustness.py over the same results; per model and corpus, the
  boundary run with the fewest overrides, so a sweep's variants do not stand in for the default);
- the compute table (the runs' wall times, and which runs reused a stage from the cache).
`--out docs/results.md` replaces only what follows the file's marker line (MARKER), so the document keeps its
own introduction. Each table is headed by the command that made each run (`python -m mspgt.run` + the run's
`.hydra/overrides.yaml`), its folder, date and machine (the record's `machine`, mspgt/results.py). Markdown,
or LaTeX with booktabs (`\\usepackage{booktabs}`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mspgt.fusion.edge_check import edge_check_text
from mspgt.layers import BOUNDARY_NAMES
from mspgt.reports.intervention_report import BRITTLENESS_NOTE, brittleness_cell, unaccepted_boundaries
from mspgt.results import BoundaryResult, FisherResult, InterventionResult

MARKER = "<!-- mspgt.reports.tables: everything below is generated; do not edit -->"
RESULT_FILES = {"results.json": BoundaryResult, "intervention.json": InterventionResult, "fisher.json": FisherResult}
SCALE_ORDER = {"none": 0, "local": 1, "intermediate": 2, "global": 3}


@dataclass(frozen=True)
class Run:
    """One result file and where it came from."""

    folder: Path
    record: BoundaryResult | InterventionResult | FisherResult
    overrides: tuple[str, ...] | None  # the run's command-line overrides (.hydra/overrides.yaml; None: none there)

    @property
    def command(self) -> str:
        if self.overrides is None:
            return "command not recorded (no .hydra/overrides.yaml: not a command-line run)"
        return " ".join(["python -m mspgt.run", *(_quote(o) for o in self.overrides)])

    @property
    def provenance(self) -> str:
        m = self.record.machine
        date = m.get("date") or _mtime(self.folder)
        if m:
            memory = f", {m['memory_gib']:g} GiB" if m.get("memory_gib") else ""
            machine = f"{m.get('cpu')}, {m.get('cpus')} CPUs{memory}, torch {m.get('torch')}"
        else:
            machine = "machine not recorded (a result written before results carried it)"
        seconds = _seconds(self)
        took = "" if seconds is None else f"; {seconds:.0f} s"
        return f"`{self.command}` ({self.folder}; {date}{took}; {machine})"


@dataclass
class Table:
    """A table and what made it: `sources` are the runs' provenance lines, `notes` lines under it."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    spec: str = ""  # LaTeX column spec ("" : one l per column); p{...} columns wrap long text

    def markdown(self, command: str) -> str:
        lines = [f"### {self.title}", "", f"Made by `{command}` from:"]
        lines += [f"- {s}" for s in self.sources] + [""]
        lines += ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self.rows]
        return "\n".join(lines + ([""] + self.notes if self.notes else [])) + "\n"

    def latex(self, command: str) -> str:
        lines = [f"% {self.title}", f"% made by: {command}"] + [f"% from: {s}" for s in self.sources]
        lines += ["\\begin{table}[t]", "\\centering", f"\\caption{{{_tex(self.title)}}}",
                  "\\begin{tabular}{" + (self.spec or "l" * len(self.columns)) + "}", "\\toprule",
                  " & ".join(_tex(c) for c in self.columns) + " \\\\", "\\midrule"]
        lines += [" & ".join(_tex(c) for c in row) + " \\\\" for row in self.rows]
        lines += ["\\bottomrule", "\\end{tabular}"]
        lines += [f"\\par\\smallskip{{\\footnotesize {_tex(n)}}}" for n in self.notes]
        return "\n".join(lines + ["\\end{table}"]) + "\n"


def _mtime(folder: Path) -> str:
    """The date of a run's result file, for a record that does not carry one."""
    files = [folder / name for name in RESULT_FILES if (folder / name).is_file()]
    if not files:
        return "date not recorded"
    when = datetime.datetime.fromtimestamp(files[0].stat().st_mtime, datetime.timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M UTC (file time)")


def _quote(override: str) -> str:
    """An override as typed in a shell: quoted where it holds brackets, braces or spaces."""
    return f"'{override}'" if any(ch in override for ch in "[]{} ") else override


TEX_ESCAPES = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_",
               "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}", "^": "\\^{}", "`": "", "±": "$\\pm$",
               "σ": "$\\sigma$", "|": "\\textbar{}", "<": "\\textless{}", ">": "\\textgreater{}"}


def _tex(text: str) -> str:
    """Text safe inside a LaTeX table cell (markdown's ** bold marks dropped)."""
    return "".join(TEX_ESCAPES.get(ch, ch) for ch in str(text).replace("**", ""))


def fmt(x: Any, spec: str = ".4g") -> str:
    """A cell: None and non-finite numbers are `n/a`, booleans yes/no, numbers formatted by `spec`."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int | float):
        return format(x, spec)
    return str(x)


def collect_runs(folders: list[Path]) -> list[Run]:
    """Every result file under `folders` (a folder or a result file itself), in path order."""
    paths = set()
    for f in map(Path, folders):
        paths |= {f} if f.is_file() else {p for name in RESULT_FILES for p in f.rglob(name)}
    runs = []
    for path in sorted(paths):
        cls = RESULT_FILES.get(path.name)
        if cls is None:
            continue
        record = cls.from_json(json.loads(path.read_text()), str(path))
        runs.append(Run(path.parent, record, _overrides(path.parent)))
    return runs


def _overrides(folder: Path) -> tuple[str, ...] | None:
    """The overrides the run was started with, as typed: the task's, then the hydra.* ones (Hydra keeps them
    apart, in .hydra/hydra.yaml; the mode it sets itself is left out). None where the folder has neither file."""
    hydra_file, task_file = folder / ".hydra" / "hydra.yaml", folder / ".hydra" / "overrides.yaml"
    if hydra_file.is_file():
        given = (yaml.safe_load(hydra_file.read_text()) or {}).get("hydra", {}).get("overrides", {})
        hydra = [o for o in given.get("hydra") or [] if not o.startswith("hydra.mode=")]
        return tuple([*(given.get("task") or []), *hydra])
    return tuple(yaml.safe_load(task_file.read_text()) or []) if task_file.is_file() else None


def _ci(b: Any) -> str:
    return "n/a" if b.ci_low is None else f"[{b.ci_low}, {b.ci_high}]"


def _most_selected(b: Any) -> str:
    top = sorted(b.selection_frequency.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{k}: {v / b.n_resamples:.1%}" for k, v in top) if b.n_resamples else "n/a"


def boundary_table(runs: list[Run]) -> Table | None:
    rows, sources, edge_notes = [], [], []
    for run in runs:
        r = run.record
        sources.append(run.provenance)
        label = r.name + ("" if r.control.get("key", "none") == "none" else f" ({r.control['key']})")
        if r.edge_check is not None:  # a boundary at block 1 or L: what the interior detection found
            edge_notes += ["", f"{label}: {edge_check_text(r.edge_check, r.n_blocks)}"]
        for name, b in r.boundaries.items():
            rows.append([label, r.data.get("name", ""), str(r.n_blocks), name, fmt(b.layer), fmt(b.relative, ".1%"),
                         _ci(b), fmt(b.width), fmt(b.accepted), f"{b.n_missing} / {b.n_undefined} / {b.n_relabelled}",
                         _most_selected(b)])
    if not rows:
        return None
    return Table("Boundaries (experiment=boundary)",
                 ["model", "data", "blocks", "boundary", "block", "relative", "95% CI", "width", "accepted",
                  "missing / undefined / relabelled", "most selected"], rows, sources,
                 ["Missing: resamples without the peak; undefined: resamples whose evidence was NaN; relabelled: "
                  "resamples whose peak matching differed from layer order (docs/method.md, Bootstrap).",
                  *edge_notes])


def controls_table(folders: list[Path], runs: list[Run]) -> Table | None:
    """The controls' verdicts per real boundary (mspgt/reports/controls.py, its pre-registered rule): is the
    boundary learnt (random_init does not reproduce it), does it need word order (shuffled_words does not)."""
    from mspgt.reports.controls import RULE, collect, compare, point_text

    comparisons = compare(collect(folders))
    if not comparisons:
        return None
    by_folder = {str(r.folder): r for r in runs}
    rows, sources = [], []
    for c in comparisons:
        sources += [by_folder[r.folder].provenance for r in c.runs if r.folder in by_folder]
        for b in c.boundaries:
            real = by_folder.get(c.runs[0].folder)  # the control=none run
            cells = [c.model, real.record.data.get("name", c.data) if real else c.data, b.boundary,
                     point_text(b.layer, b.ci), "yes" if b.accepted else "no"]
            for name in ("random_init", "shuffled_words"):
                said = [("yes" if o.reproduces else "no") + f" ({o.control})" for o in b.controls
                        if o.control.startswith(name)]
                cells.append(", ".join(said) or "not run")
            rows.append([*cells, b.learnt, b.word_order])
    return Table("Controls: are the boundaries learnt, and do they need word order?",
                 ["model", "data", "boundary", "block [95% CI]", "accepted", "random_init reproduces it",
                  "shuffled_words reproduces it", "learnt?", "word order?"], rows, sources,
                 [f"Rule (pre-registered, docs/controls.md): {RULE}."])


def variant_table(runs: list[Run]) -> Table | None:
    """One row per run where two or more runs share a model and corpus, labelled by what differs."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.record.name, run.record.data.get("key", "")), []).append(run)
    rows, sources = [], []
    for members in groups.values():
        if len(members) < 2:
            continue
        shared = set.intersection(*(set(m.overrides or ()) for m in members))
        labels = [" ".join(o for o in m.overrides or () if o not in shared and not o.startswith("hydra."))
                  or ("(defaults)" if m.overrides is not None else m.folder.name) for m in members]
        for m, label in zip(members, labels, strict=True):
            if labels.count(label) > 1:  # the same overrides: the folders tell them apart
                label = f"{label} ({m.folder.name})"
            cells = [m.record.name, label]
            for name in BOUNDARY_NAMES:
                b = m.record.boundaries.get(name)
                cells += ["n/a"] * 3 if b is None else [
                    f"{fmt(b.layer)} {_ci(b)}", fmt(b.accepted), f"{b.n_missing} / {b.n_relabelled}"]
            rows.append(cells)
            sources.append(m.provenance)
    if not rows:
        return None
    columns = ["model", "variant"]
    for name in BOUNDARY_NAMES:
        columns += [f"{name} [95% CI]", "accepted", "missing / relabelled"]
    return Table("Boundaries per variant (runs of one model and corpus)", columns, rows, sources)


def eq28_table(runs: list[Run]) -> Table | None:
    """Eq. 28 per curve and boundary, with the columns the records hold (their schema is the estimator's)."""
    entries, sources, notes = [], [], []
    for run in runs:
        eq28 = (run.record.information or {}).get("eq28") or {}
        tests = eq28.get("tests") or {}
        if not tests:
            continue
        sources.append(run.provenance)
        notes.append(f"{run.record.name}: verdict **{eq28.get('verdict', 'n/a')}**"
                     + (f"; rule: {eq28['rule']}" if eq28.get("rule") else ""))
        for curve, test in tests.items():
            for name, b in (test.get("boundaries") or {}).items():
                entries.append((run.record.name, curve, name, b))
    if not entries:
        return None
    keys: list[str] = []
    for *_, b in entries:
        keys += [k for k, v in b.items() if k not in keys and not isinstance(v, dict | list)]
    rows = [[model, curve, name, *(fmt(b.get(k)) for k in keys)] for model, curve, name, b in entries]
    return Table("Information curves: the eq. 28 test", ["model", "curve", "boundary", *keys], rows, sources, notes)


def intervention_table(runs: list[Run]) -> Table | None:
    runs = sorted(runs, key=lambda r: (r.record.model["name"], SCALE_ORDER.get(r.record.scale["name"], 9),
                                       r.record.sigma_setting or 0))
    if not runs:
        return None
    metrics = list(runs[0].record.metrics)
    rows = []
    for run in runs:
        r = run.record
        first_last = r.scale.get("first_last")
        scale = f"{r.scale['name']} ({first_last[0]}-{first_last[1]})" if first_last else r.scale["name"]
        scale += "".join(f" ({n} not accepted)" for n in unaccepted_boundaries(r.scale))
        cells = [r.model["name"], scale, fmt(r.sigma, "g")]
        for m in metrics:
            c = r.metrics.get(m) or {}
            rel = c.get("relative_change_pct")
            cells.append("n/a" if rel is None else f"{rel:+.1f}% (p={fmt(c.get('p'), '.2g')})")
        cells.append(brittleness_cell(r.brittleness or {}))
        rows.append(cells)
    columns = ["model", "scale (blocks)", "sigma",
               *((runs[0].record.metrics[m].get("column") or m) for m in metrics), "brittleness"]
    return Table("Scale interventions (experiment=intervention)", columns, rows, [r.provenance for r in runs],
                 ["Relative change of the per-prompt mean, noised vs clean, paired t-test p over prompts; "
                  f"{BRITTLENESS_NOTE}. Blocks: the scale's range from the model's stored boundary result; "
                  "'not accepted' marks a range drawn at a boundary that failed the acceptance rule "
                  "(docs/method.md), whose scales are the peak's, not a finding."])


def fisher_table(runs: list[Run]) -> Table | None:
    rows, notes = [], []
    for run in runs:
        r = run.record
        notes.append(f"{r.model['name']}: verdict **{r.verdict.get('value')}** ({r.verdict.get('rule', '')}).")
        for name, s in r.scales.items():
            fit, fit_nll = s.get("fit_kl") or {}, s.get("fit_dnll") or {}
            rows.append([r.model["name"], f"{name} ({s['first_last'][0]}-{s['first_last'][1]})",
                         f"{fmt(s.get('predicted_coefficient'), '.3g')} ± {fmt(s.get('predicted_coefficient_se'), '.2g')}",
                         fmt(fit.get("slope"), ".3g"), fmt(fit.get("slope_over_predicted"), ".3f"),
                         fmt(fit.get("r2"), ".4f"), fmt(s.get("ratio_at_smallest_sigma"), ".3f"),
                         fmt(fit_nll.get("slope_over_predicted"), ".3f"), fmt(s.get("holds"))])
    if not rows:
        return None
    return Table("Appendix A.5: KL under small noise against the Fisher-trace prediction (experiment=fisher)",
                 ["model", "scale (blocks)", "(1/2) sum s_l^2 Tr F_l", "KL slope vs sigma^2", "slope / predicted",
                  "R^2", "measured / predicted at smallest sigma", "dNLL slope / predicted", "holds"],
                 rows, [r.provenance for r in runs], notes)


def robustness_table(runs: list[Run]) -> Table | None:
    from mspgt.reports.robustness import evidence_text, robustness

    # per model and corpus one boundary run: the one closest to the defaults (fewest overrides), not the newest
    # variant of a sweep; every intervention and Fisher run
    chosen: dict[tuple[str, str], Run] = {}
    for run in runs:
        if isinstance(run.record, BoundaryResult):
            key = (run.record.name, str(run.record.data.get("key")))
            if key not in chosen or _n_overrides(run) < _n_overrides(chosen[key]):
                chosen[key] = run
    used = [r for r in runs if not isinstance(r.record, BoundaryResult) or r in chosen.values()]
    record = robustness([r.folder / name for r in used for name in RESULT_FILES if (r.folder / name).is_file()])
    if record is None:
        return None
    rows = []
    for v in record["predictions"]:
        evidence = evidence_text(v)
        rows.append([str(v["tier"]), v["prediction"], v["verdict"], evidence or "needs " + v["needs"]])
    return Table("The paper's predictions over these results (mspgt/reports/robustness.py)",
                 ["tier", "prediction", "verdict", "evidence"], rows, [r.provenance for r in used],
                 [record["caveat"]], spec="lp{0.38\\linewidth}lp{0.38\\linewidth}")


def rivals_table(runs: list[Run]) -> Table | None:
    """Each rival transition (fusion/rival_transitions.py) with its CI, and its distance to each boundary."""
    rows, sources, notes = [], [], []
    for run in runs:
        rivals = run.record.rivals or {}
        if not rivals.get("transitions"):
            continue
        sources.append(run.provenance)
        control = run.record.control.get("key", "none")
        agree = {(a["transition"], a["boundary"]): a for a in rivals.get("agreement", [])}
        for t in rivals["transitions"]:
            cells = [run.record.name, control, t["name"], fmt(t["block"]), f"[{fmt(t['ci_low'])}, {fmt(t['ci_high'])}]"]
            for name in BOUNDARY_NAMES:
                a = agree.get((t["name"], name))
                cells += ["n/a"] if a is None or a["distance"] is None else [
                    f"{a['distance']:+d} [{fmt(a['ci_low'])}, {fmt(a['ci_high'])}] "
                    + ("coincides" if a["coincides"] else "apart")]
            rows.append(cells)
        if rivals.get("rule") and rivals["rule"] not in notes:
            notes.append(rivals["rule"])
    if not rows:
        return None
    return Table("Rival layer curves: transitions and their distance to the boundaries",
                 ["model", "control", "transition", "block", "95% CI", *(f"distance to {n} [95% CI]" for n in BOUNDARY_NAMES)],
                 rows, sources, notes)


def _seconds(run: Run) -> float | None:
    times = getattr(run.record, "timings", None) or getattr(run.record, "timing", None) or {}
    value = times.get("total_s")
    return float(value) if isinstance(value, int | float) else None


def compute_table(runs: list[Run]) -> Table | None:
    """What the runs cost: per experiment, model and machine, the jobs and the sum of their wall times (each
    job's own `total_s`; on one machine run job after job, as a study runs locally, the sum is the wall time)."""
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for r in runs:
        model = str(r.record.model.get("name")) if isinstance(r.record.model, dict) else "?"
        cpu = str(r.record.machine.get("cpu", "machine not recorded"))
        groups.setdefault((r.record.experiment, model, cpu), []).append(r)
    if not groups:
        return None
    rows, total = [], 0.0
    for (experiment, model, cpu), members in sorted(groups.items()):
        seconds = [s for s in map(_seconds, members) if s is not None]
        total += sum(seconds)
        cpus = {str(m.record.machine.get("cpus", "?")) for m in members}
        reused = [stage for stage in map(_reused_stage, members) if stage]
        fresh = [t for m, t in ((m, _seconds(m)) for m in members) if t is not None and not _reused_stage(m)]
        rows.append([experiment, model, str(len(members)), f"{sum(seconds) / 60:.1f}",
                     f"{statistics.median(fresh) / 60:.1f}" if fresh else "n/a",
                     f"{reused[0]}: {len(reused)} of {len(members)}" if reused else "none",
                     f"{cpu}, {'/'.join(sorted(cpus))} CPUs"])
    rows.append(["all", "", str(len(runs)), f"{total / 60:.1f}", "", "", ""])
    return Table("Compute: the runs' wall times", ["experiment", "model", "runs", "minutes (sum of the runs)",
                                                    "median minutes of a run without reuse",
                                                    "reused from the cache", "machine"], rows,
                 notes=["Each run's own total wall time (`timing.total_s`/`timings.total_s` in its result file), "
                        "summed; runs that shared the machine with other work are slower than alone. A run that "
                        "reused a stage from the cache (a boundary run the extraction pass, an intervention run "
                        "the clean condition) cost less than a run from an empty cache would."])


def _reused_stage(run: Run) -> str | None:
    """The stage a run read from the cache instead of computing it, from its timings (None: none)."""
    r = run.record
    if isinstance(r, BoundaryResult):
        return "extraction" if r.timings and "extract_s" not in r.timings else None
    if isinstance(r, InterventionResult):
        return "clean condition" if (r.timing or {}).get("clean_reused") == 1 else None
    return None


def _n_overrides(run: Run) -> int:
    return len([o for o in run.overrides or () if not o.startswith("hydra.")]) if run.overrides is not None else 99


def build_tables(folders: list[Path]) -> list[Table]:
    """Every table the results under `folders` support, in a fixed order."""
    runs = collect_runs(folders)
    by_kind = {cls: [r for r in runs if isinstance(r.record, cls)] for cls in RESULT_FILES.values()}
    boundary = by_kind[BoundaryResult]
    tables = [boundary_table(boundary), variant_table(boundary), controls_table(folders, boundary),
              eq28_table(boundary), rivals_table(boundary),
              intervention_table(by_kind[InterventionResult]), fisher_table(by_kind[FisherResult]),
              robustness_table(runs) if runs else None, compute_table(runs)]
    return [t for t in tables if t is not None]


def render(folders: list[Path], kind: str = "md") -> str:
    command = " ".join(["python -m mspgt.reports.tables", *map(str, folders)] + (["--format latex"] if kind == "latex" else []))
    tables = build_tables(folders)
    if not tables:
        raise SystemExit(f"no results.json, intervention.json or fisher.json under {[str(f) for f in folders]}")
    return "\n".join(t.latex(command) if kind == "latex" else t.markdown(command) for t in tables)


def write(out: Path, text: str) -> None:
    """Write `text` to `out`; where `out` holds MARKER, keep what precedes it (a document's own introduction)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    before = out.read_text() if out.is_file() else ""
    if MARKER in before:
        text = before.split(MARKER, 1)[0] + MARKER + "\n\n" + text
    out.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mspgt.reports.tables",
                                     description="Every results table, built from run or sweep folders.")
    parser.add_argument("folders", nargs="+", type=Path, help="run or sweep folders (or outputs/)")
    parser.add_argument("--format", choices=("md", "latex"), default="md")
    parser.add_argument("--out", type=Path, default=None,
                        help="write here instead of printing; in a file holding the marker line "
                             f"{MARKER!r}, only what follows the marker is replaced")
    args = parser.parse_args(argv)
    text = render(args.folders, args.format)
    if args.out:
        write(args.out, text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
