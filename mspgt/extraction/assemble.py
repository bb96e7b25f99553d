"""Cache assembly: the corpus statistics (mspgt/statistics.py) from the chunks of a complete cache entry."""

from __future__ import annotations

import numpy as np

from mspgt.extraction.cache import StatisticsCache, chunk_range_problem
from mspgt.signals.information import CURVES
from mspgt.statistics import CorpusStatistics, ProbeSample

SPLITS = ("train", "eval")  # the probe sample's splits; their features "<split>_feat" are most of a chunk's bytes


def _feature_rows(cache: StatisticsCache, i: int, row: tuple[int, int]) -> dict[str, int] | None:
    """Words per split in chunk i, from its members' headers (before the checksum is checked: a corrupt
    header must not size an allocation); None, and the chunk dropped, where they disagree with each other
    or with the entry's states and width."""
    headers = cache.chunk_headers(i, [f"{split}_{kind}" for split in SPLITS for kind in ("feat", "group")])
    if headers is None:
        return None
    out = {}
    for split in SPLITS:
        shape, words = headers[f"{split}_feat"][0], headers[f"{split}_group"][0]
        if len(words) != 1 or tuple(shape) != (words[0], *row):
            why = f"{split}_feat is {list(shape)} beside {list(words)} words, for {row[0]} states of width {row[1]}"
            cache.discard_chunk(i, ValueError(why))
            return None
        out[split] = int(words[0])
    return out


def load_statistics(cache: StatisticsCache) -> CorpusStatistics | None:
    """Assemble the statistics from a complete cache entry; None if a chunk is missing or corrupt.

    The probe sample's features are read from each chunk straight into their place in one array per split
    (sized from the chunks' headers first): one copy, and at most one chunk's file in memory beside them,
    instead of every chunk parsed and then concatenated (twice the sample)."""
    if not cache.is_complete():
        return None
    info = cache.info()
    label_names, n_blocks = info["label_names"], int(info["n_blocks"])
    n_chunks = cache.n_chunks or 0
    row = (n_blocks + 1, int(info["hidden_size"]))  # one word's states h_0..h_L
    rows = [_feature_rows(cache, i, row) for i in range(n_chunks)]  # the chunk's words per split, or None
    if any(r is None for r in rows):
        return None
    slices: list[dict[str, np.ndarray]] = [{} for _ in range(n_chunks)]
    features = {}
    for split in SPLITS:
        ends = np.cumsum([0] + [r[split] for r in rows if r is not None])
        features[split] = np.empty((int(ends[-1]), *row), np.float16)
        for i in range(n_chunks):
            slices[i][f"{split}_feat"] = features[split][ends[i] : ends[i + 1]]
    chunks = []
    lo = 0
    for i in range(n_chunks):
        c = cache.load_chunk(i, into=slices[i])
        if c is None:
            return None
        hi = lo + len(c["info_ntok"]) if "info_ntok" in c else None
        problem = chunk_range_problem(c, lo, hi) if hi is not None else None
        if problem:  # chunks moved or swapped together with their checksums: rebuilt, never used
            cache.discard_chunk(i, ValueError(problem))
            return None
        chunks.append(c)
        lo = hi if hi is not None else lo

    def cat(key: str) -> np.ndarray:
        return np.concatenate([c[key] for c in chunks])

    tasks = list(label_names)

    def sample(name: str) -> ProbeSample:
        return ProbeSample(
            features=features[name],
            labels={t: cat(f"{name}_lab_{t}") for t in tasks},
            group=cat(f"{name}_group"),
            word_type=cat(f"{name}_type"),
        )

    return CorpusStatistics(
        n_blocks=n_blocks,
        hsic={v: cat(f"hsic_{v}") for v in info["cka_variants"]},
        n_tokens={v: cat(f"ntok_{v}") for v in info["cka_variants"]},
        js_sum={v: cat(f"js_sum_{v}") for v in info["js_variants"]},
        js_first_uniform={v: cat(f"js_first_{v}") for v in info["js_variants"]},
        js_count={v: cat(f"js_count_{v}") for v in info["js_variants"]},
        act_sum=sum(c["act_sum"] for c in chunks),
        act_sq_sum=sum(c["act_sq"] for c in chunks),
        act_count=int(sum(int(c["act_count"]) for c in chunks)),
        probe_train=sample("train"),
        probe_eval=sample("eval"),
        label_names=label_names,
        group_is_eval=cat("group_is_eval"),
        information={c: cat(f"info_{c}") for c in CURVES if f"info_{c}" in chunks[0]},
        information_tokens=cat("info_ntok") if "info_ntok" in chunks[0] else None,
        rivals={k: cat(k) for k in ("bi_sum", "bi_count", "lens_sum", "lens_count") if k in chunks[0]
                and (not k.endswith("_count") or k.replace("_count", "_sum") in chunks[0])},
        meta={"cache_dir": str(cache.dir), "n_chunks": cache.n_chunks, **info},
    )
