"""How a batch is split into decoder calls (extract.decoder_calls): the cheapest split, found exactly, and the
statistics the same whichever split runs (padding is masked; only float rounding may differ)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from mspgt.data.alignment import EncodedSentence
from mspgt.data.labels import LabeledSentence
from mspgt.extraction import extract
from mspgt.extraction.groups import prepare_corpus
from tests.test_probe_sample import PROBES


def _cost(runs: list[list[int]], lengths: list[int], overhead: int) -> int:
    return sum(len(r) * max(lengths[b] for b in r) + overhead for r in runs)


def _set_partitions(items: list[int]):
    """Every partition of `items` into non-empty blocks."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _set_partitions(rest):
        for k in range(len(part)):
            yield [*part[:k], [first, *part[k]], *part[k + 1 :]]
        yield [[first], *part]


@pytest.mark.parametrize("overhead", [0, 3, 10, 40])
def test_the_split_is_the_cheapest_of_every_partition_of_the_batch(overhead: int) -> None:
    """Planted optimum: against every partition of the sentences into calls (Bell(7) = 877 for 7 sentences,
    not only the runs of the sorted order the rule searches), nothing is cheaper than what it returns."""
    rng = np.random.default_rng(overhead)
    for _ in range(12):
        lengths = [int(x) for x in rng.integers(1, 40, size=int(rng.integers(1, 8)))]
        runs = extract.decoder_calls(lengths, overhead)
        assert sorted(itertools.chain(*runs)) == list(range(len(lengths)))  # each sentence in one call, once
        best = min(_cost(p, lengths, overhead) for p in _set_partitions(list(range(len(lengths)))))
        assert _cost(runs, lengths, overhead) == best


def test_no_overhead_means_no_padding_and_a_huge_one_keeps_the_batch_whole() -> None:
    lengths = [5, 9, 5, 2, 9, 9, 3, 2]
    runs = extract.decoder_calls(lengths, 0)
    assert all(len({lengths[b] for b in r}) == 1 for r in runs)  # padded tokens == real tokens
    assert len(runs) == len(set(lengths))
    assert extract.decoder_calls(lengths, 10**9) == [list(range(len(lengths)))]  # one call, the batch's order
    # a big overhead still splits a batch whose padding costs more: one long sentence among short ones
    assert len(extract.decoder_calls([4] * 15 + [100], 50)) == 2


def _varied_corpus(n_sentences: int = 48):
    labeled, encoded = [], []
    for i in range(n_sentences):
        n = 2 + (i * 7) % 13  # 2..14 words: batches with much padding
        ws = [f"w{i}_{k}" for k in range(n)]
        spans, at = [], 0
        for w in ws:
            spans.append((at, at + len(w)))
            at += len(w) + 1
        labeled.append(LabeledSentence(" ".join(ws), f"doc{i // 10}", ws, spans, {"pos": ["NOUN"] * n}))
        encoded.append(EncodedSentence([(i + k) % 50 for k in range(n + 1)], list(range(1, n + 1))))
    return labeled, encoded


def test_the_statistics_do_not_depend_on_how_a_batch_is_split(shared_cache) -> None:
    """One call per batch vs the sorted calls that pad nothing (overhead 0): every array of a chunk (HSIC per
    group, attention JS sums, information curves, activation moments, the probe sample and its labels)
    agrees to float rounding. Rows gathered into the wrong places would move the per-group HSIC and the
    probe sample."""
    from hydra import compose, initialize_config_dir

    from mspgt.model.loading import load_model

    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "conf"), version_base=None):
        cfg = compose("config", overrides=["model=tiny", "extraction.variants=all", "bootstrap.group_size=4"])
    loaded = load_model(cfg.model, shared_cache, need_attentions=True, probe_tokens=16)
    labeled, encoded = _varied_corpus()
    corpus = prepare_corpus(labeled, encoded, ["pos"], 4, PROBES, "consecutive")  # 12 groups
    cka_keys, js_keys = extract.stored_variants(cfg)
    info = extract.information_settings(cfg)
    splits = [len(extract.decoder_calls([len(encoded[i].input_ids) for i in b], 0))
              for b in extract._batches(corpus.group_of, 0, 12, 16)]
    assert min(splits) > 1  # every batch is really split
    whole, split = (extract._chunk_statistics(loaded, corpus, 0, 12, 16, 0.0, None, cka_keys, js_keys, info,
                                              overhead_tokens=overhead) for overhead in (10**9, 0))
    assert set(whole) == set(split)
    for key, a in whole.items():
        b = split[key]
        if a.dtype.kind in "iu":
            np.testing.assert_array_equal(a, b, err_msg=key)
        else:
            np.testing.assert_allclose(b.astype(np.float64), a.astype(np.float64), rtol=2e-3 if a.dtype == np.float16
                                       else 1e-4, atol=1e-3 if a.dtype == np.float16 else 1e-6, err_msg=key)
