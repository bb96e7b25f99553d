"""Layer-wise information curves: our estimators of the paper's mutual information (appendix A.4, eq. 28).

Matrix-based Renyi entropy (Giraldo, Rao & Principe 2014): for the n tokens of a sentence group and a kernel K
with unit diagonal, A = K / n has eigenvalues summing to 1, S_alpha(A) = log2(sum_i lambda_i^alpha) / (1 - alpha),
the joint of two states is the Hadamard product (A o B / tr(A o B)), and I(A; B) = S(A) + S(B) - S(A, B).
What we use by default, and why (docs/method.md, "Information curves and the eq. 28 test"; measured in
benchmarks/information_estimators.py):

- **Kernel** `recentred_cosine` (our choice): every token state is scaled to unit length, the group's mean
  direction is removed and the result scaled to unit length again; K_ij is the cosine of two such vectors.
  The first step makes the curves exactly invariant to per-token rescaling (what the next block's RMSNorm
  ignores, massive activations included); the recentring removes a common offset (anisotropy), which made the
  uncentred cosine kernel's entropy follow the offset instead of the tokens (1.2 bits lost to an offset of one
  typical token norm). `cosine` is the uncentred kernel (as Skean et al. 2025), kept as a setting.
- **Estimator** `u_statistic` (alpha = 2): S_2 = -log2 mean_{i != j} K_ij^2, the collision entropy with the n
  self-pairs left out. The plug-in S_2(A) = -log2(1/n + (n-1)/n mean_{i != j} K_ij^2) carries a 1/n term that
  makes independent states share up to log2 n bits; without it the estimate is unbiased for E[k(x, x')^2]
  (a U-statistic, as the unbiased HSIC of signals/cka.py) and independent states get ~0 bits at any n.
  `plugin` is Giraldo et al.'s estimator at any alpha (alpha = 1: von Neumann), kept as a setting.
- **Shuffle null**, computed in the same pass: the same MI with the tokens of the second state permuted within
  the group (a seeded permutation per group: token i of h_l paired with another token, mostly of another
  sentence), so no state shares information with another; what remains is the estimator's own floor.

What the default cannot do (tests/test_information.py): I(X; X) = S(X) holds only for kernels whose entries are
0 or 1 (I(X; X) = log2(E k^4 / (E k^2)^2) <= -log2 E k^2 = S(X), with equality iff k^2 in {0, 1}); and no
kernel is exactly invariant to both a common offset and per-token rescaling. So the eq. 28 test reads MI curves
only as their excess over the shuffle null (fusion/phase_transition.py).

Per group we keep, for the states h_0..h_L, S(h_l), I(h_0; h_l), I(h_{l-1}; h_l) and the two nulls (bits); a
curve is the mean over groups, so a bootstrap resample of groups is a weighted mean (method.md "Data unit").
The pass leaves position 0 (the attention sink) out of the kernels, always, and takes at most
`extraction.information.max_tokens` of a group's other tokens, evenly spread.
Usable information (Xu et al. 2020): I_V(h_l -> Y) = H_V(Y) - CE(probe on h_l), on the held-out words, with
H_V(Y) the cross-entropy of the add-one smoothed training-label marginal (the best input-free predictor).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mspgt.errors import MspgtError

# S(h_l); I(h_0; h_l); I(h_{l-1}; h_l) (l = 1..L; [0] = nan); the same two MI with h_l's tokens permuted
CURVES = ("entropy", "mi_input", "mi_adjacent", "mi_input_null", "mi_adjacent_null")
NULL_OF = {"mi_input": "mi_input_null", "mi_adjacent": "mi_adjacent_null"}
KERNELS = ("recentred_cosine", "cosine")
ESTIMATORS = ("u_statistic", "plugin")
SMALLEST_POTENTIAL = 1e-12  # mean K^2 below this (mutually orthogonal tokens) reads as 39.9 bits, not inf


@dataclass(frozen=True)
class InformationSettings:
    """extraction.information, checked (docs/method.md, "Information curves and the eq. 28 test")."""

    kernel: str = "recentred_cosine"
    estimator: str = "u_statistic"
    alpha: float = 2.0
    max_tokens: int = 128
    null_seed: int = 0

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise MspgtError(f"extraction.information.kernel={self.kernel}", f"use one of {', '.join(KERNELS)}")
        if self.estimator not in ESTIMATORS:
            raise MspgtError(f"extraction.information.estimator={self.estimator}",
                             f"use one of {', '.join(ESTIMATORS)}")
        if not self.alpha > 0:
            raise MspgtError(f"extraction.information.alpha={self.alpha}", "use alpha > 0 (1: von Neumann entropy)")
        if self.estimator == "u_statistic" and self.alpha != 2.0:
            raise MspgtError(f"extraction.information.alpha={self.alpha} with estimator=u_statistic",
                             "the U-statistic estimator is the collision entropy: set alpha=2, or "
                             "extraction.information.estimator=plugin for another order")
        if self.max_tokens < 2:
            raise MspgtError(f"extraction.information.max_tokens={self.max_tokens} is below 2",
                             "set extraction.information.max_tokens >= 2 (tokens per group), e.g. 128")
        if not 0 <= self.null_seed < 2**32:
            raise MspgtError(f"extraction.information.null_seed={self.null_seed} is out of range",
                             "set extraction.information.null_seed >= 0 and < 2**32, e.g. 0")

    @classmethod
    def from_config(cls, info: Any) -> InformationSettings | None:
        """extraction.information -> the settings (None: disabled), checked before any long work."""
        if info is None:
            return None
        enabled = info.get("enabled", True)
        if not isinstance(enabled, bool):
            raise MspgtError(f"extraction.information.enabled={enabled!r} is not true or false",
                             "set extraction.information.enabled=true or extraction.information.enabled=false")
        if not enabled:
            return None
        window = info.get("kink_window", 3)  # read by the eq. 28 test after the pass; checked here, before it
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise MspgtError(f"extraction.information.kink_window={window!r} is not an integer >= 1",
                             "set extraction.information.kink_window to the blocks on each side of a boundary, "
                             "e.g. `extraction.information.kink_window=3`")
        fields = {k: info[k] for k in ("kernel", "estimator", "alpha", "max_tokens", "null_seed") if k in info}
        if "alpha" in fields:
            try:
                fields["alpha"] = float(fields["alpha"])
            except (TypeError, ValueError):
                fields["alpha"] = math.nan
            if not math.isfinite(fields["alpha"]):
                raise MspgtError(f"extraction.information.alpha={info['alpha']!r} is not a finite number",
                                 "set extraction.information.alpha=2 (the collision entropy; 1: von Neumann)")
        for k in ("max_tokens", "null_seed"):
            if k in fields and (not isinstance(fields[k], int) or isinstance(fields[k], bool)):
                raise MspgtError(f"extraction.information.{k}={fields[k]!r} is not an integer",
                                 f"set extraction.information.{k} to an integer, e.g. "
                                 f"`extraction.information.{k}={128 if k == 'max_tokens' else 0}`")
        return cls(**fields)

    def key(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        kernel = ("cosine kernel of token states scaled to unit length, recentred on the group mean and rescaled "
                  "(ours)" if self.kernel == "recentred_cosine" else "cosine kernel of the token states")
        entropy = ("collision entropy S_2 = -log2 mean_{i!=j} K_ij^2 (self-pairs left out: unbiased for E k^2)"
                   if self.estimator == "u_statistic" else
                   f"matrix-based Renyi entropy of order {self.alpha:g} (plug-in, Giraldo et al. 2014)")
        return (f"{entropy} of the {kernel}, per sentence group of at most {self.max_tokens} tokens (position 0 "
                "left out); joint by Hadamard product; I = S(X) + S(Y) - S(X, Y); shuffle null: the same MI with "
                "h_l's tokens permuted within the group (seeded); V-information H_V(Y) - held-out probe "
                "cross-entropy (Xu et al. 2020): our estimators of the paper's mutual information")


def token_kernels(states: Tensor, kernel: str = "recentred_cosine") -> Tensor:
    """[m, n, d] token states -> [m, n, n] float64 kernel matrices with an exactly unit diagonal.
    The product runs in the states' precision (at least float32: the costly step), the rest in float64."""
    x = states if states.dtype in (torch.float32, torch.float64) else states.float()  # [m, n, d]
    unit = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-30)  # [m, n, d]
    if kernel == "recentred_cosine":
        unit = unit - unit.mean(dim=1, keepdim=True)  # [m, n, d]
        unit = unit / unit.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    gram = (unit @ unit.transpose(-1, -2)).to(torch.float64)  # [m, n, n]
    gram.diagonal(dim1=-2, dim2=-1).fill_(1.0)  # exactly unit diagonal (rounding)
    return gram


def normalised_grams(states: Tensor, kernel: str = "cosine") -> Tensor:
    """[m, n, d] -> [m, n, n] trace-1 matrices A = K / n (the plug-in estimator's input)."""
    return token_kernels(states, kernel) / states.shape[1]


def renyi_entropy(grams: Tensor, alpha: float) -> Tensor:
    """[k, n, n] trace-1 PSD matrices -> [k] plug-in matrix-based Renyi entropies in bits."""
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


def _u_entropies(squared: Tensor, squared_perm: Tensor) -> Tensor:
    """U-statistic collision entropies from the squared kernels K^2 [m, n, n] (and with h_l's tokens permuted):
    rows entropy, joint (h_0, h_l), joint (h_{l-1}, h_l) and the same two joints permuted -> [5, m] (bits).
    Off-diagonal means of K^2 and of K_a^2 o K_b^2: the diagonal entries are all 1, so each is (sum - n)."""
    m, n = squared.shape[0], squared.shape[1]
    flat, flat_perm = squared.reshape(m, -1), squared_perm.reshape(m, -1)  # [m, n^2]
    pairs = n * (n - 1)

    def bits(total: Tensor) -> Tensor:
        return -torch.log2(((total - n) / pairs).clamp_min(SMALLEST_POTENTIAL))

    entropy = bits(flat.sum(-1))  # [m]
    joint_input = bits(flat @ flat[0])  # [m]: sum K_0^2 K_l^2
    joint_adjacent = bits((flat[:-1] * flat[1:]).sum(-1))  # [m - 1]
    null_input = bits(flat_perm @ flat[0])  # [m]
    null_adjacent = bits((flat[:-1] * flat_perm[1:]).sum(-1))  # [m - 1]
    return entropy, joint_input, joint_adjacent, null_input, null_adjacent


def _plugin_entropies(kernels: Tensor, kernels_perm: Tensor, alpha: float) -> tuple[Tensor, ...]:
    n, m = kernels.shape[1], kernels.shape[0]
    a, ap = kernels / n, kernels_perm / n
    h = renyi_entropy(torch.cat([a, hadamard_joint(a[:1].expand(m, -1, -1), a), hadamard_joint(a[:-1], a[1:]),
                                 hadamard_joint(a[:1].expand(m, -1, -1), ap), hadamard_joint(a[:-1], ap[1:])]),
                      alpha)
    return h[:m], h[m : 2 * m], h[2 * m : 3 * m - 1], h[3 * m - 1 : 4 * m - 1], h[4 * m - 1 :]


def null_permutation(n: int, group: int, seed: int = 0) -> np.ndarray:
    """The shuffle null's pairing for a group of n >= 2 tokens: a random n-cycle (token sigma_i paired with
    sigma_{i+1}), so no token keeps its own partner; integer PCG64 draws, the same on every machine."""
    sigma = np.random.default_rng([seed, group]).permutation(n)
    perm = np.empty(n, dtype=np.int64)
    perm[sigma] = np.roll(sigma, -1)
    return perm


def group_information_tensor(states: Tensor, settings: InformationSettings | None = None,
                             perm: np.ndarray | None = None) -> Tensor:
    """The curves of one group as one [len(CURVES), m] float64 tensor (rows in CURVES order) on the states'
    device: the pass keeps it there until its chunk ends (no host sync per group). states [m, n, d];
    perm: the shuffle null's pairing (null_permutation(n, 0) when None)."""
    s = settings or InformationSettings()
    if states.ndim != 3 or states.shape[1] < 2:
        raise MspgtError(f"group_information needs states [m, n >= 2, d], got {tuple(states.shape)}",
                         "use larger sentence groups (bootstrap.group_size) or longer sentences")
    n = states.shape[1]
    order = torch.as_tensor(null_permutation(n, 0, s.null_seed) if perm is None else perm, device=states.device)
    kernels = token_kernels(states, s.kernel)  # [m, n, n]
    kernels_perm = kernels[:, order][:, :, order]  # [m, n, n]: h_l's tokens permuted
    if s.estimator == "u_statistic":
        parts = _u_entropies(kernels.square(), kernels_perm.square())
    else:
        parts = _plugin_entropies(kernels, kernels_perm, s.alpha)
    entropy, joint_input, joint_adjacent, null_input, null_adjacent = parts
    nan = torch.full((1,), float("nan"), dtype=entropy.dtype, device=entropy.device)
    pair = entropy[:-1] + entropy[1:]
    return torch.stack([entropy, entropy[0] + entropy - joint_input, torch.cat([nan, pair - joint_adjacent]),
                        entropy[0] + entropy - null_input, torch.cat([nan, pair - null_adjacent])])


def group_information(states: Tensor, settings: InformationSettings | None = None,
                      perm: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The curves of `group_information_tensor` as [m] arrays by name (bits; index 0 of the adjacent curves is
    nan: h_0 has no predecessor)."""
    rows = group_information_tensor(states, settings, perm).cpu().numpy()
    return dict(zip(CURVES, rows, strict=True))


def weighted_curves(per_group: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Mean over groups: per_group [G, m], weights None, [G] or [B, G] -> [m] or [B, m]."""
    if weights is None:
        return per_group.mean(0)
    w = np.asarray(weights, dtype=float)
    return (w @ per_group) / w.sum(-1, keepdims=True)


def label_marginal_ce(train_labels: np.ndarray, eval_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """[N_eval] -log q(y) of each held-out label under the add-one smoothed training-label marginal q
    (nan where unlabelled): the cross-entropy of the best input-free predictor, H_V(Y) (Xu et al. 2020).
    A class unseen in training costs ln(N + C) nats (N training labels, C classes)."""
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
    weights None, [n_groups] or [B, n_groups] -> [L+1] or [B, L+1]; nan where the groups drawn hold no labelled
    word."""
    ok = np.isfinite(prior_ce)
    gi = group_index[ok]
    prior = np.bincount(gi, weights=prior_ce[ok], minlength=n_groups)  # [G]
    count = np.bincount(gi, minlength=n_groups).astype(float)  # [G]
    probe = np.stack([np.bincount(gi, weights=probe_ce[ok, j], minlength=n_groups)
                      for j in range(probe_ce.shape[1])], 1)  # [G, L+1]
    w = np.ones(n_groups) if weights is None else np.asarray(weights, dtype=float)
    gain = (w @ (prior[:, None] - probe))  # [L+1] or [B, L+1]
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample without labelled words: nan, undefined
        return gain / (w @ count)[..., None] / np.log(2.0)
