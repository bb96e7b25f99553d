"""The eq. 28 test (appendix A.4): does the layer-wise rate of change of an information curve jump at the
detected boundaries? (The equation is unreadable in our copy; the statistic and the rule are ours.)

Kink statistic at a point x of a curve I(x): the least-squares slope of I over x..x+k minus that over x-k..x
(each window cut at the ends of the curve, at least one step). A boundary at block b puts its kink point at
x = b - 1, the last state (or block) of the lower scale; the change between the windows is what block b
starts. The null: the same statistic at every point further than k from every boundary's kink point.

PRE-REGISTERED RULE (fixed before any result was seen; README): for a curve and a boundary, the prediction
is supported when (1) the 95% bootstrap CI of the kink (resampling sentence groups) excludes 0 and (2) |kink|
exceeds the 95th percentile of |kink| over the null points; refuted otherwise; untestable with fewer than 3
null points. A curve: supported if every boundary is, refuted if none is, mixed otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NULL_QUANTILE = 0.95
MIN_NULL_POINTS = 3
RULE = ("supported for a curve and boundary when the 95% bootstrap CI of the kink (slope over x..x+k minus slope "
        "over x-k..x, x = b - 1) excludes 0 and |kink| exceeds the 95th percentile of |kink| at the points further "
        "than k from every boundary; a curve is supported if every boundary is, refuted if none is, mixed "
        "otherwise (pre-registered, ours)")


def _slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slopes of y [..., n] over x [n] -> [...]."""
    xc = x - x.mean()
    return (y - y.mean(-1, keepdims=True)) @ xc / (xc @ xc)


def kink(curve: np.ndarray, at: int, k: int) -> np.ndarray:
    """Right minus left least-squares slope at index `at` of curve [..., n] (windows of k steps, cut at the
    ends, at least one step each side) -> [...]; nan where a side has no step."""
    n = curve.shape[-1]
    lo, hi = max(0, at - k), min(n - 1, at + k)
    if at - lo < 1 or hi - at < 1:
        return np.full(curve.shape[:-1], np.nan)
    left, right = np.arange(lo, at + 1), np.arange(at, hi + 1)
    return _slope(right.astype(float), curve[..., right]) - _slope(left.astype(float), curve[..., left])


def null_points(n: int, kink_points: list[int], k: int) -> list[int]:
    """Indices with a step on both sides that are further than k from every kink point."""
    return [x for x in range(1, n - 1) if all(abs(x - p) > k for p in kink_points)]


def eq28_test(curve: np.ndarray, resampled: np.ndarray, kink_points: dict[str, int], k: int,
              ci_level: float = 0.95) -> dict[str, Any]:
    """The rule above for one curve. curve [n] (point estimate), resampled [B, n] (bootstrap curves),
    kink_points: boundary name -> index x in the curve. Indices whose value is nan are left out of the null."""
    finite = np.isfinite(curve)
    nulls = [x for x in null_points(len(curve), list(kink_points.values()), k)
             if finite[max(0, x - k) : x + k + 1].all()]
    null = np.abs(np.array([kink(curve, x, k) for x in nulls], dtype=float))
    threshold = float(np.quantile(null, NULL_QUANTILE)) if len(null) else float("nan")
    alpha = 1 - ci_level
    per_boundary: dict[str, Any] = {}
    for name, x in kink_points.items():
        point = float(kink(curve, x, k))
        boot = kink(resampled, x, k)  # [B]
        boot = boot[np.isfinite(boot)]
        lo, hi = (np.quantile(boot, [alpha / 2, 1 - alpha / 2]) if len(boot) else (np.nan, np.nan))
        if len(null) < MIN_NULL_POINTS or not np.isfinite(point):
            verdict = "untestable here"
        else:
            excludes_zero = bool(lo > 0 or hi < 0)
            verdict = "supported" if excludes_zero and abs(point) > threshold else "refuted"
        per_boundary[name] = {"kink_point": x, "kink": point, "ci_low": float(lo), "ci_high": float(hi),
                              "null_threshold": threshold, "verdict": verdict}
    tested = [b["verdict"] for b in per_boundary.values() if b["verdict"] != "untestable here"]
    overall = ("untestable here" if not tested else "supported" if all(v == "supported" for v in tested)
               else "refuted" if all(v == "refuted" for v in tested) else "mixed")
    return {"boundaries": per_boundary, "verdict": overall, "k": k, "n_null_points": len(null),
            "null_kinks": null.tolist()}
