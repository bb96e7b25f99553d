"""The clean condition of experiment=intervention, computed once and reused by every scale and sigma.

A study runs one model at three scales and several sigmas: every job samples the same clean condition (the
same prompts, settings and sampling seeds; the noise has its own stream) and scores it the same way. The
clean continuations and their per-prompt scores are stored in the cache, keyed by everything that makes them
(`clean_key`): the weights (control included), the prompts, every generation setting but the noise seed,
the metrics' settings, and what could change a sampled token (dtype, device, CPU capability, threads, torch
and transformers versions). A job that finds its key reuses the clean condition; a job that does not samples
and scores it and stores it (written atomically, so two jobs of a sweep that race write the same file).
`generation.reuse_clean=false` always samples it afresh. The paired design is unchanged: noised row (i, j)
is sampled with the same batch seed as the clean row (i, j) it is compared with (mspgt/interventions/
generation.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from omegaconf import DictConfig, OmegaConf

from mspgt.files import write_json_atomic
from mspgt.interventions.generation import Generated
from mspgt.model.loading import LoadedModel

log = logging.getLogger(__name__)

CLEAN_VERSION = 1  # bump when what a stored clean condition holds, or how it is made, changes
NOT_IN_KEY = ("noise_seed", "reuse_clean")  # generation settings that do not change the clean condition


@dataclass
class CleanCondition:
    """The clean continuations and their per-prompt scores."""

    generated: Generated
    scores: dict[str, np.ndarray]  # metric -> [n_prompts]
    reused: bool  # read from the cache (True) or sampled here (False)
    metrics_s: float = 0.0  # the time scoring it took here (0 when reused)


def clean_key(loaded: LoadedModel, prompts: list[str], gen: DictConfig, metrics: DictConfig) -> str:
    """sha256 of everything that makes the clean condition and its scores."""
    gen_settings = {k: v for k, v in OmegaConf.to_container(gen, resolve=True).items() if k not in NOT_IN_KEY}
    metric_settings = OmegaConf.to_container(metrics, resolve=True)
    metric_settings.pop("brittleness", None)  # which metrics enter brittleness does not change the scores
    what = {
        "version": CLEAN_VERSION,
        "weights_id": loaded.weights_id,
        "dtype": str(loaded.dtype),
        "device": loaded.device.type,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "prompts": prompts,
        "generation": gen_settings,
        "metrics": metric_settings,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def clean_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / "clean_conditions" / f"{key}.json"


def load_clean(path: Path, n_prompts: int, samples: int) -> CleanCondition | None:
    """The stored clean condition, or None where there is none or it does not have the expected shape."""
    try:
        r = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    conts = r.get("continuations")
    if (r.get("version") != CLEAN_VERSION or not isinstance(conts, list) or len(conts) != n_prompts
            or any(len(c) != samples for c in conts)):
        log.warning("ignoring the stored clean condition %s (another version or shape): sampling it again", path)
        return None
    scores = {m: np.array([np.nan if v is None else v for v in vals], dtype=float)
              for m, vals in r["scores"].items()}
    return CleanCondition(Generated(conts, int(r["new_tokens"]), float(r["seconds"])), scores, reused=True)


def store_clean(path: Path, clean: CleanCondition) -> None:
    """Write the clean condition to `path` (clean_path: its file name is its key)."""
    record: dict[str, Any] = {
        "version": CLEAN_VERSION, "key": path.stem, "continuations": clean.generated.continuations,
        "new_tokens": clean.generated.new_tokens, "seconds": clean.generated.seconds,
        "scores": {m: [float(v) for v in vals] for m, vals in clean.scores.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
