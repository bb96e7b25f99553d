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
Prompts where either condition is nan (an undefined metric) are dropped from the pair; `n` says how many
pairs remain.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

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
