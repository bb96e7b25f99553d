"""Probe training time against extraction time, and what each change of the probe recipe bought (issue 13, item 1).

One run: the statistics of the configured job are extracted into a fresh cache (timed), then the probes (the
paper's one hidden layer of 128 units per state and task) are trained on that sample with
- the previous recipe (30 epochs, batch 512, lr 1e-3 constant, float32), twice (seeds 0 and 1: the seed-to-seed
  spread of F(l) is the noise floor any change is judged against);
- the previous recipe in bfloat16 (what the precision alone buys);
- the configured recipe (conf/probes/default.yaml) in float32 (what the schedule alone buys);
- the configured recipe (the default).
Printed per recipe: wall time, ratio to extraction time (target <= 0.3), and the held-out F(l) (mean over tasks
of macro F1, as the fused signal uses it) against the previous recipe: the largest drop and rise over states.

Usage: python benchmarks/bench_probes.py [--configured-only] [HYDRA_OVERRIDE ...]   (e.g. model=qwen25_05b)
--configured-only: the default recipe alone, twice (the ratio to extraction in ~1.5 min on the main job; no
reference row, so its F(l) columns are against its own first run).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
PREVIOUS = {"epochs": 30, "batch_size": 512, "lr": 1e-3, "schedule": "constant", "precision": "float32"}


def main() -> None:
    from mspgt.experiments.boundary import obtain_statistics
    from mspgt.signals.probes import task_f1, train_probes

    configured_only = "--configured-only" in sys.argv
    overrides = [a for a in sys.argv[1:] if a != "--configured-only"]
    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=["extraction.progress=false", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        user_cache = Path(os.environ.get("MSPGT_CACHE_DIR", Path.home() / ".cache" / "mspgt"))
        for sub in ("models", "tokenizers"):  # the dequantised model, not rebuilt
            if (user_cache / sub).is_dir():
                (Path(tmp) / sub).symlink_to(user_cache / sub)
        OmegaConf.update(cfg, "paths.cache_dir", tmp)
        stats, _, timings = obtain_statistics(cfg)
    extract_s = timings["extract_s"]
    p = cfg.probes
    configured = {k: p[k] for k in ("epochs", "batch_size", "lr", "schedule", "precision")}
    recipes = [
        ("previous recipe", PREVIOUS, 0),
        ("previous recipe, seed 1 (noise floor)", PREVIOUS, 1),
        ("previous recipe in bfloat16", {**PREVIOUS, "precision": "bfloat16"}, 0),
        ("configured recipe in float32", {**configured, "precision": "float32"}, 0),
        ("configured recipe (default)", configured, 0),
    ]
    if configured_only:
        recipes = [("configured recipe (default)", configured, 0), ("the same, again", configured, 0)]
    n_classes = {k: len(v) for k, v in stats.label_names.items()}
    g = stats.n_groups
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {cfg.model.name}: {stats.n_blocks} blocks; "
          f"probe sample train {stats.probe_train.features.shape}, held out {stats.probe_eval.features.shape}; "
          f"extraction {extract_s:.1f} s")
    print(f"configured recipe: {configured}\n")
    print("| recipe | seconds | probes / extraction | F(l) vs previous: largest drop | largest rise | mean F |")
    print("|---|---|---|---|---|---|")
    reference = None
    for name, recipe, seed in recipes:
        t = time.perf_counter()
        result = train_probes(stats.probe_train, stats.probe_eval, n_classes, hidden=p.hidden,
                              weight_decay=p.weight_decay, seed=seed, control_task=p.control_task, **recipe)
        seconds = time.perf_counter() - t
        per_task = task_f1(result, np.ones(g), g)
        f = np.mean([per_task[k] for k in result.tasks], axis=0)  # [L+1]
        if reference is None:
            reference = f
        d = f - reference
        print(f"| {name} | {seconds:.1f} | {seconds / extract_s:.3f} | {d.min():+.4f} | {d.max():+.4f} | "
              f"{f.mean():.4f} |", flush=True)


if __name__ == "__main__":
    main()
