"""mspgt's single streaming pass against the peers' collect-then-compute path, side by side (issue 13, item 4).

What TransformerLens (`run_with_cache`) and nnsight (`.save()`) users do: run the model over the corpus,
keep every layer's hidden states and attention maps, then compute the signals. The baseline here does that
honestly with plain Hugging Face outputs (`output_hidden_states=True, output_attentions=True`), on the same
model, the same batches run as the same decoder calls (extract.batch_calls), the same states (h_0..h_L at
every real token) and the same estimators as mspgt (`group_hsic_variants` per sentence group,
`attention_js_sums_variants` per decoder call), and checks that both give
the same per-group HSIC and JS sums. With nnsight installed (`pip install nnsight`), a third path collects the
same tensors through `NNsight(model).trace(...)` and `.save()`.

Each (method, size) runs in its own process; the parent polls its resident memory and stops it at
--memory-limit-gib (reported as out of memory at that size). Printed: wall time, peak RSS, the growth of peak
RSS between sizes, and the largest HSIC / JS difference to mspgt's statistics.

Note what mspgt's pass does beyond the baseline (and is timed with it): the probe word sample, the information
curves, the activation moments, the cache writes.

Usage: python benchmarks/bench_peers.py [--sizes 500 2000 10000] [--memory-limit-gib 16] [HYDRA_OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
METHODS = ("mspgt", "hf_collect", "nnsight_collect")


def _setup(n_sentences: int, cache_dir: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from mspgt.data.alignment import encode_sentences
    from mspgt.data.corpus import load_sentences
    from mspgt.data.labels import label_sentences
    from mspgt.extraction.groups import prepare_corpus
    from mspgt.model.loading import load_model

    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=[f"data.n_sentences={n_sentences}", "extraction.progress=false",
                                           *overrides])
    OmegaConf.update(cfg, "paths.cache_dir", cache_dir)
    sentences = load_sentences(cfg.data)
    loaded = load_model(cfg.model, cache_dir, need_attentions=True)
    labeled = label_sentences(sentences, cfg.data.labels, tasks=list(cfg.probes.tasks))
    encoded = encode_sentences(loaded.tokenizer, labeled, cfg.data.max_tokens)
    corpus = prepare_corpus(labeled, encoded, list(cfg.probes.tasks), cfg.bootstrap.group_size, cfg.probes,
                            cfg.bootstrap.grouping, cfg.bootstrap.grouping_seed)
    return cfg, loaded, corpus


def _collect(method: str, loaded, corpus, plan) -> list[list[tuple]]:
    """Forward every batch as the pass's own decoder calls (`plan`: extract.batch_calls) and keep everything on
    the host: per batch, per call (its positions in the batch, hidden states [L+1, B, T, d], attentions
    L x [B, H, T, T], mask). This list is what grows with the corpus."""
    pad = loaded.tokenizer.pad_token_id
    decoder = loaded.model.get_decoder()
    kept = []
    # HF's last hidden state is after the final norm; mspgt's h_L (docs/method.md) is the last block's output
    # (TransformerLens: blocks.{L-1}.hook_resid_post): one hook on the last block gives the same state here
    last: list[torch.Tensor] = []
    hook = loaded.blocks[-1].register_forward_hook(
        lambda _m, _i, out: last.append(out[0] if isinstance(out, tuple) else out))
    traced = decoder
    if method == "nnsight_collect":
        from nnsight import NNsight

        traced = NNsight(decoder)
    for batch, calls in plan:
        enc = [corpus.encoded[i] for i in batch]
        kept.append([])
        for call in calls:
            kept[-1].append((call, *_collect_call(method, traced, [enc[b] for b in call], pad, loaded.device, last)))
    hook.remove()
    return kept


def _collect_call(method: str, decoder, enc, pad: int, device, last: list[torch.Tensor]) -> tuple:
    """One decoder call's hidden states h_0..h_L [L+1, B, T, d], attentions L x [B, H, T, T] and mask, on the
    host. `decoder` is the HF decoder or, for nnsight, its NNsight wrapper."""
    from mspgt.extraction.extract import _padded_batch

    ids, mask = _padded_batch(enc, pad, device)  # the pass's own padding
    with torch.no_grad():
        if method == "hf_collect":
            out = decoder(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                          output_attentions=True, use_cache=False)
        else:
            with decoder.trace(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                               output_attentions=True, use_cache=False):
                saved = decoder.output.save()
            out = saved.value if hasattr(saved, "value") else saved
    states = [*out.hidden_states[:-1], last.pop()]  # h_0..h_L
    return torch.stack([h.cpu() for h in states]), [a.cpu() for a in out.attentions], mask.cpu()


def _compute(kept, corpus, batches, loaded, cka_keys, js_keys) -> dict[str, np.ndarray]:
    """Per-group HSIC (the same estimator as mspgt) and JS sums from the collected tensors: each batch's
    real tokens put back in batch order from its calls, as the pass does."""
    from mspgt.signals.attention_drift import attention_js_sums_variants
    from mspgt.signals.cka import group_hsic_variants

    n_groups = corpus.n_groups
    hsic = {v: [None] * n_groups for v in cka_keys}
    js = {v: np.zeros((n_groups, loaded.n_blocks)) for v in js_keys}
    for calls, batch in zip(kept, batches, strict=True):
        lengths = [len(corpus.encoded[i].input_ids) for i in batch]
        starts = np.concatenate([[0], np.cumsum(lengths)])
        groups = corpus.group_of[batch]
        tokens = None
        for call, hidden, attentions, mask in calls:
            T = hidden.shape[2]
            real = torch.cat([k * T + torch.arange(lengths[b]) for k, b in enumerate(call)])
            rows = hidden.reshape(hidden.shape[0], -1, hidden.shape[-1]).index_select(1, real)
            if tokens is None:
                tokens = hidden.new_empty((hidden.shape[0], int(starts[-1]), hidden.shape[-1]))
            tokens[:, torch.cat([torch.arange(starts[b], starts[b + 1]) for b in call])] = rows  # [m, N, d]
            by_sink = attention_js_sums_variants(tuple(attentions), mask, tuple(v == "nosink" for v in js_keys),
                                                 loaded.attention_layout)
            for v in js_keys:
                np.add.at(js[v], groups[call], by_sink[v == "nosink"][0].cpu().numpy())
        for g in np.unique(groups):
            members = np.nonzero(groups == g)[0]
            rows = tokens[:, starts[members[0]] : starts[members[-1] + 1]].float()
            keep = torch.cat([torch.arange(lengths[b]) > 0 for b in members])
            for v, matrix in group_hsic_variants(rows, keep, cka_keys).hsic.items():
                hsic[v][g] = matrix.cpu().numpy()
    return {**{f"hsic_{v}": np.stack(hsic[v]) for v in cka_keys}, **{f"js_sum_{v}": js[v] for v in js_keys}}


def one(method: str, n_sentences: int, work: Path, overrides: list[str]) -> dict:
    """Run one method at one size in this process; the statistics go to work/<method>-<n>.npz."""
    from mspgt.extraction.cache import StatisticsCache
    from mspgt.extraction.extract import (
        batch_calls,
        build_statistics,
        cache_material,
        call_overhead_tokens,
        stored_variants,
    )
    from mspgt.reports.store import data_identity

    cfg, loaded, corpus = _setup(n_sentences, str(work / "cache"), overrides)
    cka_keys, js_keys = stored_variants(cfg)
    batch_size = int(cfg.extraction.batch_size)
    t = time.perf_counter()
    if method == "mspgt":
        cache = StatisticsCache(work / f"stats-{n_sentences}", cache_material(cfg, data_identity(cfg.data)))
        build_statistics(loaded, corpus, cache, cfg)
        from mspgt.extraction.assemble import load_statistics

        stats = load_statistics(cache)
        arrays = {**{f"hsic_{v}": stats.hsic[v] for v in cka_keys}, **{f"js_sum_{v}": stats.js_sum[v] for v in js_keys}}
    else:
        plan = batch_calls(corpus, 0, corpus.n_groups, batch_size, call_overhead_tokens(cfg, loaded.device))
        kept = _collect(method, loaded, corpus, plan)
        collected_s = time.perf_counter() - t
        arrays = _compute(kept, corpus, [batch for batch, _ in plan], loaded, cka_keys, js_keys)
    seconds = time.perf_counter() - t
    np.savez(work / f"{method}-{n_sentences}.npz", **arrays)
    tokens = int(sum(len(e.input_ids) for e in corpus.encoded))
    info = {"seconds": seconds, "tokens": tokens, "model": loaded.name, "blocks": loaded.n_blocks}
    if method != "mspgt":
        info["collect_s"] = collected_s
    return info


def _peak_rss_run(args: list[str], limit_gib: float) -> tuple[int, float, str]:
    """Run a child; poll its RSS; kill it above the limit. Returns (returncode, peak RSS GiB, output)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0.0
    status = Path(f"/proc/{proc.pid}/status")
    killed = False
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 2**20
                    peak = max(peak, rss)
                    if rss > limit_gib and not killed:
                        proc.kill()
                        killed = True
        except OSError:
            pass
        time.sleep(0.1)
    out = proc.stdout.read() if proc.stdout else ""
    return (-9 if killed else proc.returncode), peak, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 10000])
    ap.add_argument("--memory-limit-gib", type=float, default=16.0)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.one:
        print("RESULT", json.dumps(one(args.one, args.n, Path(args.work), args.overrides)), flush=True)
        return
    methods = list(args.methods)
    if "nnsight_collect" in methods:
        try:
            import nnsight  # noqa: F401
        except ImportError:
            print("nnsight is not installed (pip install nnsight): its path is skipped")
            methods.remove("nnsight_collect")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, memory limit {args.memory_limit_gib} GiB")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        user_cache = Path(os.environ.get("MSPGT_CACHE_DIR", Path.home() / ".cache" / "mspgt"))
        (work / "cache").mkdir()
        for sub in ("models", "tokenizers"):  # the dequantised model, not rebuilt per run
            if (user_cache / sub).is_dir():
                (work / "cache" / sub).symlink_to(user_cache / sub)
        rows: dict[str, dict[int, dict]] = {m: {} for m in methods}
        for n in args.sizes:
            for method in methods:
                rc, peak, out = _peak_rss_run(
                    [sys.executable, __file__, "--one", method, "--n", str(n), "--work", tmp, *args.overrides],
                    args.memory_limit_gib,
                )
                if rc == 0:
                    info = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:])
                    info["peak_gib"] = peak
                    if method != "mspgt" and (work / f"mspgt-{n}.npz").exists():
                        a, b = np.load(work / f"mspgt-{n}.npz"), np.load(work / f"{method}-{n}.npz")
                        info["max_diff"] = max(  # relative to the statistic's own scale
                            float(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(a[k])), 1e-30)) for k in a.files)
                        info["diff_by_key"] = {k: float(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(a[k])), 1e-30))
                                               for k in a.files}
                    rows[method][n] = info
                    if info.get("max_diff", 0) > 1e-4:
                        print("  differs from mspgt:", info["diff_by_key"])
                    extra = f", collect {info['collect_s']:.1f} s" if "collect_s" in info else ""
                    diff = f", max relative diff to mspgt {info['max_diff']:.1e}" if "max_diff" in info else ""
                    print(f"{method:16s} {n:6d} sentences ({info['tokens']} tokens): {info['seconds']:7.1f} s{extra}, "
                          f"peak RSS {peak:5.2f} GiB{diff}", flush=True)
                else:
                    why = f"out of memory (RSS passed {args.memory_limit_gib} GiB)" if rc == -9 else f"failed (rc {rc})"
                    rows[method][n] = {"peak_gib": peak, "failed": why}
                    print(f"{method:16s} {n:6d} sentences: {why} after peak RSS {peak:.2f} GiB", flush=True)
                    if rc != -9:
                        print(out[-3000:])
        print("\npeak RSS growth between sizes (1.00 = flat):")
        for method in methods:
            done = [(n, r["peak_gib"]) for n, r in rows[method].items() if "failed" not in r]
            steps = ", ".join(f"{a}->{b}: {rb / ra:.2f}x" for (a, ra), (b, rb) in zip(done, done[1:], strict=False))
            per_k = ""
            if len(done) >= 2:
                (a, ra), (b, rb) = done[0], done[-1]
                per_k = f"; {(rb - ra) / (b - a) * 1000:.2f} GiB per 1,000 sentences"
            print(f"  {method:16s} {steps or '-'}{per_k}")
        print("\nwall time vs mspgt at the same size:")
        for method in methods:
            if method == "mspgt":
                continue
            for n, r in rows[method].items():
                base = rows["mspgt"].get(n, {})
                if "seconds" in r and "seconds" in base:
                    print(f"  {method:16s} {n:6d}: {r['seconds'] / base['seconds']:.2f}x mspgt's time")


if __name__ == "__main__":
    main()
