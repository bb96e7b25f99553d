"""The `shuffled_words` control (docs/controls.md): each sentence's words in a seeded random order, before
tokenisation, every word keeping its own labels.

Labels are computed on the sentence in its real order (mspgt/data/labels.py: a word's dependency relation,
entity and role are those of the real sentence), then the words move and their labels move with them: the
probes still learn word-level information, while the order a causal model reads is gone.

- Permutation (our definition): `numpy.random.default_rng([seed, h])`, h = 64 bits of the SHA-256 of the
  sentence's text, so a sentence gets the same order whatever corpus position or size; a draw that leaves
  the order unchanged is drawn again (a sentence whose words are all equal keeps its order: no other exists).
- New text: the words joined by single spaces, in the new order; each word's character span is recomputed.
  Spacing inside the real text (none before a comma) is not kept: a shuffled comma stands alone.
- Sentences without labelled words (the generation experiments' prompts): whitespace-separated words.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from mspgt.controls import SHUFFLED_WORDS, Control
from mspgt.data.corpus import Sentence
from mspgt.data.labels import LabeledSentence

MAX_REDRAWS = 64  # a permutation that keeps the order is drawn again, at most this often


def word_order(words: Sequence[str], text: str, seed: int) -> np.ndarray:
    """[n] the new order: position i of the shuffled sentence holds word order[i] of the real one."""
    n = len(words)
    h = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    rng = np.random.default_rng([int(seed), h])
    order = rng.permutation(n)
    if len(set(words)) < 2:  # nothing to move (one word, or all equal)
        return np.arange(n)
    for _ in range(MAX_REDRAWS):
        if any(words[j] != words[i] for i, j in enumerate(order)):
            return order
        order = rng.permutation(n)
    return order


def join_words(words: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """The words joined by single spaces and each word's (start, end) character span in that text."""
    spans, pos = [], 0
    for w in words:
        spans.append((pos, pos + len(w)))
        pos += len(w) + 1
    return " ".join(words), spans


def shuffle_labeled(sentence: LabeledSentence, seed: int) -> LabeledSentence:
    """The sentence with its words (and each word's labels, for every task) in the seeded new order."""
    order = word_order(sentence.words, sentence.text, seed)
    words = [sentence.words[j] for j in order]
    text, spans = join_words(words)
    labels = {task: [values[j] for j in order] for task, values in sentence.labels.items()}
    return LabeledSentence(text, sentence.doc_id, words, spans, labels)


def shuffle_text(sentence: Sentence, seed: int) -> Sentence:
    """A sentence without labels (a prompt source) with its whitespace-separated words shuffled."""
    words = sentence.text.split()
    order = word_order(words, sentence.text, seed)
    text, _ = join_words([words[j] for j in order])
    return Sentence(text=text, doc_id=sentence.doc_id)


def controlled_sentences(sentences: list[Sentence], control: Control) -> list[Sentence]:
    """The generation experiments' sentences under `control` (shuffled_words: every sentence shuffled)."""
    if control.name != SHUFFLED_WORDS:
        return sentences
    return [shuffle_text(s, control.seed) for s in sentences]


__all__ = ["controlled_sentences", "join_words", "shuffle_labeled", "shuffle_text", "word_order"]
