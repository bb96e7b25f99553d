"""The clean activation scale s_l of each residual-stream state h_0..h_L, measured on corpus sentences.

s_l sets the noise of block l: e ~ N(0, (sigma * s_l)^2 I) (paper eq. 7 says "relative to activation
standard deviation" and no more; the estimator is our definition, configurable):
- `pooled`: the standard deviation of all entries of h_l over tokens and dimensions,
  s_l^2 = E_tok mean_d h^2 - (E_tok mean_d h)^2 (what the boundary result stores as activation_std);
- `per_dimension`: the root mean per-dimension variance, s_l^2 = mean_d Var_tok(h_d) = tr Cov(h_l) / d,
  which ignores constant per-dimension offsets (e.g. massive activations in a few dimensions).
h_l is the output of block l before the final norm and h_0 the input of block 1, taken by the same hooks as the
extraction pass (mspgt/extraction/hooks.py, docs/method.md "Indexing"); the pooled std is mspgt/statistics.py
`entry_std`, the one definition the boundary result's activation_std_all_tokens uses too. Padding is excluded; position 0 (the attention sink, massive activations) is
excluded by default. Statistics stream in float64: memory does not grow with the number of sentences.
"""

from __future__ import annotations

import torch

from mspgt.errors import choose
from mspgt.extraction.hooks import residual_stream
from mspgt.model.loading import LoadedModel
from mspgt.statistics import entry_std

STD_KINDS = ("pooled", "per_dimension")


class _Moments:
    """Streaming per-dimension sums over tokens, for one state h_l."""

    def __init__(self) -> None:
        self.count = 0
        self.sum: torch.Tensor | None = None  # (d,) float64
        self.sq_sum: torch.Tensor | None = None  # (d,) float64

    def add(self, hidden: torch.Tensor, keep: torch.Tensor) -> None:
        rows = hidden[keep].double()  # (N, d) kept tokens
        s, sq = rows.sum(0).cpu(), rows.square().sum(0).cpu()  # (d,), (d,)
        self.sum = s if self.sum is None else self.sum + s
        self.sq_sum = sq if self.sq_sum is None else self.sq_sum + sq
        self.count += rows.shape[0]

    def std(self, kind: str) -> float:
        if self.count < 2 or self.sum is None or self.sq_sum is None:
            return float("nan")
        mean = self.sum / self.count  # (d,)
        mean_sq = self.sq_sum / self.count  # (d,)
        if kind == "pooled":  # the std of all entries
            return float(entry_std(float(mean.mean()), float(mean_sq.mean())))
        per_dimension = (mean_sq - mean**2).mean()  # mean over d of Var_tok(h_d)
        return float(per_dimension.clamp_min(0.0).sqrt())


@torch.no_grad()
def measure_activation_std(
    loaded: LoadedModel,
    texts: list[str],
    max_tokens: int,
    batch_size: int = 16,
    kind: str = "pooled",
    exclude_first_token: bool = True,
) -> list[float]:
    """[s_0, ..., s_L] on clean activations of `texts` (each tokenised on its own, truncated, padded)."""
    choose("activation std kind", kind, STD_KINDS, "experiment.activation_std.kind")
    if not texts:
        raise ValueError("measure_activation_std needs at least one text")
    moments = [_Moments() for _ in range(loaded.n_blocks + 1)]
    tok = loaded.tokenizer
    with residual_stream(loaded.blocks) as states:  # h_0..h_L, as the extraction pass takes them
        for start in range(0, len(texts), batch_size):
            enc = tok(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_tokens,
                padding_side="right",
            )
            mask = enc["attention_mask"].bool()  # (B, T)
            if exclude_first_token:
                mask[:, 0] = False
            loaded.model(
                input_ids=enc["input_ids"].to(loaded.device),
                attention_mask=enc["attention_mask"].to(loaded.device),
                use_cache=False,
            )
            for index, hidden in enumerate(states):
                if hidden is not None:
                    moments[index].add(hidden, mask.to(hidden.device))  # hidden (B, T, d)
    return [m.std(kind) for m in moments]
