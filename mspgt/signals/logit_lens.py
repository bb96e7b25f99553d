"""The logit lens (nostalgebraist 2020; Belrose et al. 2023, arXiv 2303.08112): what each state already
predicts when read through the model's OWN final norm and unembedding (the real Hugging Face modules, never a
copy). Per state h_l and token: KL(p_L || p_l) in bits, p_L the model's next-token distribution (the lens at
h_L, which is exactly the model's output, so KL = 0 there), and the entropy H(p_l) of the read-out (the entropy
lens). Computed in the pass on a bounded sample of tokens per sentence group (`rivals.logit_lens_tokens`,
evenly spread, position 0 left out): the unembedding (d x vocabulary per token and state) runs on the sample
only, once per chunk of groups (logit_lens_sums). Sums per group, so a bootstrap resample of groups is a
ratio of weighted sums."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from mspgt.errors import MspgtError

LN2 = math.log(2.0)


def final_norm_of(model: nn.Module) -> nn.Module:
    """The decoder's final norm (the module the model applies to h_L before its unembedding)."""
    decoder = model.get_decoder()
    for name in ("norm", "final_layer_norm", "ln_f", "final_layernorm"):
        module = getattr(decoder, name, None)
        if isinstance(module, nn.Module):
            return module
    raise MspgtError(f"{type(model).__name__}: no final norm found on its decoder",
                     "disable the logit lens (rivals.logit_lens=false) for this architecture")


def lens_reader(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """states [..., d] -> logits [..., V] float32 through the model's final norm and unembedding (with the
    config's final logit soft-capping where it has one): the model's own logits at h_L."""
    norm, unembed = final_norm_of(model), model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)

    def read(states: Tensor) -> Tensor:
        weight = unembed.weight
        logits = unembed(norm(states.to(weight.dtype))).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return read


def logit_lens_sums(states: Tensor, read: Callable[[Tensor], Tensor], rows_per_read: int = 512) -> Tensor:
    """[g, m, t, d] states of t sampled tokens in each of g groups -> [g, 2, m] float64: per group, sums over
    its tokens of KL(p_L || p_l) and of H(p_l), in bits.

    The unembedding is memory-bound one state at a time (its d x V weight is read for a few rows), so states
    are read in blocks of about `rows_per_read` rows across groups: the weight is read once per block. From a
    state's logits z (lse: their log-sum-exp), in few passes over the [rows, V] block:
    KL(p_L || p_l) = sum_v p_L log p_L - sum_v p_L z + lse(z) (as sum_v p_L = 1), H(p_l) = lse(z) - sum_v p_l z."""
    g, m, t, _ = states.shape
    z_final = read(states[:, -1].reshape(g * t, -1))  # [g t, V]: the model's own logits at h_L
    log_p_final = z_final - torch.logsumexp(z_final, -1, keepdim=True)
    p_final = log_p_final.exp()  # [g t, V]
    neg_entropy_final = (p_final * log_p_final).sum(-1)  # [g t]
    per_block = max(1, rows_per_read // max(1, g * t))  # states per read
    out = torch.zeros((g, 2, m), dtype=torch.float64, device=states.device)
    for lo in range(0, m, per_block):
        hi = min(m, lo + per_block)
        block = states[:, lo:hi].transpose(0, 1).reshape((hi - lo) * g * t, -1)  # [(state, group, token), d]
        z = read(block).view(hi - lo, g * t, -1)  # [s, g t, V]
        lse = torch.logsumexp(z, -1)  # [s, g t]
        kl = (neg_entropy_final + lse - torch.einsum("kv,skv->sk", p_final, z)).clamp_min(0.0)  # [s, g t] nats
        entropy = lse - torch.einsum("skv,skv->sk", torch.softmax(z, -1), z)  # [s, g t] nats
        if hi == m:  # the last state is the model's output itself: KL exactly 0
            kl[-1] = 0.0
        both = torch.stack([kl, entropy]).view(2, hi - lo, g, t).sum(-1)  # [2, s, g]
        out[:, :, lo:hi] = both.permute(2, 0, 1).double() / LN2
    return out


def lens_curves(sums: np.ndarray, counts: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """sums [G, 2, m] (KL, entropy), counts [G] tokens, weights None, [G] or [B, G] -> [2, m] or [B, 2, m]."""
    if weights is None:
        return sums.sum(0) / counts.sum()
    w = np.asarray(weights, dtype=float)
    return np.einsum("bg,gkm->bkm", np.atleast_2d(w), sums).reshape(*w.shape[:-1], *sums.shape[1:]) / (
        w @ counts)[..., None, None]
