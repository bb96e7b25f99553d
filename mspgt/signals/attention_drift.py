"""Signal 3, attention drift (paper eq. 5): S_attn(l) = JS(A_l, A_{l-1}), over blocks l = 1..L.

A_l is block l's head-averaged attention distribution of each query over its allowed keys (real keys
k <= q, inside the block's window or chunk when its layout has one; padding never enters). Adjacent blocks
are compared on the keys both may see (see `attention_js_sums`). The per-group statistics are sums over
valid queries (a real token that sees at least 2 keys in every block), so a bootstrap resample is a
weighted sum / weighted count (docs/method.md, Signal 3).
Attention sinks (Xiao et al. 2024, arXiv 2309.17453): `drop_sink` drops the first real key (position 0
under right padding) and renormalises the rest.
Shapes: B sentences in a batch, H heads, T positions, L blocks, G groups, R resamples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mspgt.errors import MspgtError, choose
from mspgt.model.attention_layout import FULL, BlockAttention
from mspgt.signals.cka import group_weights

FIRST_BLOCK_CHOICES = ("replicate", "uniform")


def neg_entropy(p: Tensor, dim: int = -1) -> Tensor:
    """sum_k p_k ln p_k along `dim` (0 ln 0 = 0): minus the Shannon entropy, in nats."""
    return torch.special.xlogy(p, p).sum(dim=dim)


def js_divergence(
    p: Tensor, q: Tensor, dim: int = -1, neg_entropy_p: Tensor | None = None, neg_entropy_q: Tensor | None = None
) -> Tensor:
    """Jensen-Shannon divergence in nats along `dim` (0 log 0 = 0), so 0 <= JS <= ln 2 (Lin 1991).

    JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2 = H(m) - (H(p) + H(q)) / 2 with m = (p + q) / 2. The
    entropy form lets a caller pass -H(p), -H(q) it already has (each block's map is compared with the
    next block's too), so one pair costs one entropy instead of four cross terms.
    """
    if neg_entropy_p is None:
        neg_entropy_p = neg_entropy(p, dim)
    if neg_entropy_q is None:
        neg_entropy_q = neg_entropy(q, dim)
    js = (neg_entropy_p + neg_entropy_q) / 2 - neg_entropy((p + q) / 2, dim)
    return js.clamp(0.0, math.log(2.0))


def _allowed_keys(attention_mask: Tensor, drop_sink: bool, block: BlockAttention = FULL) -> Tensor:
    """allowed[b, q, k]: key k is real and the block's layout lets q see it (k <= q, inside its window or
    chunk), and k is not the sink with drop_sink. [B, T] -> [B, T, T]."""
    real = attention_mask.bool()  # [B, T]
    t = real.shape[1]
    layout = block.key_mask(t, real.device)  # [T, T]
    allowed = layout[None] & real[:, None, :] & real[:, :, None]  # [B, T, T]
    if drop_sink:
        first_real = real.int().argmax(dim=1)  # [B] position of the first real token
        keys = torch.arange(t, device=real.device)  # [T]
        allowed = allowed & (keys[None, :] != first_real[:, None])[:, None, :]  # [B, T, T]
    return allowed


def _uniform(allowed: Tensor, n_allowed: Tensor) -> Tensor:
    """The uniform distribution over each query's allowed keys: [B, T, T] float64 (zero rows stay zero)."""
    return allowed.to(torch.float64) / n_allowed.clamp(min=1).to(torch.float64)[..., None]  # [B, T, T]


def _restricted(averaged: Tensor, allowed: Tensor, n_allowed: Tensor) -> Tensor:
    """Restrict a head-averaged map to allowed keys and renormalise: [B, T, T] -> [B, T, T] float64.

    A row whose allowed keys carry no mass at all (underflow) becomes uniform over its allowed keys.
    """
    a = torch.where(allowed, averaged, 0.0)  # [B, T, T] (also removes NaN in padded rows)
    mass = a.sum(dim=-1, keepdim=True)  # [B, T, 1]
    has_mass = mass > 0  # [B, T, 1]
    renormalised = a / torch.where(has_mass, mass, 1.0)  # [B, T, T]
    return torch.where(has_mass, renormalised, _uniform(allowed, n_allowed))  # [B, T, T]


def _head_restricted(attention: Tensor, keys: Tensor) -> Tensor:
    """Each head's map restricted to `keys` [T, T] and renormalised, then averaged over heads:
    [B, H, T, T] -> [B, T, T] float64 (a head with no mass there contributes zeros)."""
    a = torch.where(keys, attention.to(torch.float64), 0.0)  # [B, H, T, T]
    mass = a.sum(dim=-1, keepdim=True)  # [B, H, T, 1]
    return (a / torch.where(mass > 0, mass, 1.0)).mean(dim=1)  # [B, T, T]


def attention_js_sums(
    attentions: Sequence[Tensor], attention_mask: Tensor, drop_sink: bool,
    layout: Sequence[BlockAttention] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sentence sums of the attention-drift JS over valid queries (paper eq. 5; our sums for the bootstrap).

    attentions: L tensors [B, H, T, T] (query x key), one per block; attention_mask [B, T] (1 = real token);
    layout: each block's allowed keys (mspgt.model.attention_layout; None = every block full causal).
    Returns js_sum [B, L] float64 (column l-1 = sum over valid queries of JS(A_l[q], A_{l-1}[q]) for l >= 2,
    column 0 = 0), first_uniform [B] float64 (sum of JS(A_1[q], uniform over q's allowed keys in block 1))
    and count [B] int64 (valid queries), on the device of the maps.

    Common support (our rule): blocks l-1 and l are compared on the keys BOTH may see: each head's map is
    restricted to them and renormalised, then averaged over heads (and the sink dropped, with drop_sink), so
    a sliding-window block next to a full one is not measured as drift (a windowed head whose scores equal a
    full head's gives exactly the full map restricted to its window and renormalised: JS 0). Blocks with
    the same layout compare their head averages over their own keys, as before. A query is valid when it is real and sees at least 2 keys in every block's allowed
    set, so every S(l) averages over the same queries. Blocks with equal layouts (the common case) reuse
    each map's restriction and entropy; alternating layouts (Gemma 2/3: sliding, full, sliding, ...) reuse
    each block's map on the keys it shares with its neighbours; only the previous block's maps are kept.
    """
    return attention_js_sums_variants(attentions, attention_mask, (drop_sink,), layout)[drop_sink]


def attention_js_sums_variants(
    attentions: Sequence[Tensor], attention_mask: Tensor, drop_sinks: Sequence[bool] = (False, True),
    layout: Sequence[BlockAttention] | None = None,
) -> dict[bool, tuple[Tensor, Tensor, Tensor]]:
    """`attention_js_sums` for several sink settings at once, sharing one head average per block
    (what extraction calls: both variants are cached in the one pass)."""
    if len(attentions) == 0:
        raise MspgtError(
            "no attention maps were given",
            "load the model with eager attention and output_attentions=True (need_attentions)",
        )
    if attention_mask.ndim != 2:
        raise MspgtError(
            f"attention_mask must be [B, T], got {tuple(attention_mask.shape)}", "pass the tokenizer's mask"
        )
    layout = list(layout) if layout is not None else [FULL] * len(attentions)
    if len(layout) != len(attentions):
        raise MspgtError(
            f"{len(attentions)} attention maps but a layout of {len(layout)} blocks",
            "pass the loaded model's attention_layout (one entry per block)",
        )
    b, t = attention_mask.shape
    device = attentions[0].device
    attention_mask = attention_mask.to(device)  # [B, T], where the maps are
    state = {}
    for drop_sink in drop_sinks:
        allowed = {spec: _allowed_keys(attention_mask, drop_sink, spec) for spec in dict.fromkeys(layout)}
        narrowest = torch.stack(list(allowed.values())).all(dim=0)  # [B, T, T] keys every block may see
        valid = attention_mask.bool() & (narrowest.sum(dim=-1) >= 2)  # [B, T]
        state[drop_sink] = {
            "allowed": allowed, "valid": valid, "valid_f": valid.to(torch.float64),
            "js_sum": torch.zeros(b, len(attentions), dtype=torch.float64, device=device),  # [B, L]
            "first_uniform": torch.zeros(b, dtype=torch.float64, device=device),  # [B]
            "previous": None,
            "previous_on_common": {},  # the previous block's map on the keys it shares with a differently laid-out block
        }
    for index, attention in enumerate(attentions):
        if attention.ndim != 4 or attention.shape[0] != b or attention.shape[2:] != (t, t):
            raise MspgtError(
                f"attention of block {index + 1} has shape {tuple(attention.shape)}, expected [{b}, H, {t}, {t}]",
                "pass the model's per-block attentions (eager attention, output_attentions=True)",
            )
        spec = layout[index]
        attention = attention.to(device)  # [B, H, T, T]
        averaged = attention.mean(dim=1, dtype=torch.float64)  # [B, T, T] head average
        for st in state.values():
            on_common: dict[frozenset, Tensor] = {}  # this block's maps on keys shared with a different layout
            own = st["allowed"][spec]  # [B, T, T]
            current = _restricted(averaged, own, own.sum(dim=-1))  # [B, T, T] on the block's own keys
            current_ne = neg_entropy(current)  # [B, T], reused when the next block has the same layout
            if st["previous"] is None:
                uniform = _uniform(own, own.sum(dim=-1))  # [B, T, T]
                js = js_divergence(current, uniform, neg_entropy_p=current_ne)  # [B, T]
                st["first_uniform"] = (js * st["valid_f"]).sum(dim=1)  # [B]
            else:
                prev_spec, prev_attention, previous, previous_ne = st["previous"]
                if prev_spec == spec:
                    js = js_divergence(current, previous, neg_entropy_p=current_ne, neg_entropy_q=previous_ne)
                else:  # different layouts: each head restricted to the keys both may see, then as usual
                    common = own & st["allowed"][prev_spec]  # [B, T, T]
                    n_common = common.sum(dim=-1)  # [B, T]
                    both = spec.key_mask(t, device) & prev_spec.key_mask(t, device)  # [T, T]
                    pair = frozenset((spec, prev_spec))  # the shared keys do not depend on the order
                    previous_map = st["previous_on_common"].get(pair)  # alternating layouts: computed last block
                    if previous_map is None:
                        previous_map = _restricted(_head_restricted(prev_attention, both), common, n_common)
                    current_map = _restricted(_head_restricted(attention, both), common, n_common)
                    js = js_divergence(current_map, previous_map)
                    on_common[pair] = current_map
                st["js_sum"][:, index] = (js * st["valid_f"]).sum(dim=1)  # [B]
            st["previous"] = (spec, attention, current, current_ne)
            st["previous_on_common"] = on_common
    return {
        k: (st["js_sum"], st["first_uniform"], st["valid"].sum(dim=1).to(torch.int64)) for k, st in state.items()
    }


def attention_drift(
    js_sum: np.ndarray,
    first_uniform: np.ndarray,
    count: np.ndarray,
    weights: np.ndarray | None = None,
    first_block: str = "replicate",
) -> np.ndarray:
    """S_attn(l) = mean JS(A_l, A_{l-1}) over valid queries, with group weights (paper eq. 5).

    js_sum [G, L], first_uniform [G], count [G]; weights [G] or [R, G] (bootstrap group counts; None = all
    ones) -> [L] or [R, L] = weighted sum / weighted count. Block 1 has no predecessor (our definitions):
    first_block="replicate" copies S_attn(2) into S_attn(1); "uniform" uses JS(A_1, uniform over the
    query's allowed keys). A resample whose weighted count is 0 gives NaN.
    """
    choose("attention first_block", first_block, FIRST_BLOCK_CHOICES, "fusion.attention.first_block")
    js_sum = np.asarray(js_sum, dtype=np.float64)
    first_uniform = np.asarray(first_uniform, dtype=np.float64)
    count = np.asarray(count, dtype=np.float64)
    if js_sum.ndim != 2 or first_uniform.shape != js_sum.shape[:1] or count.shape != js_sum.shape[:1]:
        raise MspgtError(
            f"attention statistics must be js_sum [G, L], first_uniform [G], count [G]; got "
            f"{js_sum.shape}, {first_uniform.shape}, {count.shape}",
            "pass CorpusStatistics.js_sum / js_first_uniform / js_count of one variant",
        )
    n_groups, n_blocks = js_sum.shape
    if count.sum() <= 0:
        raise MspgtError(
            "no query position saw at least 2 keys, so attention drift is undefined",
            "use longer sentences (data.max_tokens), or disable it: fusion.signals.attention_drift=false",
        )
    if first_block == "replicate" and n_blocks < 2:
        raise MspgtError(
            "first_block='replicate' needs at least 2 blocks",
            "use fusion.attention.first_block=uniform",
        )
    single = weights is None or np.ndim(weights) == 1
    w = group_weights(weights, n_groups)  # [R, G]
    with np.errstate(invalid="ignore", divide="ignore"):
        total = w @ count  # [R]
        drift = (w @ js_sum) / total[:, None]  # [R, L]
        if first_block == "replicate":
            drift[:, 0] = drift[:, 1]
        else:
            drift[:, 0] = (w @ first_uniform) / total
    return drift[0] if single else drift
