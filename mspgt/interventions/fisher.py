"""Fisher-information account of brittleness (paper appendix A.5, eqs. 29-30): estimators on the real model.

The model's next-token distributions p_u = p(. | x_<=u) at the predicted positions u of a sentence depend on
every block output h_l (all positions). For noise e_l ~ N(0, (sigma s_l)^2 I) added to h_l at every position
of every block l in a scale S (the intervention of mspgt.interventions.noise), a second-order expansion with
the score identity E_{y~p}[grad log p(y)] = 0 gives (A.5, eq. 30; the equation is unreadable in our copy,
this is our reading of its text):

    E_e[ sum_u KL(p_u || p_u^e) ] ~= (sigma^2 / 2) sum_{l in S} s_l^2 Tr F_l,
    Tr F_l = sum_u E_{y ~ p_u} || grad_{h_l} log p_u(y) ||^2         (per sentence; grad over all positions)

(cross terms between blocks and positions vanish because the noise entries are independent and zero-mean).

Estimator of Tr F_l (our definition): y_u ~ p_u drawn independently at every predicted position, one
backward pass of sum_u log p_u(y_u) gives g_l = sum_u grad_{h_l} log p_u(y_u); by the score identity the cross
terms E[g_u . g_v] (u != v) vanish, so ||g_l||^2 is an unbiased estimate of Tr F_l for every block at once
(one forward, `samples` backward passes per batch, no per-position loop). The tests' reference,
`fisher_trace_exact` in tests/test_fisher.py, enumerates every y (small vocabularies only).

Predicted positions: every real token that has a next token in its sentence (the data NLL needs it);
padding and each sentence's last token are excluded. Rows of a batch never interact, so one backward pass
of the batch's sum gives every sentence its own gradient.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from mspgt.errors import MspgtError
from mspgt.interventions.noise import ScaleNoise
from mspgt.model.loading import LoadedModel

EXACT_MAX_VOCAB = 1024  # fisher_trace_exact loops over the vocabulary: tiny test models only


def encode_batch(loaded: LoadedModel, texts: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each text tokenised on its own, truncated, right-padded: (ids, mask), both (B, T) on the model's device."""
    enc = loaded.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_tokens,
                           padding_side="right")
    return enc["input_ids"].to(loaded.device), enc["attention_mask"].to(loaded.device)


def encoded_batches(loaded: LoadedModel, texts: list[str], max_tokens: int,
                    batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The texts in batches of `batch_size`, each encoded by encode_batch."""
    return [encode_batch(loaded, texts[i : i + batch_size], max_tokens) for i in range(0, len(texts), batch_size)]


def predicted_positions(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: real tokens followed by a real token (the positions whose next token is known)."""
    keep = torch.zeros_like(mask, dtype=torch.bool)  # (B, T)
    keep[:, :-1] = mask[:, :-1].bool() & mask[:, 1:].bool()
    return keep


@contextmanager
def differentiable_states(loaded: LoadedModel) -> Iterator[list[torch.Tensor | None]]:
    """Hooks that make the embeddings require grad and keep h_0..h_L (each (B, T, d), in the graph)."""
    states: list[torch.Tensor | None] = [None] * (loaded.n_blocks + 1)

    def embed(_module, _args, output):
        out = output.detach().requires_grad_(True)  # (B, T, d): the graph starts here (weights are frozen)
        states[0] = out
        return out

    def block(index: int):
        def hook(_module, _args, output):
            states[index] = output[0] if isinstance(output, tuple) else output  # (B, T, d)

        return hook

    handles = [loaded.model.get_input_embeddings().register_forward_hook(embed)]
    try:
        handles += [b.register_forward_hook(block(i + 1)) for i, b in enumerate(loaded.blocks)]
        yield states
    finally:
        for h in handles:
            h.remove()


def _forward_logprobs(loaded: LoadedModel, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list]:
    with torch.enable_grad(), differentiable_states(loaded) as states:
        logits = loaded.model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (B, T, V)
    return torch.log_softmax(logits.float(), dim=-1), list(states)  # (B, T, V), [h_0..h_L]


def _kept_logprobs(loaded: LoadedModel, ids: torch.Tensor, mask: torch.Tensor,
                   keep: torch.Tensor) -> tuple[torch.Tensor, list]:
    """log p_u at the predicted positions only, (N, V) float32, with h_0..h_L in the graph."""
    with torch.enable_grad(), differentiable_states(loaded) as states:
        logits = loaded.model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (B, T, V)
        rows = torch.log_softmax(logits[keep].float(), dim=-1)  # (N, V)
    return rows, list(states)


def _row_sq_norms(grads: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """(B, L+1): ||grad_{h_l}||^2 of each row (sentence), summed over positions and dimensions."""
    return torch.stack([g.float().square().sum(dim=(1, 2)) for g in grads], dim=1)


def fisher_trace_sampled(loaded: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, samples: int,
                         generator: torch.Generator) -> torch.Tensor:
    """(B, L+1) unbiased estimates of Tr F_l per sentence (module docstring), averaged over `samples` draws
    of y ~ p_u at every predicted position."""
    if samples < 1:
        raise MspgtError(f"experiment.samples_per_position={samples}", "draw at least one y per position")
    keep = predicted_positions(mask)  # (B, T)
    rows, states = _kept_logprobs(loaded, ids, mask, keep)  # (N, V) log p_u at the predicted positions
    probs = rows.detach().exp()  # (N, V)
    total = torch.zeros(ids.shape[0], len(states), dtype=torch.float64, device=ids.device)  # (B, L+1)
    for k in range(samples):
        y = torch.multinomial(probs, 1, generator=generator)  # (N, 1) y_u ~ p_u
        picked = rows.gather(1, y).sum()  # sum_u log p_u(y_u) over the batch
        grads = torch.autograd.grad(picked, states, retain_graph=k < samples - 1)
        total += _row_sq_norms(grads).double()
    return total / samples


@dataclass
class PerSentence:
    """Per-sentence sums over the predicted positions (the unit of the standard errors)."""

    values: np.ndarray  # [S, ...]
    n_positions: np.ndarray  # [S]

    def per_token(self) -> np.ndarray:
        """Ratio estimate sum_s values / sum_s positions ([...])."""
        return self.values.sum(0) / self.n_positions.sum()

    def per_token_se(self) -> np.ndarray:
        """Standard error of the ratio estimate over sentences (linearisation; our choice)."""
        n, r = self.n_positions.astype(float), self.per_token()
        resid = self.values - r * n.reshape((-1,) + (1,) * (self.values.ndim - 1))  # [S, ...]
        S = len(n)
        return np.sqrt(S / max(S - 1, 1) * np.square(resid).sum(0)) / n.sum()


def estimate_fisher_traces(loaded: LoadedModel, batches: list[tuple[torch.Tensor, torch.Tensor]], samples: int,
                           seed: int, progress=None) -> PerSentence:
    """Tr F_l per sentence (values [S, L+1]) and each sentence's number of predicted positions, over
    batches of (ids, mask) (encoded_batches)."""
    gen = torch.Generator(device=loaded.device)
    gen.manual_seed(int(seed))
    values, counts = [], []
    for ids, mask in batches:
        values.append(fisher_trace_sampled(loaded, ids, mask, samples, gen).cpu().numpy())
        counts.append(predicted_positions(mask).sum(1).cpu().numpy())
        if progress is not None:
            progress.update(ids.shape[0])
    return PerSentence(np.concatenate(values), np.concatenate(counts))


def _logprobs64(loaded: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    logits = loaded.model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (B, T, V)
    return torch.log_softmax(logits[keep].double(), dim=-1)  # (N, V) float64: a small KL without cancellation


def _per_sentence(row: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """(N,) values at predicted positions -> (n,) sums per sentence (CPU, float64)."""
    return torch.zeros(n, dtype=torch.float64, device=values.device).index_add_(0, row, values.double()).cpu()


@torch.no_grad()
def noised_divergences(loaded: LoadedModel, batches: list[tuple[torch.Tensor, torch.Tensor]],
                       conditions: list[tuple[dict[int, float], float]], draws: int, seed: int,
                       progress=None) -> tuple[PerSentence, PerSentence]:
    """Teacher-forced: per condition (layer std {l: s_l}, sigma) and noise draw, per sentence the summed
    KL(p_u || p_u^e) and the summed change of the data NLL -log p_u(x_{u+1}) (noised - clean).

    Returns (kl, dnll) with values [S, conditions, draws]. Each (condition, draw, batch) has its own noise
    seed, so every condition sees a fresh draw and a run is reproducible.
    """
    kl_rows, nll_rows, counts = [], [], []
    for bi, (ids, mask) in enumerate(batches):
        keep = predicted_positions(mask)  # (B, T)
        target = torch.roll(ids, -1, dims=1)[keep]  # (N,) the next token at each predicted position
        row = keep.nonzero()[:, 0]  # (N,) the sentence of each predicted position
        clean = _logprobs64(loaded, ids, mask, keep)  # (N, V)
        clean_nll = -clean.gather(-1, target[:, None])[:, 0]  # (N,)
        p = clean.exp()  # (N, V)
        kl = torch.zeros(ids.shape[0], len(conditions), draws, dtype=torch.float64)  # (B, C, D)
        dnll = torch.zeros_like(kl)
        for c, (layer_std, sigma) in enumerate(conditions):
            noise = ScaleNoise(loaded.blocks, layer_std, sigma, seed=seed)
            for d in range(draws):
                noise.reseed(seed + 1_000_003 * c + 10_007 * d + bi)
                with noise:
                    noised = _logprobs64(loaded, ids, mask, keep)  # (N, V)
                per_pos = (p * (clean - noised)).sum(-1)  # (N,) KL(p_u || p_u^e)
                nll = -noised.gather(-1, target[:, None])[:, 0]  # (N,)
                kl[:, c, d] = _per_sentence(row, per_pos, ids.shape[0])
                dnll[:, c, d] = _per_sentence(row, nll - clean_nll, ids.shape[0])
                del noised
        kl_rows.append(kl.numpy())
        nll_rows.append(dnll.numpy())
        counts.append(keep.sum(1).cpu().numpy())
        if progress is not None:
            progress.update(ids.shape[0])
        del clean, p
    n = np.concatenate(counts)
    return PerSentence(np.concatenate(kl_rows), n), PerSentence(np.concatenate(nll_rows), n)


def predicted_kl(fisher: np.ndarray, activation_std: list[float] | np.ndarray, blocks: list[int],
                 sigma: float) -> np.ndarray | float:
    """(sigma^2 / 2) sum_{l in blocks} s_l^2 Tr F_l (A.5 eq. 30, our reading): the KL(p || p_e) that noise
    e ~ N(0, (sigma s_l)^2 I) in `blocks` predicts. `fisher` is Tr F_l per block, [L+1] (per predicted
    token: a float back) or [S, L+1] (per sentence: [S] back, e.g. with sigma=1 the KL / sigma^2 per sentence)."""
    fisher = np.asarray(fisher, dtype=float)
    weights = np.zeros(fisher.shape[-1])  # [L+1]
    weights[blocks] = 0.5 * np.square(np.asarray(activation_std, dtype=float)[blocks])
    kl = (fisher @ weights) * sigma**2
    return float(kl) if kl.ndim == 0 else kl


def fit_against_sigma_squared(sigmas: list[float], values: np.ndarray) -> dict[str, float]:
    """Least squares of values [sigmas, draws] on sigma^2 (with an intercept): slope, intercept, R^2."""
    x = np.repeat(np.square(np.asarray(sigmas, dtype=float)), values.shape[1])  # [sigmas * draws]
    y = np.asarray(values, dtype=float).reshape(-1)
    if len(np.unique(x)) < 2:
        return {"slope": float("nan"), "intercept": float("nan"), "r2": float("nan")}
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    total = np.square(y - y.mean()).sum()
    return {"slope": float(slope), "intercept": float(intercept),
            "r2": float(1 - np.square(resid).sum() / total) if total > 0 else float("nan")}
