"""Probe training time against extraction time, and held-out F(l) against the seed-to-seed spread (issues 13, 25).

One run: the statistics of the configured job are extracted into a fresh cache (timed), then the probes (the
paper's one hidden layer of 128 units per state and task) are trained on that sample with
- the reference recipe (default: the configured one) at training seeds 0..R-1 (--ref-seeds R): the spread of
  F(l) over these seeds, per state, is the noise floor any other recipe is judged against;
- the reference recipe in bfloat16, only where the CPU multiplies bfloat16 natively (emulated, it runs at
  ~2 GFLOP/s on an AVX2 CPU: minutes);
- every --recipe given (k=v,k=v over epochs, batch_size, lr, schedule, precision), at training seed 0.
Printed per row: wall time, ratio to extraction time (target <= 0.3), the largest per-state |F(l) - mean of the
reference seeds'| and whether it lies within the reference's seed-to-seed spread (max over states of the range
over seeds), and mean F. F(l) is the mean over tasks of held-out macro F1, as the fused signal uses it.

Usage: python benchmarks/bench_probes.py [--configured-only] [--ref-seeds 3] [--recipe epochs=4,batch_size=256 ...]
       [HYDRA_OVERRIDE ...]        (e.g. model=qwen25_05b)
--configured-only: the configured recipe alone, twice (its ratio to extraction in ~1.5 min on the main job).
An AVX2-only CPU can be emulated on an AVX512 one (both extraction and probes run under it):
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/bench_probes.py
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
KEYS = ("epochs", "batch_size", "lr", "schedule", "precision")


def parse_recipe(text: str, base: dict) -> dict:
    """'epochs=4,batch_size=256' over `base`."""
    out = dict(base)
    for part in filter(None, text.split(",")):
        k, v = part.split("=")
        if k not in KEYS:
            raise SystemExit(f"--recipe key {k!r} is not one of {KEYS}")
        out[k] = type(base[k])(v) if not isinstance(base[k], str) else v
    return out


def main() -> None:
    from mspgt.experiments.boundary import obtain_statistics
    from mspgt.signals.probes import resolve_precision, task_f1, train_probes

    ap = argparse.ArgumentParser()
    ap.add_argument("--configured-only", action="store_true")
    ap.add_argument("--ref-seeds", type=int, default=3)
    ap.add_argument("--recipe", action="append", default=[])
    args, overrides = ap.parse_known_args()
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
    configured = {k: p[k] for k in KEYS}
    rows: list[tuple[str, dict, int, bool]] = []  # name, recipe, training seed, is a reference seed
    if args.configured_only:
        rows = [("configured recipe", configured, 0, True), ("the same, again", configured, 0, True)]
    else:
        rows += [(f"reference (configured), seed {s}", configured, s, True) for s in range(args.ref_seeds)]
        if resolve_precision("auto", "cpu") == "bfloat16":
            rows.append(("reference in bfloat16", {**configured, "precision": "bfloat16"}, 0, False))
        rows += [(f"recipe {r}", parse_recipe(r, configured), 0, False) for r in args.recipe]
    n_classes = {k: len(v) for k, v in stats.label_names.items()}
    g = stats.n_groups
    print(f"{platform.processor() or platform.machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()} (ATEN_CPU_CAPABILITY="
          f"{os.environ.get('ATEN_CPU_CAPABILITY', '-')}, ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '-')}, "
          f"MKL_ENABLE_INSTRUCTIONS={os.environ.get('MKL_ENABLE_INSTRUCTIONS', '-')}); {cfg.model.name}: "
          f"{stats.n_blocks} blocks; probe sample train {stats.probe_train.features.shape}, held out "
          f"{stats.probe_eval.features.shape}; extraction {extract_s:.1f} s")
    print(f"configured recipe: {configured}\n", flush=True)
    results = []
    for name, recipe, seed, _ in rows:
        t = time.perf_counter()
        result = train_probes(stats.probe_train, stats.probe_eval, n_classes, hidden=p.hidden,
                              weight_decay=p.weight_decay, seed=seed, control_task=p.control_task, **recipe)
        seconds = time.perf_counter() - t
        per_task = task_f1(result, np.ones(g), g)
        results.append((seconds, np.mean([per_task[k] for k in result.tasks], axis=0)))  # F(l) [L+1]
        print(f"  {name}: {seconds:.1f} s", flush=True)
    ref = np.stack([f for (_, f), row in zip(results, rows, strict=True) if row[3]])  # [R, L+1]
    spread = float(np.max(ref.max(0) - ref.min(0)))
    print(f"\nreference seed-to-seed spread of F(l): {spread:.4f} (max over states of the range over "
          f"{ref.shape[0]} seeds)\n")
    print("| recipe | seconds | probes / extraction | max abs F(l) - reference mean | within spread | mean F |")
    print("|---|---|---|---|---|---|")
    for (name, _, _, _), (seconds, f) in zip(rows, results, strict=True):
        d = float(np.max(np.abs(f - ref.mean(0))))
        print(f"| {name} | {seconds:.1f} | {seconds / extract_s:.3f} | {d:.4f} | {'yes' if d <= spread else 'no'} | "
              f"{f.mean():.4f} |", flush=True)


if __name__ == "__main__":
    main()
