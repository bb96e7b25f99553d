"""Which CKA does mspgt estimate? Per block, 1 - CKA(h_{l-1}, h_l) under several estimators on one corpus.

The minibatch estimator (Nguyen et al. 2021, eq. 3) averages unbiased HSIC terms over groups of sentences.
With groups of CONSECUTIVE sentences (several per document), the structure between groups (topic,
document) drops out of every group's kernel: the estimand is a within-group CKA, not the population CKA
of the corpus's token representations. This script measures how far each estimator lies from the plain
full-data linear CKA (Kornblith et al. 2019, all tokens of the subset at once, float64) on the real model:

- full:              full-data linear CKA (the population estimand, computable here because the subset fits)
- consecutive-4:     groups of 4 consecutive sentences (the grouping of mspgt up to this change)
- shuffled-4:        groups of 4 sentences drawn at random across the corpus with a fixed seed
- consecutive-g / shuffled-g: the same with groups of g sentences (--sizes), shuffled with two seeds

and the representation-change-only peaks of each curve (prominence 0.3, as the fused detector).

Usage: python benchmarks/cka_estimand.py [--sentences 400] [--seed 0] [--json out.json] [HYDRA_OVERRIDE ...]
(defaults: SmolLM2-135M on BBC News, the main job's model and corpus; all real tokens, position 0 included).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]


def collect_states(cfg, n_sentences: int) -> tuple[list[np.ndarray], int]:
    """h_0..h_L of every real token of the first n sentences: per sentence [m, n_tok, d] float32."""
    from mspgt.data.corpus import load_sentences
    from mspgt.extraction.hooks import residual_stream
    from mspgt.model.loading import load_model

    sentences = load_sentences(cfg.data)[:n_sentences]
    loaded = load_model(cfg.model, cfg.paths.cache_dir, need_attentions=False)
    # tokenised as the pipeline does (data/alignment.py): each sentence alone, special tokens added, truncated
    enc = loaded.tokenizer([s.text for s in sentences], add_special_tokens=True, truncation=True,
                           max_length=cfg.data.max_tokens)["input_ids"]
    decoder = loaded.model.get_decoder()
    out: list[np.ndarray] = []
    with torch.no_grad():
        for a in range(0, len(enc), 32):
            batch = enc[a : a + 32]
            T = max(len(x) for x in batch)
            ids = torch.full((len(batch), T), loaded.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), T), dtype=torch.long)
            for b, x in enumerate(batch):
                ids[b, : len(x)] = torch.tensor(x)
                mask[b, : len(x)] = 1
            with residual_stream(loaded.blocks) as states:
                decoder(input_ids=ids, attention_mask=mask, use_cache=False)
            stacked = torch.stack([s.float() for s in states])  # [m, B, T, d]
            for b, x in enumerate(batch):
                out.append(stacked[:, b, : len(x)].numpy().copy())  # [m, n_tok, d]
    return out, loaded.n_blocks


def full_data_change(per_sentence: list[np.ndarray]) -> np.ndarray:
    """1 - full-data linear CKA between adjacent states over all tokens: [L] (float64)."""
    from mspgt.signals.cka import linear_cka

    x = np.concatenate(per_sentence, axis=1)  # [m, N, d]
    return np.array([1.0 - linear_cka(x[i - 1], x[i]) for i in range(1, x.shape[0])])


def minibatch_change(per_sentence: list[np.ndarray], order: np.ndarray, group_size: int) -> np.ndarray:
    """1 - minibatch CKA with groups of `group_size` sentences taken in `order`: [L]."""
    from mspgt.signals.cka import group_hsic_variants, minibatch_cka, representation_change

    hsic = []
    for a in range(0, len(order) - group_size + 1, group_size):
        rows = np.concatenate([per_sentence[i] for i in order[a : a + group_size]], axis=1)  # [m, n, d]
        keep = torch.ones(rows.shape[1], dtype=torch.bool)
        hsic.append(group_hsic_variants(torch.from_numpy(rows), keep, ["raw"]).hsic["raw"].numpy())
    return representation_change(minibatch_cka(np.stack(hsic)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--json", type=Path, default=None)
    args, overrides = parser.parse_known_args()
    from mspgt.fusion.fuse import minmax_normalise
    from mspgt.fusion.peaks import detect_boundaries

    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=[f"data.n_sentences={args.sentences}", *overrides])
    t = time.perf_counter()
    states, n_blocks = collect_states(cfg, args.sentences)
    n_tokens = sum(s.shape[1] for s in states)
    print(f"{cfg.model.name}: {len(states)} sentences, {n_tokens} tokens, {n_blocks} blocks "
          f"({time.perf_counter() - t:.0f} s to collect)", file=sys.stderr)
    from mspgt.extraction.groups import sentence_order

    curves = {"full": full_data_change(states)}
    for size in args.sizes:
        curves[f"consecutive-{size}"] = minibatch_change(states, sentence_order(len(states), "consecutive", 0), size)
        for seed in (args.seed, args.seed + 1):
            order = sentence_order(len(states), "shuffled", seed)  # as bootstrap.grouping=shuffled does
            curves[f"shuffled-{size}" + ("" if seed == args.seed else f" (seed {seed})")] = minibatch_change(
                states, order, size)
    full = curves["full"]
    print("| block | " + " | ".join(curves) + " |")
    print("|---|" + "---|" * len(curves))
    for i in range(n_blocks):
        print(f"| {i + 1} | " + " | ".join(f"{c[i]:.4f}" for c in curves.values()) + " |")
    print("\n| estimator | max abs diff to full | mean abs diff | Pearson r with full | peaks (1 - CKA alone) | L-I, I-G |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for name, c in curves.items():
        pick = detect_boundaries(minmax_normalise(c), 0.3)
        r = float(np.corrcoef(c, full)[0, 1])
        summary[name] = {"curve": c.tolist(), "max_abs_diff": float(np.abs(c - full).max()),
                         "mean_abs_diff": float(np.abs(c - full).mean()), "pearson_r": r,
                         "peaks": pick.peaks, "li": pick.li, "ig": pick.ig}
        print(f"| {name} | {summary[name]['max_abs_diff']:.4f} | {summary[name]['mean_abs_diff']:.4f} | {r:.4f} | "
              f"{pick.peaks} | {pick.li}, {pick.ig} |")
    if args.json:
        args.json.write_text(json.dumps({"model": cfg.model.name, "n_sentences": len(states), "n_tokens": n_tokens,
                                         "seed": args.seed, "estimators": summary}, indent=1))


if __name__ == "__main__":
    main()
