"""The eq. 28 test (appendix A.4): does the layer-wise rate of change of an information curve jump at the
detected boundaries? (The equation is unreadable in our copy; the statistic and the rule are ours.)

Kink statistic at a point x of a curve I(x): the least-squares slope of I over x..x+k minus that over x-k..x,
each window cut where the curve stops being defined (its ends, or an undefined value such as I(h_{-1}; h_0)),
with at least one step each side. A boundary at block b puts its kink point at x = b - 1, the last state of
the lower scale; the change between the windows is what block b starts.

Two nulls, both computed from the same pass:
- the shuffle null (MI curves): the same MI with h_l's tokens permuted within each group (signals/information.py).
  The matrix-based MI is not a mutual information in every respect (its floor moves with the marginal spectra),
  so an MI curve is tested as its excess over the shuffle null, I - I_null, in every resample: a kink of the
  estimator's own floor cannot pass;
- the layer null (every curve): the same statistic at every point further than k from every boundary's kink
  point (on the excess curve for MI).

PRE-REGISTERED RULE (fixed before any result was seen): for a curve and a boundary, the prediction is
supported when (1) the 95% bootstrap CI of the kink (resampling sentence groups) excludes 0 and (2) |kink|
exceeds the 95th percentile of |kink| over the layer-null points; refuted otherwise; untestable with fewer
than 3 layer-null points. Combined (a curve over its boundaries, a run over its curves): `combine_verdicts`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from mspgt.fusion.bootstrap import QUANTILE_METHOD, percentile_interval

NULL_QUANTILE = 0.95
MIN_NULL_POINTS = 3
SUPPORTED, REFUTED, MIXED, UNTESTABLE = "supported", "refuted", "mixed", "untestable here"
RULE = ("supported for a curve and boundary when the 95% bootstrap CI of the kink (slope over x..x+k minus slope "
        "over x-k..x, x = b - 1, windows cut where the curve is undefined) excludes 0 and |kink| exceeds the 95th "
        "percentile of |kink| at the points further than k from every boundary; MI curves are tested as their "
        "excess over the same-pass shuffle null (h_l's tokens permuted within the group); a curve is supported "
        "if every boundary is, refuted if none is, mixed otherwise (pre-registered, ours)")


def combine_verdicts(verdicts: Iterable[str]) -> str:
    """The one rule that combines verdicts (boundaries of a curve, curves of a run, runs of a prediction):
    untestable where none was tested; supported / refuted where every tested one is; mixed otherwise."""
    tested = {v for v in verdicts if v != UNTESTABLE}
    if not tested:
        return UNTESTABLE
    return tested.pop() if len(tested) == 1 and tested <= {SUPPORTED, REFUTED} else MIXED


def _slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slopes of y [..., n] over x [n] -> [...]."""
    xc = x - x.mean()
    return (y - y.mean(-1, keepdims=True)) @ xc / (xc @ xc)


def kink(curve: np.ndarray, at: int, k: int) -> np.ndarray:
    """Right minus left least-squares slope at index `at` of curve [..., n] (windows of k steps, cut where
    the curve is not finite in every row, at least one step each side) -> [...]; nan where a side has none."""
    n = curve.shape[-1]
    finite = np.isfinite(curve).reshape(-1, n).all(0)  # [n]
    if not (0 <= at < n and finite[at]):
        return np.full(curve.shape[:-1], np.nan)
    lo = at
    while lo > max(0, at - k) and finite[lo - 1]:
        lo -= 1
    hi = at
    while hi < min(n - 1, at + k) and finite[hi + 1]:
        hi += 1
    if at - lo < 1 or hi - at < 1:
        return np.full(curve.shape[:-1], np.nan)
    left, right = np.arange(lo, at + 1), np.arange(at, hi + 1)
    return _slope(right.astype(float), curve[..., right]) - _slope(left.astype(float), curve[..., left])


def null_points(n: int, kink_points: list[int], k: int) -> list[int]:
    """Indices with room for a step on both sides that are further than k from every kink point."""
    return [x for x in range(1, n - 1) if all(abs(x - p) > k for p in kink_points)]


def eq28_test(curve: np.ndarray, resampled: np.ndarray, kink_points: dict[str, int], k: int,
              ci_level: float = 0.95, shuffle_null: np.ndarray | None = None,
              shuffle_null_resampled: np.ndarray | None = None) -> dict[str, Any]:
    """The rule above for one curve. curve [n] (point estimate), resampled [B, n] (bootstrap curves over the
    same resamples), kink_points: boundary name -> index x in the curve. With shuffle_null [n] and
    shuffle_null_resampled [B, n], the curve tested is curve - shuffle_null (paired per resample)."""
    tested, tested_boot = curve, resampled
    if shuffle_null is not None:
        tested, tested_boot = curve - shuffle_null, resampled - shuffle_null_resampled
    nulls = [x for x in null_points(len(tested), list(kink_points.values()), k)
             if np.isfinite(kink(tested, x, k))]
    null = np.abs(np.array([kink(tested, x, k) for x in nulls], dtype=float))
    threshold = float(np.quantile(null, NULL_QUANTILE, method=QUANTILE_METHOD)) if len(null) else float("nan")
    per_boundary: dict[str, Any] = {}
    for name, x in kink_points.items():
        point = float(kink(tested, x, k))
        lo, hi = percentile_interval(kink(tested_boot, x, k), ci_level)
        if len(null) < MIN_NULL_POINTS or not np.isfinite(point):
            verdict = UNTESTABLE
        else:
            excludes_zero = bool(lo > 0 or hi < 0)
            verdict = SUPPORTED if excludes_zero and abs(point) > threshold else REFUTED
        row = {"kink_point": x, "kink": point, "ci_low": lo, "ci_high": hi, "null_threshold": threshold,
               "verdict": verdict}
        if shuffle_null is not None:  # the raw curve's kink and the shuffle null's own, for the reader
            row["kink_raw"] = float(kink(curve, x, k))
            row["kink_shuffle_null"] = float(kink(shuffle_null, x, k))
        per_boundary[name] = row
    return {"boundaries": per_boundary, "verdict": combine_verdicts(b["verdict"] for b in per_boundary.values()),
            "k": k, "n_null_points": len(null), "null_kinks": null.tolist(),
            "null": "shuffle (excess over h_l's tokens permuted) and layer" if shuffle_null is not None else "layer"}
