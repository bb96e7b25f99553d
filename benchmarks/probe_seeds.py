"""How much the probe seeds move the boundaries and the eq. 28 verdicts (issue 25, item 5).

The bootstrap resamples sentence groups with one trained probe set. Two seeds decide that set:
- the training seed (`probes.train_seed`: initialisation, minibatch order, control-task labels), which only
  retrains the probes on the cached statistics;
- the split / word-sample seed (`probes.seed`: which groups are held out and which words are sampled), an
  extraction setting (a new pass per value).
For each training seed 0..S-1 (and, with --split-seeds, each split seed at training seed 0) this runs the main
job's own steps (mspgt/experiments/boundary.py: signals, fusion, peaks, the group bootstrap, the eq. 28 test)
and prints per boundary the point block and the bootstrap selection frequencies, the eq. 28 verdict per curve
and boundary, and the largest per-state difference of F(l) (mean over tasks of held-out macro F1) from the
first row. Then the pooled row: the S training seeds as probes.n_seeds=S (F(l) their mean, each bootstrap
resample also resampling the seeds), the CI that includes the training randomness.

Usage: python benchmarks/probe_seeds.py [--seeds 5] [--split-seeds 1,2] [HYDRA_OVERRIDE ...]
The statistics come from paths.cache_dir (MSPGT_CACHE_DIR), extracted there first if absent; trained probes
are kept there per training seed, so a re-run only re-bootstraps.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[1]


def _freq(ci) -> str:
    """'11: 99.4%, 12: 0.6%' (at most 3 blocks), with the missing share."""
    top = sorted(ci.selection_frequency.items(), key=lambda kv: -kv[1])[:3]
    text = ", ".join(f"{k}: {v / ci.n_resamples:.1%}" for k, v in top) or "-"
    missing = ci.n_missing + ci.n_undefined
    return text + (f", none: {missing / ci.n_resamples:.1%}" if missing else "")


def one_row(cfg: DictConfig, stats, probes, label: str, seconds: float, reference: np.ndarray | None):
    """The job's steps on these probes; returns the printed cells, F(l) and the verdicts."""
    from mspgt.config_schema import BootstrapSettings, FusionSettings, settings
    from mspgt.experiments.boundary import detect_with_bootstrap
    from mspgt.reports.information_report import information_result
    from mspgt.signals.probes import probe_f1

    fusion, bootstrap = settings(cfg.fusion, FusionSettings), settings(cfg.bootstrap, BootstrapSettings)
    found = detect_with_bootstrap(fusion, bootstrap, str(cfg.probes.f1_average), stats, probes, {})
    info = information_result(stats, probes, {n: ci.layer for n, ci in found.cis.items()}, cfg)
    f = probe_f1(probes, np.ones(stats.n_groups), stats.n_groups, str(cfg.probes.f1_average))  # [L+1]
    diff = "-" if reference is None else f"{np.nanmax(np.abs(f - reference)):.4f}"
    verdicts = {}
    if info is not None:
        for curve, test in info["eq28"]["tests"].items():
            for name, b in test["boundaries"].items():
                verdicts[f"{curve} {name}"] = b["verdict"]
    cells = [label, f"{seconds:.1f}"]
    for ci in found.cis.values():
        cells += [f"{ci.layer} [{ci.ci_low}, {ci.ci_high}]", _freq(ci)]
    cells += [diff, f"{np.nanmean(f):.4f}"]
    return cells, f, verdicts


def main() -> None:
    from mspgt.experiments.boundary import obtain_probes, obtain_statistics
    from mspgt.signals.probes import ProbeSeeds

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5, help="training seeds 0..S-1")
    ap.add_argument("--split-seeds", default="", help="comma-separated split/word-sample seeds besides 0")
    args, overrides = ap.parse_known_args()
    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=["extraction.progress=false", *overrides])
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, CPU capability {torch.backends.cpu.get_cpu_capability()}; model={cfg.model.name}, "
          f"probes.precision={cfg.probes.precision}, B={cfg.bootstrap.n_resamples}")
    stats, cache = obtain_statistics(cfg)[:2] if args.seeds > 0 else (None, None)
    rows, verdict_rows, runs = [], [], []
    reference = None
    for s in range(args.seeds):
        c = cfg.copy()
        OmegaConf.update(c, "probes.train_seed", s)
        OmegaConf.update(c, "probes.n_seeds", 1)
        t = time.perf_counter()
        probes, cached = obtain_probes(c, stats, cache)
        seconds = probes.seconds if cached else time.perf_counter() - t
        runs.append(probes)
        cells, f, verdicts = one_row(c, stats, probes, f"training seed {s}", seconds, reference)
        reference = f if reference is None else reference
        rows.append(cells)
        verdict_rows.append((f"training seed {s}", verdicts))
    if len(runs) > 1:
        c = cfg.copy()
        OmegaConf.update(c, "probes.n_seeds", len(runs))
        cells, _, verdicts = one_row(c, stats, ProbeSeeds(runs), f"pooled: n_seeds={len(runs)} (seeds resampled)",
                                     sum(r.seconds for r in runs), reference)
        rows.append(cells)
        verdict_rows.append((f"pooled n_seeds={len(runs)}", verdicts))
    for split in [int(x) for x in args.split_seeds.split(",") if x.strip()]:
        c = cfg.copy()
        OmegaConf.update(c, "probes.seed", split)
        OmegaConf.update(c, "probes.n_seeds", 1)
        s_stats, s_cache, _ = obtain_statistics(c)
        t = time.perf_counter()
        probes, cached = obtain_probes(c, s_stats, s_cache)
        seconds = probes.seconds if cached else time.perf_counter() - t
        cells, _, verdicts = one_row(c, s_stats, probes, f"split seed {split}, training seed 0", seconds, None)
        rows.append(cells)
        verdict_rows.append((f"split seed {split}", verdicts))

    print("\n| probes | seconds | L-I [95% CI] | L-I selection frequency | I-G [95% CI] | I-G selection frequency | "
          "max abs F(l) diff vs seed 0 | mean F |")
    print("|---|---|---|---|---|---|---|---|")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    keys = sorted({k for _, v in verdict_rows for k in v})
    if keys:
        print("\neq. 28 verdicts\n\n| probes | " + " | ".join(keys) + " |")
        print("|---|" + "---|" * len(keys))
        for label, v in verdict_rows:
            print(f"| {label} | " + " | ".join(v.get(k, "-") for k in keys) + " |")


if __name__ == "__main__":
    main()
