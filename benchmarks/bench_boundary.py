"""Benchmark of the boundary experiment, on any model (`model=...`; the default SmolLM2-135M, CPU here).

Prints ratios against the targets:
1. extraction wall time vs the model's own bare decoder forward loop returning hidden states and attentions
   over the same decoder calls (target <= 1.10x; each batch runs as the calls extract.decoder_calls picks).
   Paired per call: inside the pass, every decoder call is also run bare on the same inputs (before the
   pass's forward for every other call, after it for the rest, swapped between repeats), and per call the
   fastest of the repeats is kept on each side, so a slow phase of the machine hits both sides of one call
   rather than a whole loop. A least-squares fit of the bare calls' times to their padded tokens gives a
   call's fixed cost in tokens (what extraction.call_overhead_tokens should be on that machine). Then the
   split of the time outside the bare forward by the function that spends it (hooks, HSIC, information curves, attention JS, probe-sample gather, waiting for
   the cache writer, the rest), so a slow architecture is diagnosed by one command;
   `--standalone R` instead times whole loops as a user runs them (bare loop, pass, pass, bare loop; R
   times), with the decoder forwards, the parts, CPU time and minor page faults of each: what a pass costs
   when no bare forward of the same shape runs beside it (on a shared machine the speed drifts by 10-25%
   between loops: read it beside the paired ratio, not instead of it);
   `--profile ROWS` runs one pass under torch.profiler instead (the GPU target's table of where the time
   goes: the labelled parts, then the top ROWS operators by self time, CUDA time on a GPU);
2. peak memory (max RSS of a full `python -m mspgt.run` process) at 500 vs 2,000 sentences (target: within 10%);
3. B = 1000 bootstrap time as a share of extraction time (target < 5%).

Usage: python benchmarks/bench_boundary.py [--sentences 1000] [--skip-memory] [--variants selected|all] [--repeats 3]
                                          [--standalone R] [--profile ROWS] [--json FILE] [HYDRA_OVERRIDE ...]
Overrides go to every run, e.g. on a GPU node, a random-weight model of Llama-2-7B's shape in bf16 with gold
labels (no model download, no spaCy):
  python benchmarks/bench_boundary.py model=tiny_llama model.device=cuda model.dtype=bfloat16 \
    model.tiny.hidden_size=4096 model.tiny.intermediate_size=11008 model.tiny.num_hidden_layers=32 \
    model.tiny.num_attention_heads=32 model.tiny.num_key_value_heads=32 extraction.batch_size=64 \
    data=conllu data.path=../shared/data/ud-english-ewt 'probes.tasks=[pos,dep]'
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]


def config(overrides: list[str]):
    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        return compose("config", overrides=overrides, return_hydra_config=False)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# what extraction does outside the decoder's forward, by the function that does it (extraction/*.py)
PARTS = {
    "group_hsic_variants": "statistics: HSIC per group (CKA)",
    "group_information_tensor": "statistics: information curves",
    "attention_js_sums_variants": "statistics: attention JS",
    "_to_float16": "probe sample: gather + float16 copy to host",
    "wait": "cache writes: main thread waiting for the background writer",
}


def _wrap_parts(wrap):
    """Replace the functions of PARTS, wherever mspgt.extraction imported them, and the writer's wait by
    `wrap(name, fn)`; returns the undo."""
    import mspgt.extraction as package
    from mspgt.extraction.writer import BackgroundWrites

    undo = []
    for module in [m for n, m in sys.modules.items() if n.startswith(package.__name__ + ".") and m is not None]:
        for name in PARTS:
            fn = getattr(module, name, None)
            if callable(fn) and not isinstance(fn, type) and getattr(fn, "__module__", "").startswith("mspgt"):
                setattr(module, name, wrap(name, fn))
                undo.append((module, name, fn))
    original_wait = BackgroundWrites.wait
    BackgroundWrites.wait = wrap("wait", original_wait)
    undo.append((BackgroundWrites, "wait", original_wait))

    def restore() -> None:
        for owner, name, fn in undo:
            setattr(owner, name, fn)
    return restore


def _time_parts(device: torch.device, into: dict[str, float]):
    """Add the wall time (device synchronised) of each part of PARTS into `into`; returns the undo."""

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            synchronize(device)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                synchronize(device)
                into[name] = into.get(name, 0.0) + time.perf_counter() - t
        return wrapper

    return _wrap_parts(timed)


def profile_pass(n_sentences: int, cache_dir: str, variants: str, overrides: tuple[str, ...], rows: int) -> str:
    """torch.profiler over one extraction pass (after a warm-up forward): the table of operators by self time
    (CUDA time on a GPU), with mspgt's parts and the decoder's forward labelled ("mspgt: ..." rows: their
    total time, children included), so where the time outside the forward goes is read off one table."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from mspgt.extraction.extract import _padded_batch

    cfg, loaded, corpus, calls = _setup(n_sentences, cache_dir, variants, overrides)
    decoder = loaded.model.get_decoder()
    ids, mask = _padded_batch([corpus.encoded[i] for i in calls[0]], loaded.tokenizer.pad_token_id, loaded.device)
    with torch.no_grad():
        decoder(input_ids=ids, attention_mask=mask, output_attentions=True, use_cache=False)

    def labelled(name, fn):
        def wrapper(*args, **kwargs):
            with record_function(f"mspgt: {PARTS[name]}"):
                return fn(*args, **kwargs)
        return wrapper

    forward = []
    pre = decoder.register_forward_pre_hook(lambda *_: forward.append(record_function("mspgt: decoder forward").__enter__()))
    post = decoder.register_forward_hook(lambda *_: forward.pop().__exit__(None, None, None))
    undo = _wrap_parts(labelled)
    cuda = loaded.device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    try:
        with profile(activities=activities) as prof:
            _fresh_pass(cfg, loaded, corpus, Path(cache_dir) / "profile")
            synchronize(loaded.device)
    finally:
        pre.remove()
        post.remove()
        undo()
    events = prof.key_averages()
    labels = sorted((e for e in events if e.key.startswith("mspgt: ")), key=lambda e: -e.cpu_time_total)
    lines = [f"torch.profiler, one pass over {len(corpus.encoded)} sentences ({len(calls)} decoder calls), {loaded.name} "
             f"on {loaded.device} ({str(loaded.dtype).replace('torch.', '')}); labelled parts, total time:"]
    for e in labels:
        device_s = f", {e.device_time_total / 1e6:.2f} s on the GPU" if cuda else ""
        lines.append(f"  {e.key}: {e.cpu_time_total / 1e6:.2f} s on the host{device_s} ({e.count} calls)")
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    lines.append(events.table(sort_by=sort, row_limit=rows))
    return "\n".join(lines)


def _fresh_pass(cfg, loaded, corpus, folder: Path) -> None:
    """One extraction pass (build_statistics) into a fresh cache entry under `folder`, as the job runs it."""
    from mspgt.extraction.cache import StatisticsCache
    from mspgt.extraction.extract import build_statistics, cache_material
    from mspgt.reports.store import data_identity

    build_statistics(loaded, corpus, StatisticsCache(folder, cache_material(cfg, data_identity(cfg.data))), cfg)


def _setup(n_sentences: int, cache_dir: str, variants: str, overrides: tuple[str, ...]):
    """The config, the loaded model, the prepared corpus and the pass's decoder calls (each a list of sentence
    indices, in the pass's order), as the boundary experiment makes them (batch size and the per-call
    overhead resolved as build_statistics resolves them)."""
    from omegaconf import OmegaConf

    from mspgt.data.alignment import encode_sentences
    from mspgt.data.corpus import load_sentences
    from mspgt.data.labels import label_sentences
    from mspgt.extraction.extract import batch_calls, call_overhead_tokens
    from mspgt.extraction.groups import prepare_corpus
    from mspgt.model.loading import load_model
    from mspgt.model.sizing import auto_batch_size

    cfg = config([f"data.n_sentences={n_sentences}", "extraction.progress=false", f"extraction.variants={variants}",
                  *overrides])
    OmegaConf.update(cfg, "paths.cache_dir", cache_dir)
    OmegaConf.update(cfg, "paths.outputs", cache_dir)
    sentences = load_sentences(cfg.data)
    loaded = load_model(cfg.model, cache_dir, need_attentions=True, probe_tokens=cfg.data.max_tokens)
    labeled = label_sentences(sentences, cfg.data.labels, tasks=list(cfg.probes.tasks))
    encoded = encode_sentences(loaded.tokenizer, labeled, cfg.data.max_tokens)
    corpus = prepare_corpus(labeled, encoded, list(cfg.probes.tasks), cfg.bootstrap.group_size, cfg.probes,
                            cfg.bootstrap.grouping, cfg.bootstrap.grouping_seed)
    batch_size = cfg.extraction.batch_size
    if batch_size == "auto":
        batch_size = auto_batch_size(loaded, cfg.data.max_tokens, cfg.bootstrap.group_size)
        OmegaConf.update(cfg, "extraction.batch_size", int(batch_size))  # the same batches on both sides
    overhead = call_overhead_tokens(cfg, loaded.device)
    OmegaConf.update(cfg, "extraction.call_overhead_tokens", overhead)
    calls = [[batch[b] for b in call] for batch, in_batch in batch_calls(corpus, 0, corpus.n_groups, int(batch_size),
                                                                          overhead) for call in in_batch]
    return cfg, loaded, corpus, calls


def call_cost_fit(padded: list[int], seconds: list[float]) -> dict[str, float]:
    """Least squares over the decoder calls: seconds = fixed + per_token x padded tokens. fixed / per_token is
    a call's fixed cost in padded tokens, what `extraction.call_overhead_tokens` should be on this machine."""
    import numpy as np

    x = np.asarray(padded, dtype=float)
    fit = np.linalg.lstsq(np.stack([np.ones_like(x), x], 1), np.asarray(seconds), rcond=None)[0]
    return {"fixed_s": float(fit[0]), "per_token_s": float(fit[1]),
            "overhead_tokens": float(fit[0] / fit[1]) if fit[1] > 0 else float("nan")}


def time_extraction(n_sentences: int, cache_dir: str, variants: str = "selected", repeats: int = 3,
                    overrides: tuple[str, ...] = ()) -> dict[str, float]:
    from mspgt.extraction.extract import _padded_batch

    cfg, loaded, corpus, calls = _setup(n_sentences, cache_dir, variants, overrides)
    encoded = corpus.encoded
    decoder = loaded.model.get_decoder()
    parts: dict[int, dict[str, float]] = {}  # per repeat, seconds in each part outside the forward

    @torch.no_grad()
    def bare_forward(kwargs: dict) -> float:
        synchronize(loaded.device)
        t = time.perf_counter()
        out = decoder(**{**kwargs, "output_hidden_states": True, "output_attentions": True})
        synchronize(loaded.device)
        del out
        return time.perf_counter() - t

    def extraction(rep: int) -> dict[str, list[float]]:
        """One extraction pass with the bare decoder forward of each decoder call run beside it, on the same
        inputs: before the pass's own forward for every other call, after it for the rest, swapped in the next
        repeat (so neither side always runs with the caches the other warmed). Returns per call: the bare
        forward, the pass's own forward and the pass's time for that call (from its forward's start to the
        next one's: a batch's statistics fall in its last call; the last call runs to the end of the pass,
        setup before the first call is counted in it too), bare forwards excluded."""
        bare_s: list[float] = []
        forward_s: list[float] = []
        marks: list[float] = []  # when each call starts: its interval to the next holds exactly its bare forward
        forward_start = [0.0]
        inside = [False]

        def after() -> bool:  # this call's bare forward after the pass's: alternating by call and repeat
            return (len(marks) - 1 + rep) % 2 == 1

        def run_bare(kwargs) -> None:
            inside[0] = True
            try:
                bare_s.append(bare_forward(kwargs))
            finally:
                inside[0] = False

        def pre_hook(_module, _args, kwargs):
            if inside[0]:
                return
            synchronize(loaded.device)
            marks.append(time.perf_counter())
            if not after():
                run_bare(kwargs)
            forward_start[0] = time.perf_counter()

        def post_hook(_module, _args, kwargs, _output):
            if inside[0]:
                return
            synchronize(loaded.device)
            forward_s.append(time.perf_counter() - forward_start[0])
            if after():
                run_bare(kwargs)

        pre = decoder.register_forward_pre_hook(pre_hook, with_kwargs=True)
        post = decoder.register_forward_hook(post_hook, with_kwargs=True)
        unpatch = _time_parts(loaded.device, parts.setdefault(rep, {}))
        try:
            synchronize(loaded.device)
            t0 = time.perf_counter()
            _fresh_pass(cfg, loaded, corpus, Path(cache_dir) / f"bench-{rep}")
            synchronize(loaded.device)
            t1 = time.perf_counter()
        finally:
            pre.remove()
            post.remove()
            unpatch()
        ends = [*marks[1:], t1]
        pass_s = [e - m - b for m, e, b in zip(marks, ends, bare_s, strict=True)]
        pass_s[0] += marks[0] - t0  # setup before the first call
        return {"bare": bare_s, "forward": forward_s, "pass": pass_s}

    ids, mask = _padded_batch([encoded[i] for i in calls[0]], loaded.tokenizer.pad_token_id, loaded.device)
    for _ in range(2):  # warm-up on a real batch: one-time costs go to neither side
        bare_forward({"input_ids": ids, "attention_mask": mask, "use_cache": False})
    runs = [extraction(rep) for rep in range(repeats)]
    for rep, r in enumerate(runs):
        print(f"repeat {rep + 1}: bare decoder "
              f"{sum(r['bare']):.1f} s, extraction {sum(r['pass']):.1f} s, of which forward {sum(r['forward']):.1f} s",
              flush=True)
    # per call, the fastest of the repeats on each side: a slow phase of a shared machine then hits one
    # call of one repeat, not a whole side
    best = {k: [min(r[k][i] for r in runs) for i in range(len(runs[0][k]))] for k in runs[0]}
    tokens = sum(len(e.input_ids) for e in encoded)
    padded = [len(c) * max(len(encoded[i].input_ids) for i in c) for c in calls]
    fastest = min(range(repeats), key=lambda r: sum(runs[r]["pass"]))
    return {"bare_decoder_s": sum(best["bare"]), "extract_s": sum(best["pass"]),
            "extract_forward_s": sum(best["forward"]), "parts": parts[fastest], "tokens": tokens,
            "padded_tokens": sum(padded), "call_fit": call_cost_fit(padded, best["bare"]),
            "overhead_tokens": int(cfg.extraction.call_overhead_tokens), "batch_size": int(cfg.extraction.batch_size),
            "sentences": len(encoded), "calls": len(calls), "device": str(loaded.device),
            "dtype": str(loaded.dtype).replace("torch.", ""),
            "model": f"{loaded.name} ({loaded.n_blocks} blocks, d={loaded.model.config.hidden_size})"}


def time_standalone(n_sentences: int, cache_dir: str, variants: str = "selected", rounds: int = 1,
                    overrides: tuple[str, ...] = ()) -> list[dict]:
    """Whole loops, each on its own, as a user runs them: the bare decoder loop over the calls, then the
    extraction pass (build_statistics), then the pass, then the bare loop (ABBA, `rounds` times), so a drift of
    the machine's speed hits both sides alike. Each phase: wall seconds, process CPU seconds and minor page
    faults. The paired design (time_extraction) gives the split; this gives what a standalone pass costs,
    including what the two forwards of a pair would otherwise warm for each other."""
    import resource

    from mspgt.extraction.extract import _padded_batch

    cfg, loaded, corpus, calls = _setup(n_sentences, cache_dir, variants, overrides)
    decoder = loaded.model.get_decoder()
    pad = loaded.tokenizer.pad_token_id

    forwards: list[float] = []  # the decoder forwards of the phase running now, each timed
    start = [0.0]

    def pre_hook(*_args) -> None:
        synchronize(loaded.device)
        start[0] = time.perf_counter()

    def post_hook(*_args) -> None:
        synchronize(loaded.device)
        forwards.append(time.perf_counter() - start[0])

    decoder.register_forward_pre_hook(pre_hook)
    decoder.register_forward_hook(post_hook)

    @torch.no_grad()
    def bare_loop() -> None:
        for call in calls:
            ids, mask = _padded_batch([corpus.encoded[i] for i in call], pad, loaded.device)
            out = decoder(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True,
                          use_cache=False)
            del out

    def phase(name: str, fn) -> dict:
        forwards.clear()
        parts: dict[str, float] = {}
        unpatch = _time_parts(loaded.device, parts)
        synchronize(loaded.device)
        faults, cpu, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time(), time.perf_counter()
        try:
            fn()
            synchronize(loaded.device)
        finally:
            unpatch()
        row = {"phase": name, "wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - cpu,
               "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults,
               "forward_s": sum(forwards), "forwards": list(forwards), "parts": parts}
        print(f"  {name}: {row['wall_s']:.1f} s wall ({row['forward_s']:.1f} s in the decoder's forward; "
              + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()) + f"), {row['cpu_s']:.1f} s CPU, "
              f"{row['minor_faults']} minor page faults", flush=True)
        return row

    print(f"standalone loops, ABBA x {rounds}: {len(corpus.encoded)} sentences, {len(calls)} decoder calls")
    rows = []
    for r in range(rounds):
        rows.append(phase("bare decoder loop", bare_loop))
        for tag in "ab":
            rows.append(phase("extraction pass",
                              lambda f=Path(cache_dir) / f"standalone-{r}{tag}": _fresh_pass(cfg, loaded, corpus, f)))
        rows.append(phase("bare decoder loop", bare_loop))
    return rows


def run_peak_rss(n_sentences: int, workdir: Path, model_cache: Path,
                 overrides: tuple[str, ...] = ()) -> tuple[float, float, dict]:
    """Max RSS (MiB) of one full boundary run in a fresh process, its peak CUDA memory (MiB, 0 on a CPU), and
    its results. Both runs load the model from the same dequantised copy (`model_cache`), so they differ only
    in the number of sentences."""
    out = workdir / f"run-{n_sentences}"
    code = (
        "import resource, runpy, sys; sys.argv=['mspgt.run', *sys.argv[1:]];"
        "\ntry:\n    runpy.run_module('mspgt.run', run_name='__main__')\n"
        "finally:\n    print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)"
        "\n    import torch\n    print('MAXCUDA_B', torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0)"
    )
    cache = workdir / f"cache-{n_sentences}"
    cache.mkdir(parents=True)
    for sub in ("models", "tokenizers"):  # whichever the model uses (dequantised weights, a tokenizer)
        if (model_cache / sub).is_dir():
            (cache / sub).symlink_to(model_cache / sub)
    env = dict(os.environ, MSPGT_CACHE_DIR=str(cache), WANDB_MODE="offline")
    proc = subprocess.run([sys.executable, "-c", code, f"data.n_sentences={n_sentences}", "extraction.progress=false",
                           f"hydra.run.dir={out}", *overrides], cwd=workdir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    kb = next(int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("MAXRSS_KB"))
    cuda = next(int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("MAXCUDA_B"))
    return kb / 1024, cuda / 2**20, json.loads((out / "results.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sentences", type=int, default=1000, help="the default corpus size")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each timed loop (fastest kept)")
    ap.add_argument("--standalone", type=int, default=0, metavar="ROUNDS",
                    help="instead of the paired design: whole standalone loops, bare/pass/pass/bare x ROUNDS")
    ap.add_argument("--profile", type=int, default=0, metavar="ROWS",
                    help="instead of timing: torch.profiler over one pass, the top ROWS operators and mspgt's parts")
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    ap.add_argument("--variants", choices=["all", "selected"], default="selected",
                    help="extraction.variants: only the fused CKA/JS variants (the default) or every one")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every run (model, data, device, ...)")
    args = ap.parse_args()
    overrides = tuple(args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        # the tiny models' tokenizer, from the user's cache when it is there (a GPU node without the package)
        user_tokenizers = Path(os.environ.get("MSPGT_CACHE_DIR", Path.home() / ".cache" / "mspgt")) / "tokenizers"
        if user_tokenizers.is_dir():
            shutil.copytree(user_tokenizers, Path(tmp) / "tokenizers")
        if args.profile:
            print(profile_pass(args.sentences, tmp, args.variants, overrides, args.profile))
            return
        if args.standalone:
            rows = time_standalone(args.sentences, tmp, args.variants, args.standalone, overrides)
            total = {k: sum(r[k] for r in rows if r["phase"] == "extraction pass") for k in ("wall_s", "cpu_s")}
            bare = {k: sum(r[k] for r in rows if r["phase"] == "bare decoder loop") for k in ("wall_s", "cpu_s")}
            print("\n| measure | ratio | target |\n|---|---|---|")
            print(f"| standalone extraction pass vs bare decoder loop, wall | {total['wall_s'] / bare['wall_s']:.3f} "
                  "| <= 1.10 |")
            print(f"| the same, process CPU time | {total['cpu_s'] / bare['cpu_s']:.3f} | |")
            fwd = [sum(r["forward_s"] for r in rows if r["phase"] == ph) for ph in ("extraction pass", "bare decoder loop")]
            print(f"| the pass's decoder forwards vs the bare loop's | {fwd[0] / fwd[1]:.3f} | |")
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
            return
        t = time_extraction(args.sentences, tmp, args.variants, args.repeats, overrides)
        if args.json:
            args.json.write_text(json.dumps(t, indent=1))
        gpu = torch.cuda.get_device_name() if t["device"].startswith("cuda") else "no GPU"
        print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {t['device']} ({gpu}), "
              f"{t['dtype']}, model {t['model']}")
        rows = [("extraction vs bare decoder forward loop (hidden states + attentions, same decoder calls)",
                 t["extract_s"] / t["bare_decoder_s"], "<= 1.10")]
        print(f"extraction.variants={args.variants}; {t['sentences']} sentences, {t['tokens']} tokens, "
              f"batches of {t['batch_size']} run as {t['calls']} decoder calls ({t['padded_tokens']} padded tokens; "
              f"extraction.call_overhead_tokens={t['overhead_tokens']}), each timed both ways, fastest of "
              f"{args.repeats} repeats per call: "
              f"bare decoder {t['bare_decoder_s']:.1f} s, extraction {t['extract_s']:.1f} s "
              f"({t['tokens'] / t['extract_s']:.0f} tokens/s), of which {t['extract_forward_s']:.1f} s inside the "
              f"decoder's forward and {t['extract_s'] - t['extract_forward_s']:.1f} s outside it")
        fit = t["call_fit"]
        print(f"bare decoder calls fitted as {fit['fixed_s'] * 1e3:.1f} ms + {fit['per_token_s'] * 1e6:.1f} us per padded "
              f"token: a call's fixed cost is {fit['overhead_tokens']:.0f} padded tokens (extraction.call_overhead_tokens)")
        outside = t["extract_s"] - t["extract_forward_s"]
        print("where the time outside the bare forward goes (s, share of extraction; parts from the fastest repeat):")
        print(f"  hooks (the pass's forward, with mspgt's hooks, minus the bare forward): "
              f"{t['extract_forward_s'] - t['bare_decoder_s']:+.2f}")
        for name, what in PARTS.items():
            spent = t["parts"].get(name, 0.0)
            print(f"  {what}: {spent:.2f} ({spent / t['extract_s']:.1%})")
        rest = outside - sum(t["parts"].values())
        print(f"  the rest (batch tensors, token gathers, host copies, progress): {rest:.2f} "
              f"({rest / t['extract_s']:.1%})")
        if not args.skip_memory:
            work = Path(tmp) / "mem"
            work.mkdir()
            rss500, cuda500, _ = run_peak_rss(500, work, Path(tmp), overrides)
            rss2000, cuda2000, res = run_peak_rss(2000, work, Path(tmp), overrides)
            rows.append(("peak RSS 2,000 vs 500 sentences", rss2000 / rss500, "<= 1.10"))
            if cuda500:
                rows.append(("peak CUDA memory 2,000 vs 500 sentences", cuda2000 / cuda500, "<= 1.10"))
                print(f"peak CUDA memory: 500 sentences {cuda500:.0f} MiB, 2000 sentences {cuda2000:.0f} MiB")
            tm = res["timings"]
            rows.append(("B=1000 bootstrap / extraction (2,000 sentences)", tm["bootstrap_s"] / tm["extract_s"], "< 0.05"))
            print(f"peak RSS: 500 sentences {rss500:.0f} MiB, 2000 sentences {rss2000:.0f} MiB; "
                  f"2000-sentence run timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in tm.items()))
        print("\n| measure | ratio | target |\n|---|---|---|")
        for name, ratio, target in rows:
            print(f"| {name} | {ratio:.3f} | {target} |")


if __name__ == "__main__":
    main()
