"""Paired comparison of per-prompt metrics, clean vs noised (paper 4.2.1: paired t-test, p < 0.05).

- relative change in % = (mean_noised - mean_clean) / |mean_clean| * 100 (Table 2); nan if mean_clean = 0.
- paired t-test: scipy.stats.ttest_rel over prompts (the paired unit). Where every difference is exactly 0
  (a baseline against itself) we report t = 0, p = 1 (scipy would give nan: 0/0); where every difference
  is the same non-zero number, t = d_z = +-inf and p = 0.
- effect size: Cohen's d_z = mean(d) / sd(d) of the paired differences d (Cohen 1988; Lakens 2013).
- 95% interval of the relative change: the t interval of mean(d), divided by |mean_clean| (the clean
  mean's own uncertainty is ignored: an approximation, said so in the reports).
- brittleness coefficient of a scale at a sigma: the mean absolute relative change (in %) over the
  configured metrics (the paper's eq. 8 is unreadable in our copy: OUR definition, docs/method.md).
- the brittleness null (ours): under "noise changes nothing" the two conditions of a prompt are exchangeable,
  so swapping them per prompt (every metric of a prompt swapped together: their correlation is kept) gives
  a brittleness the sampling alone produces. `brittleness_null` draws such swaps (a sign-flip permutation
  test over prompts) and reports the null's mean, its 95th percentile (the resampling floor) and the
  permutation p of the observed brittleness, (1 + #{null >= observed}) / (1 + permutations). A brittleness
  below that floor is no evidence that the noise did anything, however large it looks.
- the contrast between scales (ours; Tier 2 of the paper): with one model, data and sigma run at several
  scales on the same prompts, D_s = |rel_target| - |rel_s| for every other scale s, each rel the relative
  change of that scale's run (noised vs its clean condition), with percentile intervals from a paired
  bootstrap over prompts (one resample of prompt indices shared by every run). The target changes the metric
  more than every other scale where every D_s's 95% interval lies above 0 (intersection-union), less than
  some other where one lies below 0 (Bonferroni over the other scales), and the data cannot tell otherwise.
  (A single max-statistic, |rel_target| - max_s |rel_s|, was tried first: its percentile interval is not
  valid where two scales tie, and it claimed a difference in 13% of planted ties.)
Prompts where either condition is nan (an undefined metric) are dropped from the pair; `n` says how many
pairs remain.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

BRITTLENESS_NULL_DEFINITION = (
    "sign-flip permutation null (ours): the clean and noised values of each prompt swapped at random, all "
    "metrics of a prompt together; p = (1 + #{null brittleness >= observed}) / (1 + permutations); floor: the "
    "null's 95th percentile"
)

BRITTLENESS_DEFINITION = (
    "our definition (the paper's eq. 8 is unreadable): mean absolute relative change, in %, of the per-metric "
    "means (noised vs clean) over the metrics {metrics}"
)


@dataclass(frozen=True)
class PairedComparison:
    n: int  # pairs used (prompts where both values are defined)
    n_dropped: int  # prompts dropped because a value is nan
    clean_mean: float
    noised_mean: float
    relative_change_pct: float
    relative_change_ci95: tuple[float, float]
    t: float
    p: float
    cohens_dz: float

    def as_dict(self) -> dict:
        return asdict(self)

    def significant(self, alpha: float = 0.05) -> bool:
        return bool(self.p < alpha)


def relative_change_pct(clean_mean: float, noised_mean: float) -> float:
    """(noised - clean) / |clean| * 100; nan when the clean mean is 0."""
    if clean_mean == 0:
        return 0.0 if noised_mean == 0 else float("nan")
    return (noised_mean - clean_mean) / abs(clean_mean) * 100.0


def compare_paired(clean: np.ndarray, noised: np.ndarray) -> PairedComparison:
    """Paired t-test, effect size and relative change of per-prompt values (same prompt order)."""
    clean, noised = np.asarray(clean, dtype=float), np.asarray(noised, dtype=float)
    if clean.shape != noised.shape or clean.ndim != 1:
        raise ValueError(
            f"paired arrays must be 1-D and equal in shape, got {clean.shape} and {noised.shape}"
        )
    keep = ~(np.isnan(clean) | np.isnan(noised))
    c, x = clean[keep], noised[keep]
    n = int(keep.sum())
    nan = float("nan")
    if n == 0:
        return PairedComparison(0, len(clean), nan, nan, nan, (nan, nan), nan, nan, nan)
    clean_mean, noised_mean = float(c.mean()), float(x.mean())
    diff = x - c  # (n,)
    rel = relative_change_pct(clean_mean, noised_mean)
    if np.all(diff == 0):
        t, p, dz, ci = 0.0, 1.0, 0.0, (rel, rel)
    elif n < 2:
        t, p, dz, ci = nan, nan, nan, (nan, nan)
    elif np.all(diff == diff[0]):  # a constant non-zero shift: sd(d) = 0, the test is degenerate
        t = dz = math.copysign(math.inf, float(diff[0]))
        p, ci = 0.0, (rel, rel)
    else:
        res = stats.ttest_rel(x, c)
        t, p = float(res.statistic), float(res.pvalue)
        sd = float(diff.std(ddof=1))
        dz = float(diff.mean() / sd)
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        scale = abs(clean_mean) / 100.0
        ci = ((diff.mean() - half) / scale, (diff.mean() + half) / scale) if scale > 0 else (nan, nan)
    return PairedComparison(
        n=n,
        n_dropped=len(clean) - n,
        clean_mean=clean_mean,
        noised_mean=noised_mean,
        relative_change_pct=rel,
        relative_change_ci95=(float(ci[0]), float(ci[1])),
        t=t,
        p=p,
        cohens_dz=dz,
    )


def brittleness(comparisons: dict[str, PairedComparison], metrics: list[str] | tuple[str, ...]) -> float:
    """Mean |relative change| (%) over `metrics` (our definition); nan if any of them is undefined."""
    if not metrics:
        raise ValueError("brittleness needs at least one metric")
    values = [abs(comparisons[m].relative_change_pct) for m in metrics]
    return float(np.mean(values))


def relative_changes_pct(clean_mean: np.ndarray, noised_mean: np.ndarray) -> np.ndarray:
    """`relative_change_pct` over arrays of means (0 where both are 0, nan where only the clean one is)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(clean_mean == 0, np.where(noised_mean == 0, 0.0, np.nan),
                        (noised_mean - clean_mean) / np.abs(clean_mean) * 100.0)


def _relative_changes(clean: np.ndarray, noised: np.ndarray, swaps: np.ndarray) -> np.ndarray:
    """|relative change| (%) of the means for each row of `swaps` ([P, n] of 0/1: 1 swaps that prompt's
    clean and noised values); prompts where either value is nan are left out, as in `compare_paired`."""
    keep = ~(np.isnan(clean) | np.isnan(noised))
    c, x, s = clean[keep], noised[keep], swaps[:, keep].astype(float)
    if c.size == 0:
        return np.full(len(swaps), np.nan)
    d = x - c
    moved = s @ d / c.size  # how far each swap moves the clean mean up (and the noised mean down)
    return np.abs(relative_changes_pct(c.mean() + moved, x.mean() - moved))


def brittleness_null(clean: dict[str, np.ndarray], noised: dict[str, np.ndarray], metrics: list[str],
                     n_permutations: int = 2000, seed: int = 0) -> dict[str, float | int | str]:
    """The brittleness of these per-prompt scores beside its sign-flip permutation null (module docstring):
    observed, null mean, null 95th percentile (`floor`), permutation p. One swap pattern per permutation is
    shared by every metric (a prompt's metrics move together)."""
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    arrays = {m: (np.asarray(clean[m], dtype=float), np.asarray(noised[m], dtype=float)) for m in metrics}
    n = {a.shape for pair in arrays.values() for a in pair}
    if len(n) != 1 or len(next(iter(n))) != 1:
        raise ValueError(f"per-prompt scores must be 1-D and of one length, got shapes {sorted(n)}")
    n_prompts = next(iter(n))[0]
    swaps = np.random.default_rng(seed).integers(0, 2, size=(n_permutations, n_prompts))
    none = np.zeros((1, n_prompts), dtype=int)
    observed = float(np.mean([_relative_changes(c, x, none)[0] for c, x in arrays.values()]))
    null = np.mean([_relative_changes(c, x, swaps) for c, x in arrays.values()], axis=0)  # [P]
    finite = null[np.isfinite(null)]
    if not math.isfinite(observed) or finite.size == 0:
        nan = float("nan")
        return {"observed": observed, "null_mean": nan, "floor": nan, "p": nan,
                "n_permutations": n_permutations, "seed": seed, "definition": BRITTLENESS_NULL_DEFINITION}
    return {
        "observed": observed,
        "null_mean": float(finite.mean()),
        "floor": float(np.quantile(finite, 0.95)),
        "p": float((1 + np.sum(finite >= observed - 1e-12 * max(1.0, abs(observed)))) / (1 + finite.size)),
        "n_permutations": n_permutations,
        "seed": seed,
        "definition": BRITTLENESS_NULL_DEFINITION,
    }


def per_prompt_record(prompts: list[str], scores: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Every metric's value per prompt and condition (None where undefined): what the paired tests and the
    brittleness null were computed from, so a reader can recompute them."""
    return {"n_prompts": len(prompts),
            **{cond: {m: [None if not np.isfinite(v) else float(v) for v in vals] for m, vals in by_metric.items()}
               for cond, by_metric in scores.items()}}


def scale_contrast(clean: dict[str, np.ndarray], noised: dict[str, np.ndarray], target: str,
                   n_resamples: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Does the `target` scale change one metric more than every other scale? Per other scale s, the paired
    difference D_s = |rel_target| - |rel_s| over per-prompt values (module docstring) with its paired-bootstrap
    percentile interval at level 1 - alpha (`ci`). `holds`: True where every D_s's interval lies above 0 (an
    intersection-union test: each at 1 - alpha gives the conjunction at 1 - alpha); False where some D_s's
    one-sided upper bound at 1 - alpha / (number of other scales) lies below 0 (Bonferroni over the other
    scales); None where the data cannot tell. A caller that decides several such contrasts together passes
    alpha divided by their number (robustness.structure_verdict). `clean` and `noised`: scale -> [n_prompts],
    the same prompts in the same order in every run."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha} must lie in (0, 1)")
    scales = sorted(clean)
    if target not in clean or len(scales) < 2 or set(noised) != set(clean):
        raise ValueError(f"need the target {target!r} and another scale, clean and noised, got {scales}")
    stacked = np.array([[np.asarray(clean[s], dtype=float), np.asarray(noised[s], dtype=float)] for s in scales])
    if stacked.ndim != 3:
        raise ValueError("per-prompt values must be 1-D and of one length in every run")
    keep = ~np.isnan(stacked).any(axis=(0, 1))
    values = stacked[:, :, keep]  # [scale, condition, prompt]
    n, others = values.shape[2], [s for s in scales if s != target]
    nan = float("nan")
    if n < 2:
        return {"differences": {s: nan for s in others}, "ci": {s: [nan, nan] for s in others}, "ci_level": 1 - alpha,
                "holds": None, "n_prompts": n}

    def rel(idx: np.ndarray) -> np.ndarray:  # [scale, ...] |relative change| in %
        means = values[:, :, idx].mean(axis=2)
        return np.abs(relative_changes_pct(means[:, 0], means[:, 1]))

    observed = rel(np.arange(n))
    boot = rel(np.random.default_rng(seed).integers(0, n, size=(n, n_resamples)))  # [scale, B]
    t = scales.index(target)
    fail_q = alpha / len(others)
    differences, ci, above, below = {}, {}, [], []
    for s in others:
        i = scales.index(s)
        d = boot[t] - boot[i]
        d = d[np.isfinite(d)]
        differences[s] = float(observed[t] - observed[i])
        if d.size == 0:
            ci[s] = [nan, nan]
            above.append(False)
            continue
        lo, hi = (float(np.quantile(d, q)) for q in (alpha / 2, 1 - alpha / 2))
        ci[s] = [lo, hi]
        above.append(lo > 0)
        below.append(float(np.quantile(d, 1 - fail_q)) < 0)
    holds = True if all(above) else False if any(below) else None
    return {"differences": differences, "ci": ci, "ci_level": 1 - alpha, "holds": holds, "n_prompts": n,
            "n_resamples": n_resamples, "seed": seed}
