"""Sentence groups for the pass (docs/method.md "Data unit"): sentences in groups (the bootstrap unit, in
the order bootstrap.grouping gives), a seeded split of groups into probe train / held out, and the bounded word
sample of each side. Deterministic; no model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from mspgt.data.alignment import EncodedSentence
from mspgt.data.labels import LabeledSentence, label_names
from mspgt.errors import MspgtError


@dataclass
class PreparedCorpus:
    """Sentences, their tokens and labels, the groups they form and which words enter the probe sample."""

    encoded: list[EncodedSentence]
    group_of: np.ndarray  # [S] group index of each sentence
    group_is_eval: np.ndarray  # [G] held out for probe evaluation
    label_names: dict[str, list[str]]
    label_ids: list[dict[str, np.ndarray]]  # per sentence: task -> [words] class ids (-1 = none)
    word_types: list[np.ndarray]  # per sentence: [words] id of the lower-cased word
    probe_take: list[np.ndarray]  # per sentence: [words] 0 = not sampled, 1 = train, 2 = held out
    order: np.ndarray  # [S] index in the loaded corpus of each sentence here (bootstrap.grouping)

    @property
    def n_groups(self) -> int:
        return int(self.group_is_eval.shape[0])


GROUPINGS = ("shuffled", "consecutive")


def sentence_order(n: int, grouping: str, seed: int) -> np.ndarray:
    """The order in which sentences enter groups (bootstrap.grouping; our definition, docs/method.md "Data unit").

    `consecutive`: corpus order, so a group holds neighbouring sentences (mostly one document), and a
    minibatch CKA over such groups estimates a within-document CKA. `shuffled`: a seeded permutation, so a
    group holds sentences drawn at random across the corpus, and the minibatch CKA estimates the corpus's
    (population) CKA, as Nguyen et al. (2021) do with random minibatches. [S] sentence indices.
    """
    if grouping == "consecutive":
        return np.arange(n)
    if grouping == "shuffled":
        return np.random.default_rng([seed, 1]).permutation(n)
    raise MspgtError(f"bootstrap.grouping={grouping!r}", f"use one of {list(GROUPINGS)}")


def spread_word_sample(word_group: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Which of N candidate words enter a bounded probe sample: [N] group ids -> [N] bool (our definition).

    The sample is spread over every group of its side: each group gives its words in a random order, and
    words are taken rank by rank (every group's first word, then every group's second word, ...; groups in
    a random order within a rank) until `cap` words are taken. So each group contributes the same number
    of words (one more for some, fewer where a group has fewer words), and a bootstrap over groups sees the
    whole sample. Deterministic for the generator's seed.
    """
    n = word_group.shape[0]
    take = np.zeros(n, dtype=bool)
    if n <= cap:
        take[:] = True
        return take
    within = rng.permutation(n)  # [N] random order of words within each group
    by_group = np.lexsort((within, word_group))  # [N] words sorted by group, then at random
    first_of_group = np.searchsorted(word_group[by_group], word_group[by_group], side="left")  # [N]
    rank = np.empty(n, dtype=np.int64)
    rank[by_group] = np.arange(n) - first_of_group  # [N] a word's rank within its group
    group_priority = rng.permutation(int(word_group.max()) + 1)  # random order of groups within a rank
    chosen = np.lexsort((group_priority[word_group], rank))[:cap]
    take[chosen] = True
    return take


def prepare_corpus(
    labeled: list[LabeledSentence], encoded: list[EncodedSentence], tasks: list[str], group_size: int,
    probes: DictConfig, grouping: str = "consecutive", grouping_seed: int = 0,
) -> PreparedCorpus:
    """Groups of `group_size` sentences in the order `sentence_order(grouping)` gives; a seeded split of
    groups into probe train / held out; the bounded word sample of each side, spread over all its groups
    (`spread_word_sample`). Deterministic. The corpus is kept in group order (`order` maps back)."""
    n = len(labeled)
    order = sentence_order(n, grouping, grouping_seed)  # [S]
    labeled = [labeled[i] for i in order]
    encoded = [encoded[i] for i in order]
    group_of = np.arange(n) // group_size
    n_groups = int(group_of[-1]) + 1
    n_eval = max(1, round(probes.eval_fraction * n_groups))
    held_out = np.random.default_rng(probes.seed).permutation(n_groups)[:n_eval]
    group_is_eval = np.zeros(n_groups, dtype=bool)
    group_is_eval[held_out] = True
    names = label_names(labeled, tasks)
    index = {t: {name: i for i, name in enumerate(ns)} for t, ns in names.items()}
    types = {w: i for i, w in enumerate(sorted({w.lower() for s in labeled for w in s.words}))}
    label_ids, word_types, probe_take = [], [], []
    for s in labeled:
        label_ids.append({t: np.array([index[t][x] for x in s.labels[t]], dtype=np.int64) for t in tasks})
        word_types.append(np.array([types[w.lower()] for w in s.words], dtype=np.int64))
        probe_take.append(np.zeros(len(s.words), dtype=np.int8))
    # candidates: every word with a token (not truncated away), per side of the split
    cand = [(i, w) for i, enc in enumerate(encoded) for w, tok in enumerate(enc.word_token) if tok >= 0]
    sent = np.array([i for i, _ in cand], dtype=np.int64)  # [N]
    word = np.array([w for _, w in cand], dtype=np.int64)  # [N]
    for split, cap in ((1, probes.max_train_words), (2, probes.max_eval_words)):
        side = np.flatnonzero(group_is_eval[group_of[sent]] == (split == 2)) if sent.size else sent
        chosen = side[spread_word_sample(group_of[sent[side]], cap, np.random.default_rng([probes.seed, split]))]
        for i, w in zip(sent[chosen], word[chosen], strict=True):
            probe_take[i][w] = split
    return PreparedCorpus(encoded, group_of, group_is_eval, names, label_ids, word_types, probe_take, order)
