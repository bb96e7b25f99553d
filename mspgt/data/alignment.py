"""Word-to-token alignment for the probes (docs/method.md "Signal 2"): each word is read at its LAST sub-word
token, where a causal model has seen the whole word.

A token belongs to a word when their character spans overlap (byte-level BPE tokens carry the leading
space: " cat" = (3, 7) for the word (4, 7)); special tokens (BOS, [CLS], ...) have empty (0, 0) offsets and
belong to no word. Every sentence is tokenised on its own, with the tokenizer's special tokens, and
truncated at `max_tokens`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mspgt.data.labels import LabeledSentence
from mspgt.errors import MspgtError


@dataclass
class EncodedSentence:
    """Token ids of one sentence and, per word, the index of its last sub-word token."""

    input_ids: list[int]
    word_token: list[int]  # per word: index in input_ids of its last sub-word token; -1: truncated / no token


def _overlaps(a: int, b: int, start: int, end: int) -> bool:
    return a < end and b > start  # (0, 0) special tokens and empty spans overlap nothing


def last_subword_tokens(
    offsets: Sequence[tuple[int, int]],
    spans: Sequence[tuple[int, int]],
    cut_offsets: Sequence[tuple[int, int]] = (),
) -> list[int]:
    """For each word span: the index of the last token overlapping it, or -1.

    cut_offsets: offsets of the tokens truncation removed; a word that overlaps any of them lost its end,
    so it gets -1 too (the model never read the whole word).
    Tokens and words both come in text order, so one forward sweep suffices.
    """
    out = []
    first = 0  # first token that may still overlap the current word
    for start, end in spans:
        while first < len(offsets) and offsets[first][1] <= start:  # ended before the word (or special)
            first += 1
        last = -1
        for j in range(first, len(offsets)):
            a, b = offsets[j]
            if a >= end and (a, b) != (0, 0):
                break
            if _overlaps(a, b, start, end):
                last = j
        if last >= 0 and any(_overlaps(a, b, start, end) for a, b in cut_offsets):
            last = -1
        out.append(last)
    return out


def encode_sentences(
    tokenizer, sentences: Sequence[LabeledSentence], max_tokens: int, batch_size: int = 1024
) -> list[EncodedSentence]:
    """Tokenise each sentence on its own (special tokens added, truncated at `max_tokens`) and align words.

    Needs a fast (Rust) tokenizer for the character offsets.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise MspgtError(
            f"the tokenizer {type(tokenizer).__name__} is a slow (Python) tokenizer without character offsets",
            "load the model's fast tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True); it needs a "
            "tokenizer.json or the `tokenizers` package)",
        )
    if max_tokens < 1:
        raise MspgtError(f"max_tokens={max_tokens}", "set data.max_tokens to a positive number of tokens")
    out: list[EncodedSentence] = []
    for begin in range(0, len(sentences), batch_size):
        batch = sentences[begin : begin + batch_size]
        enc = tokenizer(
            [s.text for s in batch],
            add_special_tokens=True,
            return_offsets_mapping=True,
            truncation=True,
            max_length=max_tokens,
        )
        for k, s in enumerate(batch):
            offsets = [tuple(o) for o in enc["offset_mapping"][k]]
            cut = [tuple(o) for over in enc.encodings[k].overflowing for o in over.offsets]
            out.append(EncodedSentence(list(enc["input_ids"][k]), last_subword_tokens(offsets, s.spans, cut)))
    return out
