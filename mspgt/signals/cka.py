"""Signal 1, representation change (paper eq. 3): S_rep(l) = 1 - CKA(h_{l-1}, h_l), over blocks l = 1..L.

Estimator (docs/method.md, Signal 1): linear-kernel CKA with the unbiased HSIC (Song et al. 2012) computed per
group of sentences and averaged over groups: minibatch CKA (Nguyen, Raghu & Kornblith 2021, arXiv
2010.15327, eq. 3). Storing the per-group HSIC terms makes a bootstrap resample a weighted mean.
`linear_cka` is the plain full-data linear CKA (Kornblith et al. 2019) the tests compare against.
Shapes: m = L + 1 states h_0..h_L, n tokens of one group, d hidden size, G groups, B resamples.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mspgt.errors import MspgtError

ESTIMATOR = (
    "minibatch linear CKA with unbiased HSIC per sentence group (Nguyen, Raghu & Kornblith 2021, eq. 3)"
)
# What the minibatch estimator estimates, by how groups are formed (bootstrap.grouping; docs/method.md "Which CKA").
CKA_ESTIMANDS = {
    "shuffled": "the corpus's (population) linear CKA over tokens: groups of sentences drawn at random across "
                "the corpus, as Nguyen et al.'s random minibatches",
    "consecutive": "a within-group linear CKA: groups of consecutive sentences (mostly one document), so "
                   "structure between groups (topic, document) drops out",
}
# A dimension whose std within the group is below this fraction of its largest |value| counts as constant.
_CONSTANT_DIM_RTOL = 1e-8


def gram_linear(x: Tensor) -> Tensor:
    """Linear kernel K = X X^T: [..., n, d] -> [..., n, n]."""
    return x @ x.transpose(-1, -2)  # [..., n, n]


def _check_min_tokens(n: int) -> None:
    if n < 4:
        raise MspgtError(
            f"the unbiased HSIC needs at least 4 tokens per group, got {n}",
            "use larger sentence groups (bootstrap.group_size) or a longer max length (data.max_tokens)",
        )


def hsic_unbiased_matrix(grams: Tensor) -> Tensor:
    """All pairs of unbiased HSIC at once: grams [m, n, n] -> [m, m] float64.

    The same formula as the direct `hsic_unbiased` (tests/test_cka.py), through tr(K~L~) = sum(K~ * L~) (Gram matrices are symmetric),
    1'K~1 = sum(K~) and 1'K~L~1 = (K~1).(L~1).
    """
    if grams.ndim != 3 or grams.shape[1] != grams.shape[2]:
        raise MspgtError(
            f"hsic_unbiased_matrix needs Gram matrices [m, n, n], got {tuple(grams.shape)}",
            "stack gram_linear(h_i) of the states h_0..h_L along the first axis",
        )
    m, n, _ = grams.shape
    _check_min_tokens(n)
    k = grams.to(torch.float64).clone()  # [m, n, n]
    k.diagonal(dim1=-2, dim2=-1).zero_()
    flat = k.reshape(m, n * n)  # [m, n*n]
    trace_kl = flat @ flat.T  # [m, m]
    total = flat.sum(dim=1)  # [m]
    row = k.sum(dim=2)  # [m, n]
    cross = row @ row.T  # [m, m]
    hsic = trace_kl + torch.outer(total, total) / ((n - 1) * (n - 2)) - cross * (2.0 / (n - 2))  # [m, m]
    return hsic / (n * (n - 3))


def standardise_dimensions(states: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """z-score every dimension over the group's tokens: [m, n, d] -> [m, n, d] in `dtype` (our definition).

    The per-dimension standardised CKA variant against rogue / massive dimensions (Timkey & van Schijndel
    2021; Sun et al. 2024, arXiv 2402.17762). Constant dimensions (std below 1e-8 of the dimension's
    largest |value|) become zero instead of dividing by ~0.
    """
    x = states.to(dtype)  # [m, n, d]
    centred = x - x.mean(dim=1, keepdim=True)  # [m, n, d] (two passes: torch.var_mean is ~5x slower here)
    std = (centred * centred).mean(dim=1, keepdim=True).sqrt()  # [m, 1, d]
    scale = torch.maximum(x.amax(dim=1, keepdim=True), -x.amin(dim=1, keepdim=True))  # [m, 1, d] max |x|
    inv_std = torch.where(std > _CONSTANT_DIM_RTOL * scale, 1.0 / std, 0.0)  # [m, 1, d]
    return centred * inv_std  # [m, n, d]


@functools.lru_cache(maxsize=512)  # one entry per group size and device seen
def _upper_triangle(n: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(rows i, columns j, flat positions i*n + j) of the entries above the diagonal of an n x n matrix."""
    i, j = torch.triu_indices(n, n, 1, device=device)
    return i, j, i * n + j


def hsic_unbiased_from_features(x: Tensor) -> tuple[Tensor, Tensor]:
    """Unbiased HSIC of the linear kernels of every pair of states, from features: x [m, n, d] (float32,
    centred) -> (HSIC [m, m] float64, trace of each kernel [m] float64).

    The same estimator as `hsic_unbiased_matrix(gram_linear(x))` (equal to ~1e-14 relative), at half its
    cost: a Gram matrix is symmetric, so only its two diagonal blocks and one off-diagonal block are built
    (3/4 of the products), and only the n(n-1)/2 entries above the diagonal enter float64:
    tr(K~L~) = 2 sum_{i<j} K_ij L_ij, 1'K~1 = sum of the row sums, 1'K~L~1 = (K~1).(L~1).
    """
    m, n, _ = x.shape
    _check_min_tokens(n)
    h = n // 2
    top, bottom = x[:, :h], x[:, h:]  # [m, h, d], [m, n-h, d]
    k11, k12, k22 = gram_linear(top), top @ bottom.transpose(-1, -2), gram_linear(bottom)  # float32 blocks
    i1, j1, f1 = _upper_triangle(h, x.device)
    i2, j2, f2 = _upper_triangle(n - h, x.device)
    upper = torch.cat([k11.reshape(m, -1).index_select(1, f1), k12.reshape(m, -1),
                       k22.reshape(m, -1).index_select(1, f2)], dim=1).to(torch.float64)  # [m, n(n-1)/2]
    n11, n12 = f1.numel(), h * (n - h)
    t11, t22 = upper[:, :n11], upper[:, n11 + n12 :]
    c12 = upper[:, n11 : n11 + n12].reshape(m, h, n - h)
    row = torch.empty(m, n, dtype=torch.float64, device=x.device)  # [m, n] row sums of K~ (zero diagonal)
    row[:, :h] = c12.sum(dim=2)
    row[:, h:] = c12.sum(dim=1)
    row.index_add_(1, i1, t11).index_add_(1, j1, t11).index_add_(1, i2 + h, t22).index_add_(1, j2 + h, t22)
    trace_kl = 2.0 * (upper @ upper.T)  # [m, m]
    total = row.sum(dim=1)  # [m]
    hsic = trace_kl + torch.outer(total, total) / ((n - 1) * (n - 2)) - (row @ row.T) * (2.0 / (n - 2))
    trace = (k11.diagonal(dim1=1, dim2=2).sum(-1) + k22.diagonal(dim1=1, dim2=2).sum(-1)).to(torch.float64)
    return hsic / (n * (n - 3)), trace


@dataclass
class GroupKernelTerms:
    """What extraction keeps of one group's states: the HSIC matrix of each CKA variant, and the first two
    moments of the activations (for the intervention noise scale s_l), read off the same kernel."""

    hsic: dict[str, Tensor]  # variant -> [m, m] float64
    sum_of_means: Tensor  # [m] sum over tokens of mean_dim(h_l)
    sum_of_mean_squares: Tensor  # [m] sum over tokens of mean_dim(h_l ** 2)


def group_hsic_variants(states: Tensor, keep: Tensor, which: Sequence[str]) -> GroupKernelTerms:
    """The four CKA variants' HSIC matrices of one group in one go (what extraction stores per group).

    states [m, n, d] (h_0..h_L of the group's real tokens); keep [n] bool marks the tokens that are not the
    first position of their sentence (pass it on the CPU: then nothing here waits for the device).
    HSIC keys: "raw", "raw_nofirst", "std", "std_nofirst" -> [m, m] (only those named in `which`).
    Speed and precision: the kernels are built in float32, then U-centred in float64 (checked against
    the float64 `group_hsic` in the tests). The unbiased HSIC is invariant to a common shift of the
    features, so the shift is chosen for precision: the mean of the kept rows (not position 0). Centring
    over all rows would leave a large common offset on every other row when position 0 carries a massive
    activation (1e4x the typical size in LLM attention sinks), and their float32 Gram entries would lose
    ~1e-4 of the HSIC to cancellation. The first-position-excluded raw kernel is then the kernel of the
    kept rows, whose features are exactly centred over themselves. The standardised variants z-score
    over their own rows, so position 0's massive activations do not set the scale of the variant that
    excludes it. The moments come nearly for free: with s the shift and mu the mean over all rows,
    sum_t ||h_t||^2 = trace(K) + 2n (mu - s).s + n ||s||^2 (K the raw kernel over all rows).
    """
    kept = torch.nonzero(keep.cpu()).squeeze(1)  # [n'] (a CPU `keep` costs no device sync)
    _check_min_tokens(int(kept.numel()))
    kept = kept.to(states.device, non_blocking=True)
    m, n, d = states.shape
    x = states.to(torch.float32)  # [m, n, d]
    weights = keep.to(device=x.device, dtype=x.dtype, non_blocking=True) / kept.numel()  # [n]
    shift = torch.matmul(weights, x).unsqueeze(1)  # [m, 1, d] mean of the kept rows (no copy of them)
    centred = x - shift  # [m, n, d]
    hsic = {}
    trace = None  # [m] trace of the raw kernel over all rows: sum_t ||h_t - s||^2
    if "raw" in which:
        hsic["raw"], trace = hsic_unbiased_from_features(centred)
    if "raw_nofirst" in which:  # the kept rows, centred over themselves
        hsic["raw_nofirst"], _ = hsic_unbiased_from_features(centred.index_select(1, kept))
    for name in ("std", "std_nofirst"):
        if name in which:
            rows = x if name == "std" else x.index_select(1, kept)  # [m, n or n', d]
            hsic[name], _ = hsic_unbiased_from_features(standardise_dimensions(rows, dtype=torch.float32))
    if trace is None:
        trace = centred.pow(2).sum(dim=(1, 2)).to(torch.float64)  # [m]
    mean64 = x.mean(dim=1).to(torch.float64)  # [m, d] mean over all rows
    shift64 = shift[:, 0].to(torch.float64)  # [m, d]
    sum_sq = (trace + 2 * n * ((mean64 - shift64) * shift64).sum(-1)
              + n * shift64.pow(2).sum(-1))  # [m] sum_t ||h_t||^2
    return GroupKernelTerms(hsic, n * mean64.mean(-1), sum_sq / d)


def group_weights(weights: np.ndarray | None, n_groups: int) -> np.ndarray:
    """Validate bootstrap group weights (shared by the signals): None -> ones [1, G]; [G] -> [1, G]; [B, G] stays."""
    if weights is None:
        return np.ones((1, n_groups))
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        w = w[None, :]
    if w.ndim != 2 or w.shape[1] != n_groups:
        raise MspgtError(
            f"group weights must be [G] or [B, G] with G = {n_groups}, got shape {np.shape(weights)}",
            "pass resample counts from mspgt.fusion.bootstrap.resample_counts for these groups",
        )
    if (w < 0).any() or not np.isfinite(w).all() or (w.sum(axis=1) <= 0).any():
        raise MspgtError(
            "group weights must be finite, non-negative, with a positive sum in every resample",
            "pass group counts (how often each group was drawn)",
        )
    return w


def minibatch_cka(hsic: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Minibatch CKA from per-group HSIC terms (Nguyen et al. 2021, eq. 3, with weighted group means).

    hsic [G, m, m]; weights [G] or [B, G] (bootstrap group counts; None = every group once)
    -> CKA [m, m] or [B, m, m], CKA_ij = mean_w HSIC_ij / sqrt(mean_w HSIC_ii * mean_w HSIC_jj).
    The normalisation of the weighted mean cancels in the ratio. Entries whose self-HSIC mean is not
    positive (a constant representation) are NaN.
    """
    hsic = np.asarray(hsic, dtype=np.float64)
    if hsic.ndim != 3 or hsic.shape[1] != hsic.shape[2]:
        raise MspgtError(
            f"minibatch_cka needs per-group HSIC terms [G, m, m], got shape {hsic.shape}",
            "pass CorpusStatistics.hsic[variant]",
        )
    n_groups, m, _ = hsic.shape
    w = group_weights(weights, n_groups)  # [B, G]
    summed = (w @ hsic.reshape(n_groups, m * m)).reshape(-1, m, m)  # [B, m, m]
    diag = np.diagonal(summed, axis1=-2, axis2=-1)  # [B, m]
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.sqrt(np.where(diag > 0, diag, np.nan))  # [B, m]
        cka = summed / (norm[:, :, None] * norm[:, None, :])  # [B, m, m]
    return cka[0] if weights is None or np.ndim(weights) == 1 else cka


def representation_change(cka: np.ndarray) -> np.ndarray:
    """S_rep(l) = 1 - CKA(h_{l-1}, h_l) (paper eq. 3): [..., m, m] -> [..., m-1], index l-1 holds block l."""
    cka = np.asarray(cka)
    if cka.ndim < 2 or cka.shape[-1] != cka.shape[-2] or cka.shape[-1] < 2:
        raise MspgtError(
            f"representation_change needs CKA matrices [..., L+1, L+1], got shape {cka.shape}",
            "pass the output of minibatch_cka",
        )
    return 1.0 - np.diagonal(cka, offset=1, axis1=-2, axis2=-1)  # [..., L]


def linear_cka(x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> float:
    """Full-data linear CKA with the biased HSIC and centred features (Kornblith et al. 2019).

    CKA = ||Y'X||_F^2 / (||X'X||_F ||Y'Y||_F) after centring columns; x [n, d1], y [n, d2]; float64.
    """
    xa = torch.as_tensor(x).to(torch.float64)  # [n, d1]
    ya = torch.as_tensor(y).to(torch.float64)  # [n, d2]
    if xa.ndim != 2 or ya.ndim != 2 or xa.shape[0] != ya.shape[0]:
        raise MspgtError(
            f"linear_cka needs [n, d1] and [n, d2] with the same rows, got {tuple(xa.shape)}, {tuple(ya.shape)}",
            "pass token representations of the same tokens as rows",
        )
    xa = xa - xa.mean(dim=0, keepdim=True)  # [n, d1]
    ya = ya - ya.mean(dim=0, keepdim=True)  # [n, d2]
    cross = torch.linalg.matrix_norm(ya.T @ xa) ** 2
    return float(cross / (torch.linalg.matrix_norm(xa.T @ xa) * torch.linalg.matrix_norm(ya.T @ ya)))
