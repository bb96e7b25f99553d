"""Block influence (ShortGPT, Men et al. 2024; the angular distance of Gromov et al., ICLR 2025): how much a
block changes the residual stream, BI(l) = mean over tokens of 1 - cos(h_{l-1}, h_l), l = 1..L. Layer-pruning
work reads a low BI as "this block can go". Here it is a rival account of layer structure, computed in the
same pass per sentence group (sums over the group's tokens, position 0 left out), so a bootstrap resample of
groups is a ratio of weighted sums."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def group_block_influence(rows: Tensor) -> Tensor:
    """[m, n, d] states h_0..h_L of a group's tokens -> [L] float64 sums over the n tokens of
    1 - cos(h_{l-1}, h_l)."""
    x = rows if rows.dtype in (torch.float32, torch.float64) else rows.float()
    cos = torch.nn.functional.cosine_similarity(x[:-1], x[1:], dim=-1, eps=1e-30)  # [L, n]
    return (1.0 - cos.to(torch.float64)).sum(-1)


def block_influence(sums: np.ndarray, counts: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """BI over groups: sums [G, L], counts [G] tokens, weights None, [G] or [B, G] -> [L] or [B, L]."""
    if weights is None:
        return sums.sum(0) / counts.sum()
    w = np.asarray(weights, dtype=float)
    return (w @ sums) / (w @ counts)[..., None]
