"""Layer-wise information curves: our estimators of the paper's mutual information (appendix A.4, eq. 28).

Matrix-based Renyi entropy (Giraldo, Rao & Principe 2014; Yu et al. 2019): for the n tokens of a sentence
group, the normalised Gram matrix A = K / tr K of a kernel K with unit diagonal (here the cosine kernel,
K_ij = <x_i, x_j> / (|x_i| |x_j|): the linear kernel of the normalised token states, so the massive-activation
scale of a state does not enter) has eigenvalues lambda_i >= 0 summing to 1, and

    S_alpha(A) = log2(sum_i lambda_i^alpha) / (1 - alpha)     (alpha -> 1: -sum_i lambda_i log2 lambda_i),
    S_alpha(A, B) = S_alpha(A o B / tr(A o B))                (Hadamard product: the joint),
    I_alpha(A; B) = S_alpha(A) + S_alpha(B) - S_alpha(A, B).

Per group we keep, for the states h_0..h_L, S(h_l), I(h_0; h_l) and I(h_{l-1}; h_l) (bits); a curve is the
mean over groups, so a bootstrap resample of groups is a weighted mean (method.md "Data unit").
Usable information (Xu et al. 2020): I_V(h_l -> Y) = H_V(Y) - CE(probe on h_l), on the held-out words, with
H_V(Y) the cross-entropy of the training-label marginal (the best input-free predictor), per held-out group.
Position 0 (the attention sink) is left out of the Gram matrices by default (our choice).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mspgt.errors import MspgtError

CURVES = ("entropy", "mi_input", "mi_adjacent")  # S(h_l); I(h_0; h_l); I(h_{l-1}; h_l) (l = 1..L; [0] = nan)
ESTIMATOR = ("matrix-based Renyi entropy of the cosine-kernel token Gram matrix per sentence group, joint by "
             "Hadamard product (Giraldo, Rao & Principe 2014); V-information H_V(Y) - held-out probe "
             "cross-entropy (Xu et al. 2020): our estimators of the paper's mutual information")


def check_alpha(alpha: float) -> float:
    if not alpha > 0:
        raise MspgtError(f"extraction.information.alpha={alpha}", "use alpha > 0 (1: von Neumann entropy)")
    return float(alpha)


def normalised_grams(states: Tensor) -> Tensor:
    """[m, n, d] token states -> [m, n, n] float64 cosine-kernel Gram matrices divided by n (trace 1).
    The product runs in the states' precision (at least float32: the costly step), the rest in float64."""
    x = states if states.dtype in (torch.float32, torch.float64) else states.float()  # [m, n, d]
    unit = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-30)  # [m, n, d]
    gram = (unit @ unit.transpose(-1, -2)).to(torch.float64)  # [m, n, n]
    gram.diagonal(dim1=-2, dim2=-1).fill_(1.0)  # exactly unit diagonal (rounding), so the trace is exactly 1
    return gram / x.shape[1]


def renyi_entropy(grams: Tensor, alpha: float) -> Tensor:
    """[k, n, n] trace-1 PSD matrices -> [k] matrix-based Renyi entropies in bits."""
    if alpha == 2.0:  # sum lambda^2 = ||A||_F^2: no eigendecomposition
        return -torch.log2(grams.square().sum(dim=(-2, -1)))
    lam = torch.linalg.eigvalsh(grams).clamp_min(0.0)  # [k, n]
    lam = lam / lam.sum(-1, keepdim=True)  # [k, n] (rounding)
    if abs(alpha - 1.0) < 1e-12:
        return -(torch.special.xlogy(lam, lam)).sum(-1) / np.log(2.0)
    return torch.log2(lam.pow(alpha).sum(-1)) / (1.0 - alpha)


def hadamard_joint(a: Tensor, b: Tensor) -> Tensor:
    """Normalised joint Gram matrices A o B / tr(A o B): [k, n, n] each -> [k, n, n]."""
    joint = a * b  # [k, n, n]
    return joint / joint.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None]


def group_information(states: Tensor, alpha: float = 1.0) -> dict[str, np.ndarray]:
    """S(h_l), I(h_0; h_l), I(h_{l-1}; h_l) of one group's tokens: states [m, n, d] -> three [m] arrays (bits;
    mi_adjacent[0] = nan: h_0 has no predecessor)."""
    rows = group_information_tensor(states, alpha).cpu().numpy()  # [3, m]
    return dict(zip(CURVES, rows, strict=True))


def group_information_tensor(states: Tensor, alpha: float = 1.0) -> Tensor:
    """The curves of `group_information` as one [3, m] float64 tensor (rows in CURVES order) on the states'
    device: the pass keeps it there until its chunk ends (no host sync per group)."""
    if states.ndim != 3 or states.shape[1] < 2:
        raise MspgtError(f"group_information needs states [m, n >= 2, d], got {tuple(states.shape)}",
                         "use larger sentence groups (bootstrap.group_size) or longer sentences")
    grams = normalised_grams(states)  # [m, n, n]
    m = grams.shape[0]
    joints = torch.cat([hadamard_joint(grams[:1].expand(m, -1, -1), grams),  # (h_0, h_l), l = 0..L
                        hadamard_joint(grams[:-1], grams[1:])])  # (h_{l-1}, h_l), l = 1..L
    h = renyi_entropy(torch.cat([grams, joints]), alpha)  # [3m - 1]
    entropy, joint_input, joint_adjacent = h[:m], h[m : 2 * m], h[2 * m :]
    nan = torch.full((1,), float("nan"), dtype=h.dtype, device=h.device)
    mi_adjacent = torch.cat([nan, entropy[:-1] + entropy[1:] - joint_adjacent])  # [m]
    return torch.stack([entropy, entropy[0] + entropy - joint_input, mi_adjacent])  # [3, m]


def weighted_curves(per_group: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Mean over groups: per_group [G, m], weights None, [G] or [B, G] -> [m] or [B, m]."""
    if weights is None:
        return per_group.mean(0)
    w = np.asarray(weights, dtype=float)
    return (w @ per_group) / w.sum(-1, keepdims=True)


def label_marginal_ce(train_labels: np.ndarray, eval_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """[N_eval] -log q(y) of each held-out label under the add-one smoothed training-label marginal q
    (nan where unlabelled): the cross-entropy of the best input-free predictor, H_V(Y) (Xu et al. 2020)."""
    counts = np.bincount(train_labels[train_labels >= 0], minlength=n_classes).astype(float) + 1.0
    q = counts / counts.sum()
    out = np.full(eval_labels.shape, np.nan)
    ok = eval_labels >= 0
    out[ok] = -np.log(q[eval_labels[ok]])
    return out


def v_information(prior_ce: np.ndarray, probe_ce: np.ndarray, group_index: np.ndarray, n_groups: int,
                  weights: np.ndarray | None = None) -> np.ndarray:
    """I_V(h_l -> Y) in bits = (sum of prior CE - sum of probe CE) / labelled words, over held-out groups.

    prior_ce [N] and probe_ce [N, L+1] (nats, nan where unlabelled), group_index [N] in 0..n_groups-1,
    weights None, [n_groups] or [B, n_groups] -> [L+1] or [B, L+1]."""
    ok = np.isfinite(prior_ce)
    gi = group_index[ok]
    prior = np.bincount(gi, weights=prior_ce[ok], minlength=n_groups)  # [G]
    count = np.bincount(gi, minlength=n_groups).astype(float)  # [G]
    probe = np.stack([np.bincount(gi, weights=probe_ce[ok, j], minlength=n_groups)
                      for j in range(probe_ce.shape[1])], 1)  # [G, L+1]
    w = np.ones(n_groups) if weights is None else np.asarray(weights, dtype=float)
    gain = (w @ (prior[:, None] - probe))  # [L+1] or [B, L+1]
    return gain / (w @ count)[..., None] / np.log(2.0)
