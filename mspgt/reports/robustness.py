"""Experiment 3 (paper 4.3): boundary positions across models and families, and a verdict on each of the
paper's predictions that the results at hand can test (docs/method.md "Robustness (Experiment 3) and the
predictions").

Inputs are the files the other experiments write: boundary results (`results.json` of experiment=boundary,
or the boundary store), intervention results (`intervention.json`) and Fisher results (`fisher.json` of
experiment=fisher, appendix A.5), found under any folders. The newest file wins where two describe the same
model and data (and scale and sigma). Outputs `robustness.json`, `robustness.md` and `robustness.png` (the
paper's Figure 10). Run at the end of every sweep (mspgt/cluster/callbacks.py), or by hand over many sweeps:

    python -m mspgt.reports.robustness outputs/ [--out DIR]

Definitions (ours where the paper's equations are unreadable; each report says so):
- relative position of a boundary: l / L (mspgt.layers);
- per family: mean, sample standard deviation (ddof=1) and CV = std / mean of the relative positions of the
  models whose curve had that peak (models without it are counted, not averaged);
- "degrades structure more": a larger |relative change| of the structure metric (variance of sentence
  lengths) at the same sigma, for the same model and data, decided by the paired-bootstrap interval of the
  difference over prompts where the runs record per-prompt values (mspgt/interventions/paired_stats.py);
- local brittleness of a family: the mean over its models of the local scale's brittleness coefficient
  (experiment=intervention, scale=local) at one sigma.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from mspgt.fusion.edge_check import edge_check_text
from mspgt.fusion.phase_transition import combine_verdicts
from mspgt.interventions.paired_stats import scale_contrast
from mspgt.layers import BOUNDARY_NAMES
from mspgt.reports.intervention_report import unaccepted_boundaries
from mspgt.reports.store import write_json_atomic
from mspgt.results import BoundaryCI, BoundaryResult, FisherResult, InterventionResult

# The paper's thresholds (section 5, the tiers of predictions).
LI_CV_MAX = 0.2  # Tier 1: within-family CV of the L-I position below this
LOCAL_BRITTLENESS_RATIO_MIN = 5.0  # Tier 3: local brittleness differs by more than this across families
IG_DRIFT_MIN = 0.30  # Tier 3: the I-G boundary drifts by more than this share of depth within a family
STRUCTURE_METRIC = "length_variance"
# A model/sigma counts for Tier 2 only if some scale changed structure at p < alpha (ours): alpha is each
# intervention run's own significance level (experiment.alpha, recorded in intervention.json), or the one given
# to `robustness(..., alpha=)` / `--alpha`; DEFAULT_ALPHA (conf/experiment/intervention.yaml's) for a result that
# records none.
DEFAULT_ALPHA = 0.05

# The paper's reported boundaries (blocks, depth), for comparison only; keyed by our model config names.
PAPER_BOUNDARIES = {
    "llama2": {"L-I": 13, "I-G": 16, "n_blocks": 32},
    "llama3": {"L-I": 13, "I-G": 16, "n_blocks": 32},
    "qwen25": {"L-I": 2, "I-G": 20, "n_blocks": 28},
    "qwen15": {"L-I": 2, "I-G": 8, "n_blocks": 32},
}

SUPPORTED, REFUTED, MIXED, UNTESTABLE, NOT_TESTED = "supported", "refuted", "mixed", "untestable here", "not tested"
# the data to test a prediction are here, but every unit's effect lies within its null (ours): no verdict either way
INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class ModelBoundaries:
    """One model's boundaries on one corpus, from a boundary result."""

    model: str
    family: str
    n_blocks: int
    data: str
    layer: dict[str, int | None]  # boundary name -> block (None: no such peak)
    relative: dict[str, float | None]
    accepted: dict[str, bool]
    ci: dict[str, tuple[int, int] | None]
    source: str
    eq28: dict[str, Any] | None = None  # curve -> {verdict, per boundary verdicts} (None: no information curves)
    edge_check: dict[str, Any] | None = None  # the interior detection of an edge boundary (fusion/edge_check.py)


@dataclass(frozen=True)
class FisherTest:
    """One experiment=fisher run (appendix A.5): its verdict and, per scale, measured / predicted KL."""

    model: str
    family: str
    data: str
    verdict: str
    band: tuple[float, float]
    sigma: float  # the smallest sigma, where the verdict is taken
    ratio: dict[str, float | None]  # scale -> measured / predicted KL at that sigma
    slope_ratio: dict[str, float | None]  # scale -> fitted slope of KL vs sigma^2 / predicted
    coefficient: dict[str, float | None]  # scale -> (1/2) sum_{l in S} s_l^2 Tr F_l per token (KL / sigma^2)
    source: str


@dataclass(frozen=True)
class ScaleIntervention:
    """One intervention run: a model, a scale, a sigma, its structure change and brittleness."""

    model: str
    family: str
    data: str
    scale: str
    sigma: float
    structure_change_pct: float | None
    structure_p: float | None
    brittleness: float | None
    source: str
    alpha: float = DEFAULT_ALPHA  # the run's significance level of the paired t-tests (experiment.alpha)
    brittleness_p: float | None = None  # permutation p against the brittleness null (None: not recorded)
    brittleness_floor: float | None = None  # the null's 95th percentile
    # the structure metric per prompt, (clean, noised), None for a missing value; None: not recorded
    structure_per_prompt: tuple[tuple[float | None, ...], tuple[float | None, ...]] | None = None
    # the boundaries that delimit this run's scale but failed the acceptance rule (its range is then the
    # peak's, not a finding): local needs L-I, intermediate both, global I-G; () for explicit scale.layers
    unaccepted: tuple[str, ...] = ()

    def above_null(self) -> bool | None:
        """Brittleness beyond what resampling alone gives (p < alpha); None where no null was recorded."""
        return None if self.brittleness_p is None else bool(self.brittleness_p < self.alpha)


def _boundary_row(r: BoundaryResult, path: Path) -> ModelBoundaries:
    missing = BoundaryCI(layer=None, relative=None, ci_low=None, ci_high=None, width=None, accepted=False)
    bounds = {n: r.boundaries.get(n, missing) for n in BOUNDARY_NAMES}
    return ModelBoundaries(
        model=r.name, family=r.family, n_blocks=r.n_blocks, data=str(r.data.get("key")),
        layer={n: b.layer for n, b in bounds.items()},
        relative={n: b.relative for n, b in bounds.items()},
        accepted={n: bool(b.accepted) for n, b in bounds.items()},
        ci={n: None if b.ci_low is None else (b.ci_low, b.ci_high) for n, b in bounds.items()},
        source=str(path),
        eq28=_eq28_summary(r),
        edge_check=r.edge_check,
    )


def _eq28_summary(r: BoundaryResult) -> dict[str, Any] | None:
    tests = ((r.information or {}).get("eq28") or {}).get("tests")
    if not tests:
        return None
    return {c: {"verdict": t["verdict"], **{n: {"kink": b["kink"], "ci": [b["ci_low"], b["ci_high"]],
                                                "verdict": b["verdict"]} for n, b in t["boundaries"].items()}}
            for c, t in tests.items()}


def _intervention_row(r: InterventionResult, path: Path) -> ScaleIntervention:
    structure = r.metrics.get(STRUCTURE_METRIC, {})
    return ScaleIntervention(
        model=str(r.model["name"]), family=str(r.model["family"]), data=str(r.data.get("key")),
        scale=str(r.scale["name"]), sigma=float(r.sigma or 0.0),
        structure_change_pct=structure.get("relative_change_pct"), structure_p=structure.get("p"),
        brittleness=r.brittleness.get("value"), source=str(path), alpha=float(r.alpha),
        brittleness_p=(r.brittleness.get("null") or {}).get("p"),
        brittleness_floor=(r.brittleness.get("null") or {}).get("floor"),
        structure_per_prompt=_per_prompt(r, STRUCTURE_METRIC),
        unaccepted=unaccepted_boundaries(r.scale),
    )


def _unaccepted_note(runs: list[ScaleIntervention]) -> str | None:
    """`not counted: ...` where a run's scale was drawn at a boundary that failed the acceptance rule."""
    said = sorted({f"{iv.model} {iv.scale} ({', '.join(iv.unaccepted)})" for iv in runs if iv.unaccepted})
    return None if not said else ("not counted: scales drawn at a boundary that failed the acceptance rule: "
                                  + "; ".join(said))


def _per_prompt(r: InterventionResult, metric: str) -> tuple[tuple[float | None, ...], tuple[float | None, ...]] | None:
    clean, noised = ((r.per_prompt or {}).get(c, {}).get(metric) for c in ("clean", "noised"))
    return None if clean is None or noised is None else (tuple(clean), tuple(noised))


def _fisher_row(r: FisherResult, path: Path) -> FisherTest:
    scales, v = r.scales, r.verdict
    return FisherTest(
        model=str(r.model["name"]), family=str(r.model["family"]), data=str(r.data.get("key")),
        verdict=str(v.get("value")), band=tuple(v.get("band", (None, None))), sigma=v.get("sigma"),
        ratio={k: x.get("ratio_at_smallest_sigma") for k, x in scales.items()},
        slope_ratio={k: x.get("fit_kl", {}).get("slope_over_predicted") for k, x in scales.items()},
        coefficient={k: x.get("predicted_coefficient") for k, x in scales.items()},
        source=str(path),
    )


def collect_all(folders: Iterable[str | Path]) -> tuple[list[ModelBoundaries], list[ScaleIntervention],
                                                       list[FisherTest]]:
    """Every boundary, intervention and Fisher result under `folders` (each JSON file read once, oldest first,
    so the newest per model and data, scale and sigma, wins). Unreadable files and the results of a control
    (control != none: docs/controls.md, compared in controls.md) are skipped."""
    paths = {p for f in map(Path, folders) for p in (f.rglob("*.json") if f.is_dir() else [f])}
    boundary: dict[tuple[str, str], ModelBoundaries] = {}
    interventions: dict[tuple[str, str, str, float], ScaleIntervention] = {}
    fisher: dict[tuple[str, str], FisherTest] = {}
    for path in sorted(paths, key=lambda p: p.stat().st_mtime):
        try:
            r = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(r, dict):
            continue
        if (r.get("control") or {}).get("name", "none") != "none":
            continue  # a control run is evidence about a model, not a model (mspgt/reports/controls.py)
        if r.get("experiment") == "boundary" and "boundaries" in r:
            b = _boundary_row(BoundaryResult.from_json(r, str(path)), path)
            boundary[b.model, b.data] = b
        elif (r.get("experiment") == "intervention" and r.get("scale", {}).get("name") not in (None, "none")
              and r.get("sigma") is not None):
            iv = _intervention_row(InterventionResult.from_json(r, str(path)), path)
            interventions[iv.model, iv.data, iv.scale, iv.sigma] = iv
        elif r.get("experiment") == "fisher" and "scales" in r and "verdict" in r:
            f = _fisher_row(FisherResult.from_json(r, str(path)), path)
            fisher[f.model, f.data] = f
    return (sorted(boundary.values(), key=lambda b: (b.family, b.model, b.data)), list(interventions.values()),
            sorted(fisher.values(), key=lambda f: (f.family, f.model, f.data)))


def family_statistics(rows: list[ModelBoundaries], ddof: int = 1) -> dict[str, dict[str, dict[str, Any]]]:
    """family -> boundary -> {models, found, mean, std, cv, range} of the relative positions (our definition:
    sample std with `ddof`, CV = std / mean; None where fewer than ddof + 1 models found the peak)."""
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    by_family: dict[str, list[ModelBoundaries]] = defaultdict(list)
    for r in rows:
        by_family[r.family].append(r)
    for family, members in sorted(by_family.items()):
        for name in BOUNDARY_NAMES:
            values = np.array([m.relative[name] for m in members if m.relative[name] is not None], dtype=float)
            enough = len(values) > ddof
            mean = float(values.mean()) if len(values) else None
            std = float(values.std(ddof=ddof)) if enough else None
            out[family][name] = {
                "models": [m.model for m in members],
                "found": len(values),
                "accepted": sum(m.accepted[name] for m in members),
                "mean": mean,
                "std": std,
                "cv": (std / mean) if std is not None and mean else None,
                "range": float(values.max() - values.min()) if len(values) >= 2 else None,
            }
    return dict(out)


def cross_family_offsets(stats: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Difference of family means of the relative positions, for every pair of families and boundary."""
    rows = []
    for a, b in combinations(sorted(stats), 2):
        for name in BOUNDARY_NAMES:
            ma, mb = stats[a][name]["mean"], stats[b][name]["mean"]
            rows.append({"families": [a, b], "boundary": name,
                         "offset": None if ma is None or mb is None else ma - mb})
    return rows


def _overall(holds: list[bool], inconclusive: bool = False) -> str:
    """supported / refuted / mixed over the units tested; with none: inconclusive where units were there but
    every one lay within its null, untestable here where none was there."""
    if not holds:
        return INCONCLUSIVE if inconclusive else UNTESTABLE
    return SUPPORTED if all(holds) else REFUTED if not any(holds) else MIXED


def fisher_verdict(tests: list[FisherTest], interventions: list[ScaleIntervention]) -> dict[str, Any]:
    """Appendix A.5 over every Fisher result: each model's verdict (measured / predicted KL at its smallest
    sigma inside its pre-registered band for every scale), and across families the predicted local-brittleness
    ratio (family means of (1/2) sum s_l^2 Tr F_l over the local blocks) beside the measured one."""
    evidence: dict[str, Any] = {}
    for t in tests:
        ok = None if t.verdict == MIXED else t.verdict == SUPPORTED
        evidence[f"{t.model} / {t.data}"] = {
            "verdict": t.verdict, "sigma": t.sigma, "band": list(t.band), "ratio": t.ratio,
            "slope_over_predicted": t.slope_ratio, "holds": ok,
            **({"note": "mixed: holds for some scales, not all"} if ok is None else {}),
        }
    local: dict[str, list[float]] = defaultdict(list)
    for t in tests:
        c = t.coefficient.get("local")
        if c is not None and math.isfinite(c):
            local[t.family].append(c)
    if len(local) >= 2:
        evidence["local brittleness across families"] = fisher_brittleness_comparison(local, interventions)
    model_verdicts = {t.verdict for t in tests}
    verdict = (UNTESTABLE if not tests else SUPPORTED if model_verdicts == {SUPPORTED}
               else REFUTED if model_verdicts == {REFUTED} else MIXED)
    return {
        "tier": "A.5", "id": "fisher_trace",
        "prediction": "the loss increase under small isotropic noise is proportional to the trace of the "
                      "Fisher information of the perturbed layers",
        "evidence": evidence, "verdict": verdict,
        "needs": "experiment=fisher (per-block Fisher traces, measured against predicted KL per scale)",
    }


def fisher_brittleness_comparison(local: dict[str, list[float]],
                                  interventions: list[ScaleIntervention]) -> dict[str, Any]:
    """The Fisher-predicted local-brittleness ratio of two families beside the measured one, both oriented
    the same way (first family / second, names sorted) so that their directions can be compared: predicted
    from the family means of (1/2) sum s_l^2 Tr F_l over the local blocks, measured per sigma from the
    scale=local brittleness, with whether each family's runs lie beyond their resampling null (ours)."""
    first, second = sorted(local)[:2]
    coef = {f: float(np.mean(local[f])) for f in (first, second)}
    predicted = coef[first] / coef[second] if coef[second] > 0 else float("inf")
    measured: dict[str, Any] = {}
    for sigma, fams in sorted(local_runs_by_sigma(interventions).items()):
        if first not in fams or second not in fams:
            continue
        m = {f: float(np.mean([iv.brittleness for iv in fams[f]])) for f in (first, second)}
        above = [iv.above_null() for f in (first, second) for iv in fams[f]]
        measured[f"sigma={sigma:g}"] = {
            "ratio": m[first] / m[second] if m[second] > 0 else None,
            "beyond_null": None if None in above else all(above),
            "same_direction": None if m[second] <= 0 else (m[first] > m[second]) == (predicted > 1),
        }
    return {"families": [first, second], "predicted_local_coefficient": coef, "predicted_ratio": predicted,
            "measured_brittleness_ratio": measured or None, "holds": None,
            "note": across_families_text(first, second, predicted, measured)}


def across_families_text(first: str, second: str, predicted: float, measured: dict[str, Any]) -> str:
    """The predicted and measured local-brittleness ratios in words, each measured one with its direction
    against the predicted one and whether it stands beyond the resampling null."""
    def one(v: dict[str, Any]) -> str:
        direction = {True: "direction as predicted", False: "opposite direction"}.get(v["same_direction"],
                                                                                       "direction undefined")
        null = {True: "both beyond their resampling null", False: "within the resampling null: no evidence"}.get(
            v["beyond_null"], "no null recorded")
        return f"{_fmt(v['ratio'], '.2f')} ({direction}; {null})"

    said = "; ".join(f"{k}: {one(v)}" for k, v in measured.items())
    return (f"{first} / {second}, predicted ratio (Fisher, experiment=fisher) {_fmt(predicted, '.2f')}; measured "
            f"brittleness ratio (experiment=intervention, scale=local) "
            f"{said or 'n/a (no scale=local interventions on two families)'}")


def verdicts(rows: list[ModelBoundaries], interventions: list[ScaleIntervention],
             stats: dict[str, dict[str, dict[str, Any]]], fisher: list[FisherTest] | None = None,
             alpha: float | None = None) -> list[dict[str, Any]]:
    """One entry per prediction: what it says, the evidence per unit tested, and the verdict. `alpha`: the
    significance level of Tier 2 (None: each intervention run's own experiment.alpha)."""
    return [li_cv_verdict(stats), information_verdict(rows), structure_verdict(interventions, alpha),
            local_brittleness_verdict(interventions), ig_drift_verdict(stats), fisher_verdict(fisher or [], interventions)]


def li_cv_verdict(stats: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Tier 1: within-family CV of the L-I position < LI_CV_MAX."""
    tested = {f: s["L-I"]["cv"] for f, s in stats.items() if s["L-I"]["cv"] is not None}
    return {
        "tier": 1, "id": "li_cv_within_family",
        "prediction": f"within a family, the CV of the relative L-I position is below {LI_CV_MAX}",
        "evidence": {f: {"cv": cv, "holds": cv < LI_CV_MAX} for f, cv in tested.items()},
        "verdict": _overall([cv < LI_CV_MAX for cv in tested.values()]),
        "needs": "two or more models of a family whose L-I peak was found",
    }


def information_verdict(rows: list[ModelBoundaries]) -> dict[str, Any]:
    """Tier 1: an information phase transition at the boundaries (appendix eq. 28)."""
    evidence, holds = {}, []
    for r in rows:
        if r.eq28 is None:
            continue
        for curve, e in r.eq28.items():
            if e["verdict"] == UNTESTABLE:
                continue
            ok = None if e["verdict"] == MIXED else e["verdict"] == SUPPORTED
            evidence[f"{r.model} / {r.data} / {curve}"] = {
                **e, "holds": ok, **({"note": "mixed: a kink at one boundary, not the other"} if ok is None else {})}
            holds.append(e["verdict"])
    return {
        "tier": 1, "id": "information_phase_transition",
        "prediction": "an information phase transition at the boundaries (appendix eq. 28): the layer-wise rate of "
                      "change of the information curves kinks at each boundary",
        "evidence": evidence,
        "verdict": combine_verdicts(holds),
        "needs": "boundary results with information curves (extraction.information.enabled=true), both boundaries "
                 "found",
    }


CONTRAST_FAMILY_ALPHA = 0.05  # Tier 2: the error rate over all the cells one verdict decides (Bonferroni, ours)


def structure_verdict(interventions: list[ScaleIntervention], alpha: float | None = None) -> dict[str, Any]:
    """Tier 2: perturbing the Intermediate scale degrades structure more than Local or Global. Per model, data
    and sigma with all three scales (a cell): where the runs record per-prompt values (on the same prompts),
    the paired-bootstrap intervals of |rel_intermediate| - |rel_s|, s = local, global, decide
    (paired_stats.scale_contrast: holds where both lie above 0, fails where one lies below, inconclusive
    otherwise), each at alpha = CONTRAST_FAMILY_ALPHA / (the number of cells so decided): the verdict reads
    every cell at once (one failing cell is "refuted", one holding cell "mixed"), so the cells share the 5%
    (Bonferroni). Otherwise (runs made before per-prompt values were recorded) a cell counts only where some
    scale changed structure at p < alpha (None: the runs' own, the smallest of the three where they differ)
    and the larger |relative change| decides."""
    cells: dict[tuple[str, str, float], dict[str, ScaleIntervention]] = defaultdict(dict)
    for iv in interventions:
        cells[iv.model, iv.data, iv.sigma][iv.scale] = iv
    complete = []  # (key, the three runs, their changes, p and unaccepted note), per cell with all three scales
    for (model, data, sigma), by_scale in sorted(cells.items()):
        if not {"local", "intermediate", "global"} <= set(by_scale):
            continue
        three = [by_scale[s] for s in ("local", "intermediate", "global")]
        change = {iv.scale: iv.structure_change_pct for iv in three}
        if any(v is None or not math.isfinite(v) for v in change.values()):
            continue
        complete.append((f"{model} / {data} / sigma={sigma:g}", three, change,
                         {iv.scale: iv.structure_p for iv in three}, _unaccepted_note(three)))
    n_contrasted = sum(note is None and _has_per_prompt(three) for _, three, _, _, note in complete)
    cell_alpha = CONTRAST_FAMILY_ALPHA / max(n_contrasted, 1)
    evidence, holds, inconclusive = {}, [], False  # inconclusive: some cell tested that its data cannot decide
    for key, three, change, p, note in complete:
        level = alpha if alpha is not None else min(iv.alpha for iv in three)
        if note is not None:
            evidence[key] = {"structure_change_pct": change, "p": p, "holds": None, "note": note}
            continue
        contrast = _structure_contrast(three, cell_alpha, n_contrasted)
        if contrast is not None:
            ok = contrast["holds"]
            said = "inconclusive" if ok is None else "holds" if ok else "fails"
            evidence[key] = {"structure_change_pct": change, "p": p, "contrast": contrast, "holds": ok,
                             "note": f"{said}: " + "; ".join(
                                 f"|intermediate| - |{s}| = {_fmt(d, '.3g')} points, "
                                 f"{100 * contrast['ci_level']:.4g}% interval [{_fmt(contrast['ci'][s][0], '.3g')}, "
                                 f"{_fmt(contrast['ci'][s][1], '.3g')}]" for s, d in contrast["differences"].items())}
            if ok is None:
                inconclusive = True
            else:
                holds.append(ok)
            continue
        if not any(v is not None and v < level for v in p.values()):
            evidence[key] = {"structure_change_pct": change, "p": p, "alpha": level, "holds": None,
                             "note": f"inconclusive: no scale changed structure at p < {level:g}"}
            inconclusive = True
            continue
        ok = abs(change["intermediate"]) > max(abs(change["local"]), abs(change["global"]))
        holds.append(ok)
        evidence[key] = {"structure_change_pct": change, "p": p, "alpha": level, "holds": ok}
    return {
        "tier": 2, "id": "intermediate_structure",
        "prediction": "noise in the Intermediate scale changes structure (sentence-length variance) more than "
                      "noise in the Local or the Global scale (|relative change|, our reading)",
        "evidence": evidence, "verdict": _overall(holds, inconclusive),
        "needs": "experiment=intervention with scale=local,intermediate,global at one sigma, same model and data, "
                 "the scales drawn at accepted boundaries",
    }


def _has_per_prompt(three: list[ScaleIntervention]) -> bool:
    """The three runs record per-prompt values for one number of prompts (so scale_contrast can pair them)."""
    return (all(iv.structure_per_prompt is not None for iv in three)
            and len({len(v) for iv in three for v in iv.structure_per_prompt}) == 1)


def _structure_contrast(three: list[ScaleIntervention], alpha: float, n_cells: int) -> dict[str, Any] | None:
    """scale_contrast over the runs' per-prompt structure values at `alpha` (one of `n_cells` decided
    together), or None where a run lacks them or the runs hold different numbers of prompts."""
    if not _has_per_prompt(three):
        return None

    def arr(values: tuple[float | None, ...]) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values], dtype=float)

    clean = {iv.scale: arr(iv.structure_per_prompt[0]) for iv in three}
    noised = {iv.scale: arr(iv.structure_per_prompt[1]) for iv in three}
    return {**scale_contrast(clean, noised, "intermediate", alpha=alpha),
            "test": f"paired bootstrap over prompts of |rel_intermediate| - |rel_s| for s = local, global, "
                    f"percentile intervals at alpha = {CONTRAST_FAMILY_ALPHA} / {n_cells} cells (Bonferroni over "
                    "the cells this verdict decides); holds where both intervals lie above 0, fails where one "
                    "lies below 0 (Bonferroni over the two; ours; mspgt/interventions/paired_stats.py)"}


def _null_note(runs: list[ScaleIntervention]) -> str:
    return ", ".join(f"{iv.model} {_fmt(iv.brittleness, '.3g')}% (floor {_fmt(iv.brittleness_floor, '.3g')}%, "
                     f"p={_fmt(iv.brittleness_p, '.2g')})" for iv in runs)


def local_runs_by_sigma(interventions: list[ScaleIntervention]) -> dict[float, dict[str, list[ScaleIntervention]]]:
    """The scale=local runs with a brittleness, by sigma and family."""
    local: dict[float, dict[str, list[ScaleIntervention]]] = defaultdict(lambda: defaultdict(list))
    for iv in interventions:
        if iv.scale == "local" and iv.brittleness is not None and math.isfinite(iv.brittleness):
            local[iv.sigma][iv.family].append(iv)
    return local


def local_brittleness_verdict(interventions: list[ScaleIntervention]) -> dict[str, Any]:
    """Tier 3: local brittleness differs by more than LOCAL_BRITTLENESS_RATIO_MIN x across families. A sigma
    counts only where every family's local brittleness lies beyond its resampling null (p < alpha, the
    brittleness null of paired_stats.py): a ratio of two noise floors says nothing about the families (ours).
    Runs made before the null was recorded count, with a note (python -m mspgt.interventions.rescore adds it)."""
    evidence, holds, inconclusive = {}, [], False  # inconclusive: some sigma with a family within its null
    for sigma, fams in sorted(local_runs_by_sigma(interventions).items()):
        if len(fams) < 2:
            continue
        means = {f: float(np.mean([iv.brittleness for iv in runs])) for f, runs in fams.items()}
        low = min(means.values())
        ratio = (max(means.values()) / low) if low > 0 else float("inf")
        runs = [iv for f in sorted(fams) for iv in fams[f]]
        within = [iv for iv in runs if iv.above_null() is False]
        key = f"sigma={sigma:g}"
        if (note := _unaccepted_note(runs)) is not None:
            evidence[key] = {"local_brittleness": means, "ratio": ratio, "holds": None, "note": note}
            continue
        if within:
            evidence[key] = {"local_brittleness": means, "ratio": ratio, "holds": None,
                             "note": "inconclusive: local brittleness within its resampling null for "
                                     + _null_note(within)}
            inconclusive = True
            continue
        ok = ratio > LOCAL_BRITTLENESS_RATIO_MIN
        holds.append(ok)
        evidence[key] = {"local_brittleness": means, "ratio": ratio, "holds": ok,
                         **({"null": "not recorded for " + ", ".join(iv.model for iv in runs if iv.above_null() is None)}
                            if any(iv.above_null() is None for iv in runs) else {})}
    return {
        "tier": 3, "id": "local_brittleness_ratio",
        "prediction": f"local brittleness differs by more than {LOCAL_BRITTLENESS_RATIO_MIN:g}x across families",
        "evidence": evidence, "verdict": _overall(holds, inconclusive),
        "needs": "experiment=intervention scale=local at one sigma on models of two or more families, the local "
                 "scale drawn at an accepted L-I boundary",
    }


def ig_drift_verdict(stats: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Tier 3: the I-G boundary drifts by more than IG_DRIFT_MIN of depth within a family."""
    tested = {f: s["I-G"]["range"] for f, s in stats.items() if s["I-G"]["range"] is not None}
    return {
        "tier": 3, "id": "ig_drift_within_family",
        "prediction": f"within a family, the relative I-G position varies by more than {IG_DRIFT_MIN:.0%} of depth",
        "evidence": {f: {"range": r, "holds": r > IG_DRIFT_MIN} for f, r in tested.items()},
        "verdict": _overall([r > IG_DRIFT_MIN for r in tested.values()]),
        "needs": "two or more models of a family whose I-G peak was found",
    }


def robustness(folders: Iterable[str | Path], alpha: float | None = None) -> dict[str, Any] | None:
    """The whole Experiment 3 record, or None when no boundary or intervention result was found. `alpha`:
    Tier 2's significance level (None: each intervention run's own experiment.alpha)."""
    rows, interventions, fisher = collect_all(folders)
    if not rows and not interventions and not fisher:
        return None
    stats = family_statistics(rows)
    return {
        "experiment": "robustness",
        "models": [{"model": r.model, "family": r.family, "n_blocks": r.n_blocks, "data": r.data,
                    "layer": r.layer, "relative": r.relative, "accepted": r.accepted, "ci": r.ci,
                    "paper": PAPER_BOUNDARIES.get(r.model), "edge_check": r.edge_check, "source": r.source}
                   for r in rows],
        "families": stats,
        "offsets": cross_family_offsets(stats),
        "interventions": [iv.__dict__ for iv in interventions],
        "fisher": [f.__dict__ for f in fisher],
        "predictions": verdicts(rows, interventions, stats, fisher, alpha),
        "definitions": {
            "relative": "boundary block l / number of blocks L",
            "family_spread": "sample std (ddof=1) and CV = std / mean over the models that found the peak (ours)",
            "structure": "|relative change| of the sentence-length variance, same model, data and sigma: "
                         "intermediate against local and against global by paired-bootstrap intervals of the "
                         "differences over prompts (holds where both lie above 0); for runs without per-prompt values, counted only "
                         "where some scale's change has paired-t p < alpha, the runs' experiment.alpha "
                         f"({'as recorded' if alpha is None else f'here {alpha:g}'}; ours)",
            "local_brittleness": "mean over a family's models of the scale=local brittleness coefficient (ours)",
            "fisher": "experiment=fisher: measured / predicted teacher-forced KL per scale at the smallest sigma, "
                      "inside each run's pre-registered band for every scale (appendix A.5, our reading)",
        },
        "caveat": "Verdicts hold for the models and corpora listed here; results on small models demonstrate the "
                  "method, they do not test the paper's 7-8B claims.",
    }


def _fmt(x: Any, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, spec) if isinstance(x, float) else str(x)


def evidence_text(prediction: dict[str, Any]) -> str:
    """A prediction's evidence in one line: per unit its note, else holds / fails."""
    return "; ".join(f"{k}: {e.get('note') or {True: 'holds', False: 'fails'}.get(e.get('holds'), 'undecided')}"
                     for k, e in prediction["evidence"].items())


def robustness_markdown(record: dict[str, Any]) -> str:
    lines = ["# Cross-architecture robustness (paper 4.3)", "", "## Boundaries per model", "",
             "| model | family | blocks | data | L-I (rel.) | L-I CI | I-G (rel.) | I-G CI | paper L-I / I-G |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in record["models"]:
        cells = [m["model"], m["family"], str(m["n_blocks"]), m["data"]]
        for n in BOUNDARY_NAMES:
            layer = m["layer"][n]
            mark = "" if m["accepted"][n] else " (not accepted)"
            if layer is not None and layer in (1, m["n_blocks"]):
                mark += f" (edge: block {layer} of {m['n_blocks']})"
            cells.append("none" if layer is None else f"{layer} ({m['relative'][n]:.2f}){mark}")
            cells.append("" if m["ci"][n] is None else f"[{m['ci'][n][0]}, {m['ci'][n][1]}]")
        p = m["paper"]
        cells.append("" if p is None else f"{p['L-I']} / {p['I-G']} of {p['n_blocks']}")
        lines.append("| " + " | ".join(cells) + " |")
    if any(m["layer"][n] in (1, m["n_blocks"]) for m in record["models"] for n in BOUNDARY_NAMES):
        lines += ["", "Edge: a peak at the first or the last block has no block on one side, so the fused curve's "
                  "peak there rests on one neighbour only (an edge artefact is possible); the edge check (the "
                  "same curve with peaks at interior blocks only, below), the controls (controls.md: does the "
                  "random-weight network put a peak there too?) and the rival transitions (results.json "
                  "`rivals`) are the evidence to weigh it with."]
        lines += [f"- {m['model']}: {edge_check_text(m['edge_check'], m['n_blocks'])}" for m in record["models"]
                  if m.get("edge_check")]
    lines += ["", "## Families (relative positions)", "",
              "| family | boundary | models | found | accepted | mean | std | CV | range |",
              "|---|---|---|---|---|---|---|---|---|"]
    for family, by_name in record["families"].items():
        for n, s in by_name.items():
            lines.append(f"| {family} | {n} | {len(s['models'])} | {s['found']} | {s['accepted']} | {_fmt(s['mean'])} "
                         f"| {_fmt(s['std'])} | {_fmt(s['cv'])} | {_fmt(s['range'])} |")
    offsets = [o for o in record["offsets"] if o["offset"] is not None]
    if offsets:
        lines += ["", "Cross-family offsets (difference of family means): " + "; ".join(
            f"{o['boundary']} {o['families'][0]} - {o['families'][1]} = {o['offset']:+.3f}" for o in offsets)]
    lines += ["", "## The paper's predictions", "", "| tier | prediction | verdict | evidence |", "|---|---|---|---|"]
    for v in record["predictions"]:
        ev = evidence_text(v)
        prediction, ev = (t.replace("|", "\\|") for t in (v["prediction"], ev))  # a pipe inside a cell would end it
        lines.append(f"| {v['tier']} | {prediction} | **{v['verdict']}** | {ev or 'needs ' + v['needs']} |")
    lines += fisher_lines(record)
    lines += ["", "Definitions (ours where the paper's equations are unreadable): " + "; ".join(
        f"{k}: {d}" for k, d in record["definitions"].items()) + ".", "", record["caveat"]]
    return "\n".join(lines) + "\n"


def fisher_lines(record: dict[str, Any]) -> list[str]:
    """The A.5 evidence as a table: per model and scale, measured / predicted KL and the fitted slope ratio."""
    if not record.get("fisher"):
        return []
    lines = ["", "## Appendix A.5: measured / predicted KL under small noise (experiment=fisher)", "",
             "| model | data | sigma | band | scale | measured / predicted | slope / predicted | model verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for f in record["fisher"]:
        for scale, ratio in f["ratio"].items():
            lines.append(f"| {f['model']} | {f['data']} | {_fmt(f['sigma'], 'g')} | [{_fmt(f['band'][0], 'g')}, "
                         f"{_fmt(f['band'][1], 'g')}] | {scale} | {_fmt(ratio)} | {_fmt(f['slope_ratio'][scale])} "
                         f"| {f['verdict']} |")
    (a5,) = [v for v in record["predictions"] if v["id"] == "fisher_trace"]
    across = a5["evidence"].get("local brittleness across families")
    if across:
        lines += ["", f"Local brittleness across families: {across['note']}."]
    return lines


def write_robustness(folders: Iterable[str | Path], out: str | Path, alpha: float | None = None) -> dict[str, Any] | None:
    """Write robustness.json, robustness.md and (with boundary results) robustness.png, the paper's Figure 10,
    in `out` over every result under `folders` and return the record; None (nothing written) if no result
    was found."""
    record = robustness(folders, alpha)
    if record is None:
        return None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "robustness.json", record)
    (out / "robustness.md").write_text(robustness_markdown(record))
    if record["models"]:
        from mspgt.reports.figure10 import robustness_figure

        robustness_figure(record, out / "robustness.png")
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Experiment 3: boundaries across models, and the predictions")
    parser.add_argument("folders", nargs="+", type=Path, help="folders searched for results (e.g. outputs/)")
    parser.add_argument("--out", type=Path, default=None, help="where robustness.{md,json} go (default: first folder)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="Tier 2 significance level (default: each intervention run's experiment.alpha)")
    args = parser.parse_args(argv)
    out = args.out or args.folders[0]
    if write_robustness(args.folders, out, args.alpha) is None:
        raise SystemExit(f"no boundary or intervention result under {[str(f) for f in args.folders]}")
    print((Path(out) / "robustness.md").read_text())


if __name__ == "__main__":
    main()
