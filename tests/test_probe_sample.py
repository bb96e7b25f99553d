"""The bounded probe word sample and the sentence groups (prepare_corpus): spread over groups, seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from mspgt.data.alignment import EncodedSentence
from mspgt.data.labels import LabeledSentence
from mspgt.errors import MspgtError
from mspgt.extraction.groups import prepare_corpus, sentence_order, spread_word_sample

PROBES = OmegaConf.create({"eval_fraction": 0.3, "seed": 0, "max_train_words": 120, "max_eval_words": 45})


def _corpus(n_sentences: int = 120, words: int = 8) -> tuple[list[LabeledSentence], list[EncodedSentence]]:
    labeled, encoded = [], []
    for i in range(n_sentences):
        ws = [f"w{i}_{k}" for k in range(words)]
        text = " ".join(ws)
        spans, at = [], 0
        for w in ws:
            spans.append((at, at + len(w)))
            at += len(w) + 1
        labeled.append(LabeledSentence(text, f"doc{i // 10}", ws, spans, {"pos": ["NOUN"] * words}))
        encoded.append(EncodedSentence(list(range(words + 1)), list(range(1, words + 1))))
    return labeled, encoded


def test_spread_gives_every_group_the_same_number_of_words() -> None:
    group = np.repeat(np.arange(10), 30)  # 10 groups of 30 candidate words
    take = spread_word_sample(group, 47, np.random.default_rng(0))
    per_group = np.bincount(group[take], minlength=10)
    assert take.sum() == 47 and per_group.max() - per_group.min() <= 1  # 4 or 5 words from every group
    # a group with fewer words than its share gives them all; the rest goes to the others
    group = np.concatenate([np.zeros(2, dtype=np.int64), np.repeat(np.arange(1, 5), 20)])
    per_group = np.bincount(group[spread_word_sample(group, 30, np.random.default_rng(1))], minlength=5)
    assert per_group[0] == 2 and per_group[1:].min() >= 7 and per_group.sum() == 30
    # seeded: the same seed the same words, another seed other words; a cap above N takes all
    a = spread_word_sample(np.repeat(np.arange(10), 30), 47, np.random.default_rng(5))
    assert (a == spread_word_sample(np.repeat(np.arange(10), 30), 47, np.random.default_rng(5))).all()
    assert (a != spread_word_sample(np.repeat(np.arange(10), 30), 47, np.random.default_rng(6))).any()
    assert spread_word_sample(np.arange(5), 9, np.random.default_rng(0)).all()


def test_held_out_sample_covers_every_held_out_group() -> None:
    """Audit defect: the held-out sample was the first words in corpus order (few groups). Now it is spread:
    every held-out group gives words, as evenly as the cap allows."""
    labeled, encoded = _corpus()
    corpus = prepare_corpus(labeled, encoded, ["pos"], 4, PROBES, "consecutive")
    group_of_word = [np.full(len(t), corpus.group_of[i]) for i, t in enumerate(corpus.probe_take)]
    take = np.concatenate(corpus.probe_take)
    groups = np.concatenate(group_of_word)
    for split, cap, is_eval in ((1, PROBES.max_train_words, False), (2, PROBES.max_eval_words, True)):
        side = np.flatnonzero(corpus.group_is_eval == is_eval)
        per_group = np.bincount(groups[take == split], minlength=corpus.n_groups)[side]
        assert per_group.sum() == cap
        assert per_group.min() >= 1 and per_group.max() - per_group.min() <= 1, per_group
    assert not (take[np.isin(groups, np.flatnonzero(corpus.group_is_eval))] == 1).any()  # sides never mix


def test_groupings() -> None:
    labeled, encoded = _corpus()
    consecutive = prepare_corpus(labeled, encoded, ["pos"], 4, PROBES, "consecutive")
    assert (consecutive.order == np.arange(120)).all()
    shuffled = prepare_corpus(labeled, encoded, ["pos"], 4, PROBES, "shuffled", 3)
    assert sorted(shuffled.order.tolist()) == list(range(120)) and (shuffled.order != np.arange(120)).any()
    assert shuffled.encoded[0] is encoded[shuffled.order[0]]  # the corpus is kept in group order
    first_group_docs = {labeled[i].doc_id for i in shuffled.order[:4]}
    assert len(first_group_docs) > 1  # drawn across documents (10 sentences per document here)
    assert (sentence_order(120, "shuffled", 3) == shuffled.order).all()
    with pytest.raises(MspgtError, match="bootstrap.grouping"):
        sentence_order(10, "random", 0)


def test_probe_features_are_clipped_to_the_float16_range_loudly(caplog) -> None:
    """The probe sample's float16 copy: values in range are the plain float16 cast; values past +-65504
    (massive activations, inf) are clipped to it with a warning that counts them."""
    import logging

    import torch

    from mspgt.extraction.extract import FLOAT16_MAX, _to_float16

    x = torch.randn(7, 3, 5) * 100
    out = np.full((7, 3, 5), np.nan, np.float16)
    with caplog.at_level(logging.WARNING):
        _to_float16(x.permute(1, 0, 2).permute(1, 0, 2), out)  # strided input, as the pass gives it
    np.testing.assert_array_equal(out, x.half().numpy())
    assert "float16 range" not in caplog.text
    x[0, 0, 0], x[1, 2, 3], x[2, 1, 1] = 1e6, -float("inf"), -7e4
    with caplog.at_level(logging.WARNING):
        _to_float16(x.to(torch.bfloat16), out)
    assert "3 probe feature values exceed the float16 range" in caplog.text
    assert out[0, 0, 0] == FLOAT16_MAX and out[1, 2, 3] == -FLOAT16_MAX and out[2, 1, 1] == -FLOAT16_MAX
    assert np.isfinite(out).all()


def tiny_chunked_pass(shared_cache: Path, n_sentences: int):
    """(cfg, model, corpus) for a pass of the tiny model over `n_sentences` synthetic sentences: batches of 8,
    consecutive groups of 4, two groups per chunk (n_sentences / 8 chunks)."""
    from hydra import compose, initialize_config_dir

    from mspgt.model.loading import load_model

    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "conf"), version_base=None):
        cfg = compose("config", overrides=["model=tiny", "extraction.batch_size=8", "extraction.chunk_groups=2",
                                           "extraction.progress=false", "bootstrap.group_size=4"])
    loaded = load_model(cfg.model, shared_cache, need_attentions=True, probe_tokens=16)
    labeled, encoded = _corpus(n_sentences)
    return cfg, loaded, prepare_corpus(labeled, encoded, ["pos"], 4, PROBES, "consecutive")


def test_reused_feature_buffers_never_change_a_written_chunk(tmp_path, shared_cache, monkeypatch) -> None:
    """The pass writes each chunk's probe features into one of two buffers used in turn, while the previous
    chunk is still being written in the background. With a slow writer (every write held back), each chunk
    on disk equals that chunk computed alone into fresh arrays: no buffer is reused while a write holds it."""
    import time

    from mspgt.extraction import extract
    from mspgt.extraction.cache import StatisticsCache

    cfg, loaded, corpus = tiny_chunked_pass(shared_cache, 48)  # 12 groups: 6 chunks
    save = StatisticsCache.save_chunk

    def slow_save(self, i, arrays):
        time.sleep(0.2)  # the next chunk's batches run meanwhile
        save(self, i, arrays)

    monkeypatch.setattr(StatisticsCache, "save_chunk", slow_save)
    cache = StatisticsCache(tmp_path, {"test": "buffers"})
    extract.build_statistics(loaded, corpus, cache, cfg)
    cka_keys, js_keys = extract.stored_variants(cfg)
    sizes = set()
    for i in range(6):
        alone = extract._chunk_statistics(loaded, corpus, 2 * i, 2 * i + 2, 8, 0.0, None, cka_keys, js_keys,
                                          extract.information_settings(cfg),
                                          overhead_tokens=extract.call_overhead_tokens(cfg, loaded.device))
        written = cache.load_chunk(i)
        assert written is not None and set(alone) <= set(written)
        for key, value in alone.items():
            np.testing.assert_array_equal(written[key], value, err_msg=f"chunk {i}: {key}")
        sizes.add(len(alone["train_feat"]))
        assert len(alone["train_feat"]) > 0 and np.isfinite(written["train_feat"]).all()
    assert len(sizes) > 1  # chunks of different sizes share the buffers (views of their first rows)
