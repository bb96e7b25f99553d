"""The statistics one pass over the corpus keeps, per group of sentences (the bootstrap unit), and the keys of
the signal variants they hold: the data types shared by mspgt/extraction/ (which writes them) and
mspgt/signals/ (which reads them), below both (no other mspgt import).

A bootstrap resample is a vector of group weights (how often each group was drawn); every signal is
recomputed from these arrays with those weights, without the model (docs/method.md "Data unit").
Shapes: G groups, L blocks, so L + 1 residual-stream states h_0..h_L; d hidden size; N probe words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# CKA variants the pass can store (extraction.variants): (standardise per dimension?, exclude position 0?)
CKA_VARIANTS = {
    "raw": (False, False),
    "raw_nofirst": (False, True),
    "std": (True, False),
    "std_nofirst": (True, True),
}
# Attention variants: full distribution, or key 0 (the attention sink) dropped and the rest renormalised.
JS_VARIANTS = ("full", "nosink")


def cka_variant(standardise: bool, exclude_first_position: bool) -> str:
    """The key of the CKA variant that fusion settings select."""
    for key, flags in CKA_VARIANTS.items():
        if flags == (standardise, exclude_first_position):
            return key
    raise AssertionError("unreachable")


def entry_std(mean: np.ndarray | float, mean_sq: np.ndarray | float) -> np.ndarray:
    """The one definition of the activation scale (our definition): the standard deviation of all entries of
    h_l over tokens and dimensions, from the mean entry and the mean squared entry,
    s_l = sqrt(max(E[h^2] - E[h]^2, 0)). Used for the boundary result's activation_std_all_tokens and the
    intervention's s_l (kind `pooled`, mspgt/interventions/activation_scale.py)."""
    mean = np.asarray(mean, dtype=np.float64)
    return np.sqrt(np.maximum(np.asarray(mean_sq, dtype=np.float64) - mean**2, 0.0))


def js_variant(drop_sink: bool) -> str:
    """The key of the attention variant that fusion settings select."""
    return "nosink" if drop_sink else "full"


def variant_keys(fusion: Any) -> tuple[str, str]:
    """(CKA variant, JS variant) that the fusion settings (`fusion.cka.*`, `fusion.attention.drop_sink`) select."""
    return (cka_variant(bool(fusion.cka.standardise), bool(fusion.cka.exclude_first_position)),
            js_variant(bool(fusion.attention.drop_sink)))


@dataclass
class ProbeSample:
    """A bounded sample of words: their states at every layer and their labels (docs/method.md, Signal 2).

    One row per word, taken at the LAST sub-word token of the word.
    """

    features: np.ndarray  # [N, L+1, d] float16, h_0..h_L at the word's last sub-word token
    labels: dict[str, np.ndarray]  # task -> [N] int64 class ids (-1: no label)
    group: np.ndarray  # [N] int64 index of the word's sentence group
    word_type: np.ndarray  # [N] int64 id of the lower-cased word form (control task)


@dataclass
class CorpusStatistics:
    """Everything the three layer-wise signals need, stored per sentence group."""

    n_blocks: int  # L
    hsic: dict[str, np.ndarray]  # CKA variant -> [G, L+1, L+1] unbiased HSIC of linear kernels of h_i, h_j
    n_tokens: dict[str, np.ndarray]  # CKA variant -> [G] tokens that entered the group's kernels
    js_sum: dict[str, np.ndarray]  # JS variant -> [G, L]; [:, l-1] sums JS(A_l, A_{l-1}) over queries
    js_first_uniform: dict[str, np.ndarray]  # JS variant -> [G]; sums JS(A_1, uniform over allowed keys)
    js_count: dict[str, np.ndarray]  # JS variant -> [G] query positions that entered the sums
    act_sum: np.ndarray  # [L+1] sum over tokens of mean_dim(h_l)   (activation scale, reported; all real tokens)
    act_sq_sum: np.ndarray  # [L+1] sum over tokens of mean_dim(h_l ** 2)
    act_count: int
    probe_train: ProbeSample
    probe_eval: ProbeSample
    label_names: dict[str, list[str]]  # task -> class names (index = class id)
    group_is_eval: np.ndarray  # [G] bool: the group is held out for probe evaluation
    meta: dict = field(default_factory=dict)
    information: dict[str, np.ndarray] = field(default_factory=dict)  # curve -> [G, L+1] (signals/information.py)
    information_tokens: np.ndarray | None = None  # [G] tokens that entered each group's information kernels
    # rival curves stored by the pass (signals/rivals.py): bi_sum [G, L] and bi_count [G] (block influence),
    # lens_sum [G, 2, m] (logit-lens KL and entropy sums, bits) and lens_count [G]
    rivals: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_groups(self) -> int:
        return int(self.group_is_eval.shape[0])

    def activation_std(self) -> np.ndarray:
        """The standard deviation of the entries of h_l over all real tokens (position 0 included) and
        dimensions, l = 0..L. Reported beside the boundaries, where a jump marks massive activations; the
        intervention noise scale s_l is measured by the intervention itself (without position 0)."""
        return entry_std(self.act_sum / self.act_count, self.act_sq_sum / self.act_count)
