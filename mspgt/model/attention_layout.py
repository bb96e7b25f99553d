"""Which keys each block's attention may see: the model's own attention layout (our definitions).

A block is `full` (causal: key k <= query q), `sliding` with a window w (q - w < k <= q, the w most recent
keys, the query itself included: what transformers' sliding-window masks allow) or `chunked` with a chunk
size c (k <= q in the same chunk, k // c == q // c; Llama-4 style). The layout comes from the model's
config, in this order:
1. `layer_types` (transformers >= 4.53: "full_attention" / "sliding_attention" / "chunked_attention"),
   the window from `sliding_window`, the chunk from `attention_chunk_size`;
2. GPT-Neo's `attention_layers` ("global" / "local"), the window from `window_size`;
3. `sliding_window` alone (Mistral, Mixtral, Phi3, Starcoder2): every block windowed, unless
   `use_sliding_window` is false;
4. otherwise every block is full.
`check_layout_against_weights` compares the declared layout with the support of real attention weights, so
a layout this module misreads fails loudly instead of being measured as attention drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mspgt.errors import MspgtError

KINDS = ("full", "sliding", "chunked")


@dataclass(frozen=True)
class BlockAttention:
    """One block's key layout: kind in KINDS, size = window or chunk length (None for full)."""

    kind: str = "full"
    size: int | None = None

    def __str__(self) -> str:
        return self.kind if self.size is None else f"{self.kind}:{self.size}"

    def key_mask(self, t: int, device: torch.device | str = "cpu") -> Tensor:
        """allowed[q, k] for T positions, before padding: [T, T] bool."""
        q = torch.arange(t, device=device)[:, None]  # [T, 1]
        k = torch.arange(t, device=device)[None, :]  # [1, T]
        allowed = k <= q  # [T, T] causal
        if self.kind == "sliding":
            allowed = allowed & (q - k < self.size)
        elif self.kind == "chunked":
            allowed = allowed & (k // self.size == q // self.size)
        return allowed


FULL = BlockAttention()


def _sized(kind: str, size: object, field: str, block: int) -> BlockAttention:
    if not isinstance(size, int) or size < 1:
        raise MspgtError(
            f"block {block} is {kind} attention but the config's {field} is {size!r}",
            f"a {kind} layer needs a positive integer {field} in the model's config.json",
        )
    return BlockAttention(kind, size)


def attention_layout(config: object, n_blocks: int) -> list[BlockAttention]:
    """The key layout of each of the `n_blocks` blocks, read from a Hugging Face config (see module doc)."""
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if layer_types:
        if len(layer_types) != n_blocks:
            raise MspgtError(
                f"config.layer_types names {len(layer_types)} layers, the model has {n_blocks} blocks",
                "fix layer_types in the model's config.json",
            )
        out = []
        for i, kind in enumerate(layer_types, start=1):
            if kind == "full_attention":
                out.append(FULL)
            elif kind == "sliding_attention":
                out.append(_sized("sliding", window, "sliding_window", i))
            elif kind == "chunked_attention":
                out.append(_sized("chunked", getattr(config, "attention_chunk_size", None), "attention_chunk_size", i))
            else:
                raise MspgtError(
                    f"block {i} has attention type {kind!r}, which mspgt cannot map to allowed keys",
                    "turn the attention signal off: fusion.signals.attention_drift=false",
                )
        return out
    attention_layers = getattr(config, "attention_layers", None)  # GPT-Neo
    if attention_layers and len(attention_layers) == n_blocks:
        size = getattr(config, "window_size", None)
        return [_sized("sliding", size, "window_size", i) if kind == "local" else FULL
                for i, kind in enumerate(attention_layers, start=1)]
    if window and getattr(config, "use_sliding_window", True) is not False:
        return [_sized("sliding", window, "sliding_window", i) for i in range(1, n_blocks + 1)]
    return [FULL] * n_blocks


def describe(layout: list[BlockAttention]) -> str:
    """A short text of a layout: 'full x 6' or 'sliding:4, full, sliding:4, full'."""
    if len(set(layout)) == 1:
        return f"{layout[0]} x {len(layout)}"
    return ", ".join(str(b) for b in layout)


def check_layout_against_weights(attentions: list[Tensor], layout: list[BlockAttention]) -> None:
    """Every block's attention weights (one sentence, [1, H, T, T]) lie inside its declared keys, and no
    declared key range is masked out wholesale (an undeclared window). Scattered exact zeros inside the
    layout (softmax underflow) are allowed."""
    for i, (att, spec) in enumerate(zip(attentions, layout, strict=True), start=1):
        seen = att[0].detach().float().amax(dim=0) > 0  # [T, T] a key some head gives mass to
        t = seen.shape[-1]
        declared = spec.key_mask(t, seen.device)  # [T, T]
        if (seen & ~declared).any():
            raise MspgtError(
                f"block {i} gives attention to keys outside its declared layout ({spec}), so mspgt misreads "
                "this model's attention layout",
                "turn the attention signal off (fusion.signals.attention_drift=false) and report the model",
            )
        q = torch.arange(t, device=seen.device)[:, None]
        k = torch.arange(t, device=seen.device)[None, :]
        distance = (q - k).expand(t, t)  # [T, T]
        unseen = declared & ~seen  # [T, T]
        if unseen.any():
            w = int(distance[unseen].min())
            band = declared & (distance >= w)  # [T, T] every declared key w or more back
            if w > 0 and int(band.sum()) >= 3 and not (seen & band).any():  # 3: one zero is an underflow
                raise MspgtError(
                    f"block {i} masks every key {w} or more positions back, but its config declares {spec} "
                    "attention: an undeclared sliding window would be measured as attention drift",
                    "declare the window in the model's config.json (sliding_window, layer_types), or turn the "
                    "attention signal off: fusion.signals.attention_drift=false",
                )
