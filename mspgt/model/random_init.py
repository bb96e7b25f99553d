"""The `random_init` control (docs/controls.md): the model's own architecture, config and tokenizer, with
weights drawn by the architecture's own initialiser, so any structure the trained weights learnt is gone.

How transformers initialises (read from its source): `AutoModelForCausalLM.from_config(config)` builds the
modules, then `PreTrainedModel.post_init()` -> `init_weights()` applies the class's `_init_weights` to every
module (for Llama/Qwen2: Linear and Embedding weights ~ N(0, config.initializer_range), biases 0, RMSNorm
weights 1) and ties the output embedding where `tie_word_embeddings` says so. We call exactly that, under
`torch.manual_seed(seed)` inside a forked RNG (the caller's global RNG is untouched), in the run's dtype.
No weights file is read: the config comes from the checkpoint's config.json, the hub, or the GGUF metadata
(transformers reads it without dequantising a tensor), so it works for every model source. The tiny
random models (tiny.py) are built the same way, so `random_init` with control.seed = model.seed gives a tiny
model's very weights (a test).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def random_weights(config: Any, seed: int, dtype: torch.dtype, attn: str, with_attention: Any) -> torch.nn.Module:
    """A causal LM of `config` with weights from the architecture's own initialiser under `seed`."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = with_attention(lambda a: AutoModelForCausalLM.from_config(config, attn_implementation=a, dtype=dtype),
                               attn, type(config).__name__.removesuffix("Config"))
    log.info("random_init control: %s weights drawn by its own initialiser (seed %d), no weights file read",
             type(model).__name__, seed)
    return model


def gguf_config(gguf: Path) -> Any:
    """The transformers config of a GGUF file, read from its metadata (no tensor is dequantised)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


__all__ = ["gguf_config", "random_weights"]
