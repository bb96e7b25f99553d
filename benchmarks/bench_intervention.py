"""Benchmark of the intervention experiment (default: SmolLM2-135M, CPU here).

Prints, against the targets of the intervention issue:
1. generation wall time with the noise hooks vs bare `model.generate` on the same prompts, batches and
   seeds (target <= 1.10x). Every condition generates exactly max_new_tokens tokens (min_new_tokens =
   max_new_tokens), so an earlier EOS under noise cannot make the noised run look cheaper. Conditions:
   hooks with sigma=0 (pure hook cost, identical tokens), sigma>0 on the scale's blocks, sigma>0 on every
   block (the worst case). Conditions are interleaved over repeats (order rotated each repeat); the
   ratio uses the fastest repeat of each condition (on a shared machine, interference only adds time),
   medians are printed beside it. One thread by default: with 2 threads on 2 shared cores, OpenMP
   spin-waiting behind other processes adds seconds at random.
2. the share of time spent on the metrics (Self-BLEU, lengths, TTR, SBERT, grammar) for one clean and one
   noised set of samples, against generation + metrics.

Usage: python benchmarks/bench_intervention.py [--model smollm2] [--prompts 8] [--samples 4]
       [--new-tokens 24] [--repeats 5] [--sigma 0.5] [--layers 10 20] [--threads 1]
       [--set model.KEY=VALUE ...] [--data bbc] [--set data.KEY=VALUE ...] [--skip-metrics]
On a GPU node, a random-weight Llama of SmolLM2's shape, prompts from the gold treebank (no downloads):
  python benchmarks/bench_intervention.py --model tiny_llama --set model.device=cuda \
    --set model.tiny.hidden_size=576 --set model.tiny.intermediate_size=1536 \
    --set model.tiny.num_hidden_layers=30 --set model.tiny.num_attention_heads=9 \
    --set model.tiny.num_key_value_heads=3 --data conllu --set data.path=../shared/data/ud-english-ewt --skip-metrics
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument(
        "--layers", type=int, nargs=2, default=None, help="first last block (default: middle third)"
    )
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--data", default="bbc", help="the corpus the prompts come from (conf/data/NAME.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="model.KEY=VALUE|data.KEY=VALUE",
                        help="override a model or data setting (repeatable)")
    parser.add_argument("--skip-metrics", action="store_true", help="time generation only")
    args = parser.parse_args()
    settings = {"model": [], "data": []}
    for item in args.set:
        group, _, rest = item.partition(".")
        if group not in settings or "=" not in rest:
            parser.error(f"--set {item}: use model.KEY=VALUE or data.KEY=VALUE")
        settings[group].append(rest)
    torch.set_num_threads(args.threads)

    from mspgt.data.corpus import load_sentences
    from mspgt.experiments.intervention import choose_prompts
    from mspgt.interventions.activation_scale import measure_activation_std
    from mspgt.interventions.generation import sample_continuations
    from mspgt.interventions.grammar import HarperChecker
    from mspgt.interventions.noise import ScaleNoise
    from mspgt.interventions.text_metrics import load_sbert, score_prompts
    from mspgt.model.loading import load_model

    cache = os.environ.get("MSPGT_CACHE_DIR", str(Path.home() / ".cache" / "mspgt"))
    model_cfg = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "model" / f"{args.model}.yaml"),
                                OmegaConf.from_dotlist(settings["model"]))
    loaded = load_model(model_cfg, cache, need_attentions=False)
    data = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "data" / f"{args.data}.yaml"),
                           OmegaConf.from_dotlist(settings["data"]))
    data.n_sentences = max(200, 4 * args.prompts)
    sentences = load_sentences(data)
    prompts = choose_prompts(sentences, args.prompts, 12)
    gen = OmegaConf.create(
        {
            "n_prompts": args.prompts,
            "samples_per_prompt": args.samples,
            "prompt_words": 12,
            "max_new_tokens": args.new_tokens,
            "min_new_tokens": args.new_tokens,
            "temperature": 0.8,
            "top_p": 0.95,
            "top_k": 0,
            "batch_size": args.batch_size,
            "seed": 0,
            "noise_seed": 1234,
        }
    )
    std = measure_activation_std(loaded, [s.text for s in sentences[:64]], max_tokens=64)
    L = loaded.n_blocks
    first, last = args.layers or (L // 3 + 1, 2 * L // 3)
    scale_blocks = {b: std[b] for b in range(first, last + 1)}
    every_block = {b: std[b] for b in range(1, L + 1)}
    conditions = {
        "bare generate": None,
        "hooks, sigma=0, scale blocks": (scale_blocks, 0.0),
        f"hooks, sigma={args.sigma:g}, blocks {first}-{last}": (scale_blocks, args.sigma),
        f"hooks, sigma={args.sigma:g}, all {L} blocks": (every_block, args.sigma),
    }

    def run(spec):
        noise = None if spec is None else ScaleNoise(loaded.blocks, spec[0], spec[1], seed=1234)
        return sample_continuations(loaded, prompts, gen, noise=noise)

    run(None)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in conditions}
    outputs = {}
    names = list(conditions)
    for rep in range(args.repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            out = run(conditions[name])
            times[name].append(out.seconds)
            outputs[name] = out
    bare = min(times["bare generate"])
    rows = args.prompts * args.samples
    print(
        f"\n{loaded.name} ({L} blocks) on {loaded.device}, {args.threads} threads: {args.prompts} prompts x "
        f"{args.samples} samples = {rows} rows, batch {args.batch_size}, {args.new_tokens} new tokens, "
        f"{args.repeats} repeats"
    )
    print("| condition | generate wall time, best (s) | median (s) | ratio to bare (best) | target |")
    print("|---|---|---|---|---|")
    for name, ts in times.items():
        best, med = min(ts), statistics.median(ts)
        ok = "ok" if best / bare <= 1.10 else "MISSED"
        target = "" if name == "bare generate" else f"<= 1.10x: {ok}"
        print(f"| {name} | {best:.2f} | {med:.2f} | {best / bare:.3f}x | {target} |")
    same = outputs["bare generate"].continuations == outputs["hooks, sigma=0, scale blocks"].continuations
    print(f"sigma=0 hooks give the bare samples: {same}")
    if args.skip_metrics:
        return

    sbert, checker = load_sbert("packaged", "cpu"), HarperChecker("en-GB")
    clean, noised = outputs["bare generate"], outputs[f"hooks, sigma={args.sigma:g}, blocks {first}-{last}"]
    t0 = time.perf_counter()
    score_prompts(prompts, clean.continuations, sbert, checker)
    score_prompts(prompts, noised.continuations, sbert, checker)
    metrics_s = time.perf_counter() - t0
    gen_s = clean.seconds + noised.seconds
    print("\n| step (one clean + one noised set) | wall time (s) | share |")
    print("|---|---|---|")
    print(f"| generation | {gen_s:.2f} | {gen_s / (gen_s + metrics_s):.1%} |")
    print(f"| metrics | {metrics_s:.2f} | {metrics_s / (gen_s + metrics_s):.1%} |")


if __name__ == "__main__":
    main()
