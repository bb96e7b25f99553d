"""dtype and extraction batch size sized from the model and the device (`auto`; our rules).

- dtype: float32 on the CPU; on CUDA float32 when the float32 weights take at most 1/8 of the GPU's memory
  (small models keep full precision: bf16 moved 1 - CKA by up to 0.1 on d = 64 test models), else bfloat16
  (float16 where the GPU has no bf16).
- extraction batch size: 32 sentences on the CPU; on CUDA as many whole groups as fit in half the free
  memory after loading, counting per sentence every block's attention maps, the residual stream h_0..h_L
  (float32 copies) and one MLP activation, at data.max_tokens; between one group and 512 sentences.
- the fixed cost of one decoder call, in padded tokens (`extraction.call_overhead_tokens`; how a batch is
  split into decoder calls: mspgt/extraction/extract.py `decoder_calls`): 64 on the CPU (measured on
  SmolLM2-135M, 2 threads: a 1-token forward took 46 ms, ~35 padded tokens' worth of a batch's forward;
  bench_boundary.py's fit of whole passes: 54-66 tokens); 1024 elsewhere (an estimate, not measured: a GPU's forward of a few
  padded tokens more costs almost nothing beside a call's kernel launches; `bench_boundary.py` fits it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

log = logging.getLogger(__name__)

CPU_BATCH = 32
MAX_BATCH = 512
CPU_CALL_OVERHEAD_TOKENS = 64
GPU_CALL_OVERHEAD_TOKENS = 1024


def parameter_count(cfg: DictConfig) -> int | None:
    """Parameters of a local checkpoint or hub model, from its config on the meta device (no weights read);
    None when the config cannot be read here."""
    where = cfg.get("local_path") or cfg.get("hub_id")
    if cfg.get("source") != "hub" or not where:
        return None
    try:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(str(Path(where).expanduser()) if cfg.get("local_path") else where)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        return sum(p.numel() for p in model.parameters())
    except Exception as err:  # decided at load time then
        log.debug("could not count the parameters of %s: %s", where, err)
        return None


def auto_dtype(device: torch.device, n_params: int | None) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32
    total = torch.cuda.get_device_properties(device).total_memory
    if n_params is not None and 4 * n_params <= total / 8:
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def auto_batch_size(loaded: Any, max_tokens: int, group_size: int) -> int:
    """Sentences per extraction forward pass (see the module doc); a multiple of group_size."""
    if loaded.device.type != "cuda":
        batch = CPU_BATCH
    else:
        config = loaded.model.config
        t, d, n_blocks = int(max_tokens), int(config.hidden_size), loaded.n_blocks
        heads = int(getattr(config, "num_attention_heads", 1) or 1)
        ffn = int(getattr(config, "intermediate_size", None) or 4 * d)
        width = torch.tensor([], dtype=loaded.dtype).element_size()
        per_sentence = (n_blocks * heads * t * t * width * 2  # attention maps (scores and weights)
                        + (n_blocks + 1) * t * d * 4 * 2  # h_0..h_L and their float32 copies
                        + t * ffn * width * 4)  # one MLP's activations
        free, _ = torch.cuda.mem_get_info(loaded.device)
        batch = min(MAX_BATCH, int(0.5 * free // per_sentence))
    batch = max(group_size, batch - batch % group_size)
    log.info("extraction batch size %d (auto, %s)", batch, loaded.device)
    return batch


def auto_call_overhead_tokens(device: torch.device) -> int:
    """The fixed cost of one decoder call in padded tokens, for `extraction.call_overhead_tokens=auto`."""
    return CPU_CALL_OVERHEAD_TOKENS if device.type == "cpu" else GPU_CALL_OVERHEAD_TOKENS
