"""Intrinsic dimension (ID) of the token states per layer, a rival account of layer structure (Valeriani et al.
2023; Cheng et al., ICLR 2025, arXiv 2405.15471: a high-ID "abstraction" phase early in the network). The
estimators are `dadapy`'s (Glielmo et al. 2022): TwoNN (Facco et al. 2017, `compute_id_2NN`, its default
10% of the largest distance ratios discarded) and GRIDE (Denti et al. 2022) at neighbour ranks
(n1, n2) = (gride_range_max / 2, gride_range_max), the largest scale of `return_id_scaling_gride` (dadapy's
single-scale maximiser, so the two smaller scales that `return_id_scaling_gride` also fits are not computed).

Which points (our rule): per sentence group, the first `id_points` (128) DISTINCT states in a seeded order of
the group's word-final tokens of the probe sample the pass stores (Cheng et al. take the last token of each
sequence). Identical states (the same token at h_0, where a state is its token's embedding) are counted once: a
zero distance breaks nearest-neighbour estimators. A fixed number of points per group makes the estimand the
same at every corpus size, and bounds the cost (one 128 x 128 Gram matrix per group and state).

Neighbours: float64 Gram matrices of the centred points and torch's top-k, one batched product per group for
the states whose first `id_points` points are distinct (every state but h_0, in practice). The same neighbour
distances feed TwoNN and GRIDE; every bootstrap resample reuses the per-group estimates.

Calibration (our rule, `id_reference: gaussian`): nearest-neighbour estimators underestimate a high ID from a
finite sample (a 20-dimensional Gaussian comes back ~15 by TwoNN and ~12.5 by GRIDE from 128 points, 17.5 and
15 from 8,500). Each raw estimate is mapped to the dimension d whose isotropic Gaussian, sampled at the same
number of points, gives that raw estimate on average (signals/id_reference.py: dadapy on seeded Gaussian
references). The map is increasing, so it keeps the order of IDs at one sample size. `id_reference: none`
reports dadapy's raw estimates (the numbers the papers above report).

Resampling (our rule): the ID is estimated per group and a curve is the mean over groups (groups with fewer
than `id_min_points` distinct words are left out), so a bootstrap resample of groups is a weighted mean of
per-group estimates and never duplicates a point inside an estimate (resampling points with replacement would
create zero distances). The estimand is the mean ID of a group's `id_points` word states, not the ID of the
whole corpus's states; the coverage of its interval is checked on a planted case (tests).
"""

from __future__ import annotations

import numpy as np

from mspgt.signals.id_estimators import dadapy_estimates, distinct_first, nearest_neighbours, raw_estimates
from mspgt.signals.id_reference import calibrate

__all__ = ["ID_RULE_VERSION", "distinct_first", "group_intrinsic_dimension", "intrinsic_dimension",
           "mean_over_groups", "nearest_neighbours", "raw_estimates", "states_intrinsic_dimension"]

ID_RULE_VERSION = 2  # the per-group ID artifact's rule (points, neighbours, calibration); bump when it changes
def states_intrinsic_dimension(states: np.ndarray, gride_range_max: int = 8, min_points: int = 32,
                               max_points: int = 128, reference: str = "gaussian") -> np.ndarray:
    """[m, n, d] states of n points (in the order to take them) -> [2, m] (TwoNN, GRIDE): per state, the first
    `max_points` distinct points; nan where fewer than `min_points` distinct points remain. States whose first
    `max_points` points are all distinct (every state but h_0, in practice) share one batched Gram product."""
    k = gride_range_max
    out = np.full((2, states.shape[0]), np.nan)
    takes = [distinct_first(points, max_points) for points in states]
    full = min(max_points, states.shape[1])
    plain = [s for s, t in enumerate(takes) if len(t) == full and t[-1] == full - 1]  # the first rows, distinct
    found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if plain and full > max(min_points - 1, k):
        dist, index = nearest_neighbours(states[plain, :full], k)  # [p, full, k + 1] each
        found = {s: (dist[i], index[i]) for i, s in enumerate(plain)}
    for state, take in enumerate(takes):
        if len(take) < max(min_points, k + 1):
            continue
        neighbours = found[state] if state in found else nearest_neighbours(states[state, take], k)
        raw = dadapy_estimates(*neighbours, k)
        out[:, state] = raw if reference == "none" else calibrate(np.array(raw), len(take), k)
    return out


def intrinsic_dimension(points: np.ndarray, gride_range_max: int = 8, max_points: int = 128,
                        reference: str = "gaussian") -> tuple[float, float]:
    """(TwoNN, GRIDE) ID of the first `max_points` distinct rows of points [n, d] (nan with too few)."""
    est = states_intrinsic_dimension(np.asarray(points)[None], gride_range_max, gride_range_max + 1,
                                     max_points, reference)
    return float(est[0, 0]), float(est[1, 0])


def group_intrinsic_dimension(features: np.ndarray, group: np.ndarray, n_groups: int, gride_range_max: int = 8,
                              min_points: int = 32, max_points: int = 128, reference: str = "gaussian",
                              seed: int = 0) -> np.ndarray:
    """Per group and state: features [N, m, d] (the probe sample, every split), group [N] in 0..n_groups-1 ->
    [2, n_groups, m] (TwoNN, GRIDE); nan for groups with fewer than `min_points` distinct words. A group's
    words are taken in a seeded order (np.random.default_rng([seed, g]))."""
    out = np.full((2, n_groups, features.shape[1]), np.nan)
    for g in range(n_groups):
        rows = np.nonzero(group == g)[0]
        if len(rows) >= min_points:
            rows = np.random.default_rng([seed, g]).permutation(rows)
            out[:, g] = states_intrinsic_dimension(features[rows].transpose(1, 0, 2), gride_range_max,
                                                   min_points, max_points, reference)
    return out


def mean_over_groups(per_group: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """per_group [G, m] with nan rows for groups left out; weights None, [G] or [B, G] -> [m] or [B, m]."""
    ok = np.isfinite(per_group).all(-1)  # [G]
    values = np.where(ok[:, None], per_group, 0.0)
    w = (np.ones(len(ok)) if weights is None else np.asarray(weights, dtype=float)) * ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ values) / w.sum(-1, keepdims=True)
