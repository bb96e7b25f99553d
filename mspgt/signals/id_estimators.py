"""dadapy's raw intrinsic-dimension estimators on distinct points: the neighbours once, TwoNN and GRIDE from
them (signals/intrinsic_dimension.py says which points and how the estimates are combined and calibrated;
signals/id_reference.py tabulates the same estimators on Gaussian references)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

GRIDE_SEARCH = (0.001, 1000.0, 1e-7)  # dadapy's defaults for GRIDE's search: lowest, highest ID, precision


def distinct_first(points: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the first `limit` distinct rows of points [n, d] in their order (exact equality)."""
    rows = np.ascontiguousarray(points).view(np.dtype((np.void, points.dtype.itemsize * points.shape[1])))
    _, first = np.unique(rows.ravel(), return_index=True)
    return np.sort(first)[:limit]


def nearest_neighbours(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """points [..., n, d] (distinct rows) -> (distances [..., n, k + 1] float64, indices [..., n, k + 1]): each
    point first (distance 0), then its k nearest neighbours in increasing distance. From float64 Gram matrices
    of the centred points (one batched product over the leading axes) and torch's top-k."""
    x = torch.from_numpy(np.ascontiguousarray(points)).to(torch.float64)
    x -= x.mean(-2, keepdim=True)
    sq = x.square().sum(-1)  # [..., n]
    d2 = sq[..., :, None] + sq[..., None, :] - 2.0 * (x @ x.transpose(-1, -2))  # [..., n, n]
    d2.diagonal(dim1=-2, dim2=-1).fill_(-1.0)  # each point is its own first "neighbour"
    near, index = torch.topk(d2, k + 1, dim=-1, largest=False, sorted=True)  # [..., n, k + 1]
    return near.clamp_min(0.0).sqrt().numpy(), index.numpy()


def dadapy_estimates(distances: np.ndarray, index: np.ndarray, k: int) -> tuple[float, float]:
    """(TwoNN, GRIDE at (k / 2, k)) by dadapy from one state's neighbour distances [n, k + 1] and indices."""
    from dadapy.id_estimation import IdEstimation  # imported on use: dadapy pulls in jax (seconds)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator = IdEstimation(distances=(distances, index), maxk=k, verbose=False, n_jobs=1)
        twonn = float(estimator.compute_id_2NN()[0])
        mus = distances[:, k] / distances[:, k // 2]  # ratio of the n2-th to the n1-th neighbour distance
        gride = float(estimator._compute_id_gride_single_scale(*GRIDE_SEARCH[:2], mus, k // 2, k,
                                                                 GRIDE_SEARCH[2])[0])
    return twonn, gride


def raw_estimates(points: np.ndarray, gride_range_max: int = 8) -> tuple[float, float]:
    """(TwoNN, GRIDE at (gride_range_max / 2, gride_range_max)) by dadapy, uncalibrated, from distinct points
    [n, d], n > gride_range_max."""
    return dadapy_estimates(*nearest_neighbours(points, gride_range_max), gride_range_max)


