"""Benchmark of the Fisher-trace estimate (experiment=fisher, appendix A.5) on the default model (SmolLM2-135M;
target: 200 held-out sentences in under 5 minutes on 2 CPU cores).

Prints the wall time of the estimate and, as a load-independent yardstick, its ratio to a bare no-grad forward
loop over the same batches (a shared machine slows both alike).

Usage: python benchmarks/bench_fisher.py [--sentences 200] [--samples 2] [--batch-size 8] [HYDRA_OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from mspgt.experiments.fisher import heldout_sentences
    from mspgt.interventions.fisher import encoded_batches, estimate_fisher_traces
    from mspgt.model.loading import load_model

    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=["experiment=fisher", *args.overrides])
    with open_dict(cfg):
        cfg.experiment.n_sentences = args.sentences
    texts, first = heldout_sentences(cfg)
    loaded = load_model(cfg.model, cfg.paths.cache_dir, need_attentions=False)
    batches = encoded_batches(loaded, texts, int(cfg.data.max_tokens), args.batch_size)
    n_tokens = int(sum(int(m.sum()) for _, m in batches))

    with torch.no_grad():
        t = time.perf_counter()
        for ids, mask in batches:
            loaded.model(input_ids=ids, attention_mask=mask, use_cache=False)
        bare = time.perf_counter() - t
    t = time.perf_counter()
    fisher = estimate_fisher_traces(loaded, batches, args.samples, seed=0)
    spent = time.perf_counter() - t
    print(f"{loaded.name}: {len(texts)} held-out sentences from #{first}, {n_tokens} tokens, "
          f"{torch.get_num_threads()} threads, {args.samples} draws per position, batch {args.batch_size}")
    print(f"bare no-grad forward loop: {bare:.1f} s; Fisher traces: {spent:.1f} s = {spent / bare:.2f}x the forward "
          f"loop (target: < 300 s)")
    print("Tr F_l per token, l = 0..L:", " ".join(f"{x:.3g}" for x in fisher.per_token()))


if __name__ == "__main__":
    main()
