"""Benchmark: what the information curves (extraction.information, mspgt/signals/information.py) add to the
boundary pass on the default model (SmolLM2-135M; target: at most 10% of extraction time).

Two measures, both printed: (1) extraction wall time with the curves on vs off, interleaved repeats, fastest
of each; (2) the time spent inside `group_information_tensor` as a share of the extraction with the curves on (less
sensitive to a shared, loaded machine than (1)).

Usage: python benchmarks/bench_information.py [--sentences 400] [--repeats 3] [HYDRA_OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]


def prepared_pass(n_sentences: int, overrides: list[str]):
    """(cfg, loaded model, prepared corpus, sentences) for one boundary pass of the default job's settings with
    `n_sentences` sentences and `overrides`: what the extraction benchmarks time."""
    from hydra import compose, initialize_config_dir

    from mspgt.data.alignment import encode_sentences
    from mspgt.data.corpus import load_sentences
    from mspgt.data.labels import label_sentences
    from mspgt.extraction.groups import prepare_corpus
    from mspgt.model.loading import load_model

    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=[f"data.n_sentences={n_sentences}", "extraction.progress=false",
                                           *overrides])
    sentences = load_sentences(cfg.data)
    loaded = load_model(cfg.model, cfg.paths.cache_dir, need_attentions=True)
    labeled = label_sentences(sentences, cfg.data.labels, tasks=list(cfg.probes.tasks))
    encoded = encode_sentences(loaded.tokenizer, labeled, cfg.data.max_tokens)
    corpus = prepare_corpus(labeled, encoded, list(cfg.probes.tasks), cfg.bootstrap.group_size, cfg.probes)
    return cfg, loaded, corpus, sentences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import mspgt.extraction.extract as extract
    from mspgt.extraction.cache import StatisticsCache
    from mspgt.reports.store import data_identity

    cfg, loaded, corpus, sentences = prepared_pass(args.sentences, args.overrides)
    work = tempfile.mkdtemp(prefix="mspgt-bench-info-")

    inside = [0.0]
    original = extract.group_information_tensor

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            inside[0] += time.perf_counter() - t

    extract.group_information_tensor = timed
    times: dict[bool, list[float]] = {True: [], False: []}
    shares = []
    for rep in range(args.repeats):
        for enabled in (False, True):
            OmegaConf.update(cfg, "extraction.information.enabled", enabled)
            cache = StatisticsCache(Path(work) / f"{rep}-{enabled}", extract.cache_material(cfg, data_identity(cfg.data)))
            inside[0] = 0.0
            t = time.perf_counter()
            extract.build_statistics(loaded, corpus, cache, cfg)
            times[enabled].append(time.perf_counter() - t)
            if enabled:
                shares.append(inside[0] / times[True][-1])
            print(f"repeat {rep}: information {'on ' if enabled else 'off'} {times[enabled][-1]:.1f} s"
                  + (f" (inside group_information_tensor {inside[0]:.1f} s)" if enabled else ""), flush=True)
    on, off = min(times[True]), min(times[False])
    print(f"\n{loaded.name}, {len(sentences)} sentences, {corpus.n_groups} groups, alpha="
          f"{cfg.extraction.information.alpha}")
    print(f"extraction with curves / without (fastest of {args.repeats}): {on:.1f} / {off:.1f} s = {on / off:.3f}")
    print(f"time inside group_information_tensor / extraction with curves: {min(shares):.3f} (min), "
          f"{max(shares):.3f} (max); target <= 0.10")


if __name__ == "__main__":
    main()
