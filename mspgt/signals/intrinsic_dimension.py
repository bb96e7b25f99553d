"""Intrinsic dimension (ID) of the token states per layer, a rival account of layer structure (Valeriani et al.
2023; Cheng et al., ICLR 2025, arXiv 2405.15471: a high-ID "abstraction" phase early in the network). The
estimators are `dadapy`'s (Glielmo et al. 2022): TwoNN (Facco et al. 2017, `compute_id_2NN`, its default
10% of the largest distance ratios discarded) and GRIDE (Denti et al. 2022) at neighbour ranks
(n1, n2) = (gride_range_max / 2, gride_range_max), the largest scale of `return_id_scaling_gride`.

Which points (our choice): the word-final tokens of the probe sample the pass stores (the states at each
sampled word's last sub-word token, float16, about 130 words per sentence group at the defaults), per
sentence group; Cheng et al. take the last token of each sequence. Identical states (the same word at h_0,
where a state is its token's embedding) are counted once: a zero distance breaks nearest-neighbour estimators.

Resampling (our rule): the ID is estimated per group and a curve is the mean over groups (groups with fewer
than `id_min_points` distinct words are left out), so a bootstrap resample of groups is a weighted mean of
per-group estimates and never duplicates a point inside an estimate (resampling points with replacement would
create zero distances). The estimand is therefore the mean ID of a group's ~130 word states, not the ID of the
whole corpus's states; the coverage of its interval is checked on a planted case (tests).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


def _distances(points: torch.Tensor) -> torch.Tensor:
    """[m, n, d] -> [m, n, n] float64 Euclidean distances, from float64 Gram matrices (the same neighbours on
    every CPU up to exact ties; one batched product for all states)."""
    x = points.to(torch.float64)
    sq = x.square().sum(-1)  # [m, n]
    scale = sq[:, :, None] + sq[:, None, :]  # [m, n, n]
    d2 = scale - 2.0 * x @ x.transpose(-1, -2)  # [m, n, n]
    d2[d2 <= 1e-10 * scale] = 0.0  # identical points (rounding of the product leaves ~1e-14 of the norms)
    d2.diagonal(dim1=-2, dim2=-1).zero_()
    return d2.clamp_min(0.0).sqrt()


def _dadapy_estimates(distances: np.ndarray, gride_range_max: int) -> tuple[float, float]:
    """(TwoNN, GRIDE) by dadapy from one state's [n, n] distances between distinct points."""
    from dadapy.id_estimation import IdEstimation  # imported on use: dadapy pulls in jax (seconds)

    k = min(len(distances) - 1, gride_range_max)
    index = np.argsort(distances, axis=1, kind="stable")[:, : k + 1]  # [n, k + 1], self first (distance 0)
    values = np.take_along_axis(distances, index, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator = IdEstimation(distances=(values, index), maxk=k, verbose=False, n_jobs=1)
        twonn = float(estimator.compute_id_2NN()[0])
        gride = float(estimator.return_id_scaling_gride(range_max=gride_range_max)[0][-1])
    return twonn, gride


def states_intrinsic_dimension(states: torch.Tensor, gride_range_max: int = 8,
                               min_points: int = 32) -> np.ndarray:
    """[m, n, d] states of n points -> [2, m] (TwoNN, GRIDE), each state's identical points counted once;
    nan where fewer than `min_points` distinct points remain. The distances are one batched product; the
    per-state work is small and runs in numpy."""
    distances = _distances(states).numpy()  # [m, n, n]
    out = np.full((2, states.shape[0]), np.nan)
    for state, dist in enumerate(distances):
        duplicate = np.triu(dist == 0, k=1).any(0)  # [n]: equal to an earlier point
        distinct = dist[~duplicate][:, ~duplicate] if duplicate.any() else dist
        if len(distinct) >= max(min_points, gride_range_max + 1):
            out[:, state] = _dadapy_estimates(distinct, gride_range_max)
    return out


def intrinsic_dimension(points: np.ndarray, gride_range_max: int = 8) -> tuple[float, float]:
    """(TwoNN, GRIDE) ID of the distinct rows of points [n, d] (nan with too few)."""
    est = states_intrinsic_dimension(torch.from_numpy(np.asarray(points))[None], gride_range_max,
                                     gride_range_max + 1)
    return float(est[0, 0]), float(est[1, 0])


def group_intrinsic_dimension(features: np.ndarray, group: np.ndarray, n_groups: int, gride_range_max: int = 8,
                              min_points: int = 32) -> np.ndarray:
    """Per group and state: features [N, m, d] (the probe sample, every split), group [N] in 0..n_groups-1 ->
    [2, n_groups, m] (TwoNN, GRIDE); nan for groups with fewer than `min_points` distinct words."""
    out = np.full((2, n_groups, features.shape[1]), np.nan)
    for g in range(n_groups):
        rows = np.nonzero(group == g)[0]
        if len(rows) >= min_points:
            out[:, g] = states_intrinsic_dimension(torch.from_numpy(features[rows]).transpose(0, 1),
                                                   gride_range_max, min_points)
    return out


def mean_over_groups(per_group: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """per_group [G, m] with nan rows for groups left out; weights None, [G] or [B, G] -> [m] or [B, m]."""
    ok = np.isfinite(per_group).all(-1)  # [G]
    values = np.where(ok[:, None], per_group, 0.0)
    w = (np.ones(len(ok)) if weights is None else np.asarray(weights, dtype=float)) * ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ values) / w.sum(-1, keepdims=True)
