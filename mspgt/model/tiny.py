"""Tiny random-weight models of real Hugging Face architectures, for fast plumbing tests (`model=tiny
model.architecture=...`). Results on random weights prove plumbing, never science.

Every architecture is built by transformers' own config and model classes from `model.tiny` (hidden size,
layers, heads, ...) plus what that architecture needs beyond the common fields (ARCHITECTURES below):
GPT-2 names its sizes differently; Gemma needs a head_dim; windowed families get a short sliding window
so that sentences longer than the window exercise it; MoE families get a few small experts. A field set in
`model.tiny` wins over these defaults (`+model.tiny.moe_intermediate_size=396` for an MoE of a real model's
proportions in a benchmark).
"""

from __future__ import annotations

from typing import Any

from mspgt.errors import MspgtError

# architecture -> (transformers model_type, extra config fields). Windows of 4 tokens: data.max_tokens in the
# tests is 24, so most queries lie outside a window.
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", {}),
    "qwen2": ("qwen2", {}),
    "mistral": ("mistral", {"sliding_window": 4}),
    "gemma2": ("gemma2", {"sliding_window": 4, "head_dim": 16}),  # alternating sliding / full
    "gemma3": ("gemma3_text", {"sliding_window": 4, "head_dim": 16, "layer_types": "gemma3"}),
    "phi3": ("phi3", {"pad_token_id": None, "sliding_window": 8}),  # every block windowed (Phi-3: 2047)
    "olmo2": ("olmo2", {}),
    "gpt_neox": ("gpt_neox", {}),
    "gpt2": ("gpt2", {}),
    "qwen2_moe": ("qwen2_moe", {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                "shared_expert_intermediate_size": 64}),
}
TINY_ARCHITECTURES = tuple(ARCHITECTURES)


def _gemma3_layer_types(n: int) -> list[str]:
    """Two sliding layers, then a full one (Gemma 3's 5:1 pattern, shortened so a 6-block model has both)."""
    return ["full_attention" if i % 3 == 2 else "sliding_attention" for i in range(n)]


SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "max_position_embeddings")


def check_tiny_shape(tiny: dict[str, Any]) -> None:
    """The sizes in model.tiny make a model: positive integers, heads that divide the hidden size and key/value
    heads that divide the heads; else one message naming the key (not transformers' traceback)."""
    for key in SHAPE_KEYS:
        v = tiny.get(key)
        if key in tiny and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise MspgtError(f"model.tiny.{key}={v!r} is not a positive integer",
                             f"set model.tiny.{key} to an integer >= 1, e.g. `model.tiny.{key}=4`")
    hidden, heads = tiny.get("hidden_size"), tiny.get("num_attention_heads")
    if hidden and heads and hidden % heads:
        raise MspgtError(f"model.tiny.hidden_size={hidden} is not a multiple of model.tiny.num_attention_heads={heads}",
                         f"set model.tiny.hidden_size to a multiple of {heads}, e.g. `model.tiny.hidden_size={heads * 16}`")
    kv = tiny.get("num_key_value_heads")
    if heads and kv and heads % kv:
        raise MspgtError(f"model.tiny.num_attention_heads={heads} is not a multiple of model.tiny.num_key_value_heads={kv}",
                         f"set model.tiny.num_key_value_heads to a divisor of {heads}, e.g. 1")


def tiny_config_fields(architecture: str, tiny: dict[str, Any], vocab_size: int) -> tuple[str, dict[str, Any]]:
    """The transformers model_type and config fields of a tiny `architecture` model."""
    if architecture not in ARCHITECTURES:
        raise MspgtError(
            f"tiny model architecture {architecture!r} is not supported",
            f"use model.architecture= one of {list(TINY_ARCHITECTURES)}",
        )
    check_tiny_shape(tiny)
    model_type, extra = ARCHITECTURES[architecture]
    fields = {**extra, **tiny, "vocab_size": vocab_size}  # model.tiny wins (e.g. +model.tiny.num_experts=8)
    if fields.get("layer_types") == "gemma3":
        fields["layer_types"] = _gemma3_layer_types(int(tiny["num_hidden_layers"]))
    if model_type == "gpt2":  # GPT-2's own names; no GQA, no separate intermediate size field
        fields = {"n_embd": tiny["hidden_size"], "n_layer": tiny["num_hidden_layers"],
                  "n_head": tiny["num_attention_heads"], "n_inner": tiny.get("intermediate_size"),
                  "n_positions": tiny.get("max_position_embeddings", 256), "vocab_size": vocab_size}
    if model_type == "gpt_neox":
        fields.pop("num_key_value_heads", None)
    return model_type, fields
