"""Benchmark: what the rival layer curves (conf/rivals, mspgt/signals/rivals.py) add to the boundary pass on the
default model (SmolLM2-135M; target: extraction with every rival at most 1.2x the extraction without).

Prints, for one pass with the rivals on and one with them off (alternated over --repeats, fastest of each):
the wall times, the time inside each rival's per-group function (block influence, logit lens) and inside the
information curves, the intrinsic-dimension step after the pass (dadapy over the stored probe sample; then
once more, as a rerun reads it: the artifact stored beside the statistics), the
ratio (pass with rivals + ID step) / pass without, and the process's peak RSS (run once at 500 and once at
2,000 sentences to see that memory stays flat in corpus size).

Usage: python benchmarks/bench_rivals.py [--sentences 500] [--repeats 1] [HYDRA_OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
TIMED = ("group_block_influence", "logit_lens_sums", "group_information_tensor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import numpy as np
    from bench_information import prepared_pass

    import mspgt.extraction.extract as extract
    from mspgt.experiments.boundary import obtain_intrinsic_dimension
    from mspgt.extraction.assemble import load_statistics
    from mspgt.extraction.cache import StatisticsCache
    from mspgt.reports.store import data_identity
    from mspgt.signals.rivals import RivalSettings

    cfg, loaded, corpus, sentences = prepared_pass(args.sentences, args.overrides)
    work = tempfile.mkdtemp(prefix="mspgt-bench-rivals-")

    inside: dict[str, float] = defaultdict(float)
    for name in TIMED:
        original = getattr(extract, name)

        def timed(*a, _f=original, _n=name, **k):
            t = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                inside[_n] += time.perf_counter() - t

        setattr(extract, name, timed)
    times: dict[bool, list[float]] = {True: [], False: []}
    split: list[dict[str, float]] = []
    for rep in range(args.repeats):
        for on in (False, True):
            for key in ("block_influence", "logit_lens"):
                OmegaConf.update(cfg, f"rivals.{key}", on)
            cache = StatisticsCache(Path(work) / f"{rep}-{on}", extract.cache_material(cfg, data_identity(cfg.data)))
            inside.clear()
            t = time.perf_counter()
            extract.build_statistics(loaded, corpus, cache, cfg)
            times[on].append(time.perf_counter() - t)
            if on:
                stats = load_statistics(cache)
                settings = RivalSettings.from_config(cfg.rivals)
                t = time.perf_counter()
                _, cached = obtain_intrinsic_dimension(cfg, stats, settings, cache)
                id_s = time.perf_counter() - t
                t = time.perf_counter()
                _, again = obtain_intrinsic_dimension(cfg, stats, settings, cache)  # a rerun: the stored artifact
                assert not cached and again
                split.append({**inside, "intrinsic_dimension (after the pass)": id_s,
                              "intrinsic_dimension read back from the cache (a rerun)": time.perf_counter() - t})
            print(f"repeat {rep}: rivals {'on ' if on else 'off'} {times[on][-1]:.1f} s", flush=True)
    on, off = min(times[True]), min(times[False])
    best = split[int(np.argmin(times[True]))]
    print(f"\n{loaded.name}, {len(sentences)} sentences, {corpus.n_groups} groups, "
          f"logit lens {cfg.rivals.logit_lens_tokens} tokens per group, ID on {cfg.rivals.id_points} words per group")
    for name, seconds in best.items():
        print(f"  inside {name}: {seconds:.2f} s")
    total = on + best["intrinsic_dimension (after the pass)"]
    print(f"extraction with rivals (+ ID step) / without: {total:.1f} / {off:.1f} s = {total / off:.3f} "
          f"(target <= 1.2)")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
