"""Batched sampling with the KV cache, paired across conditions (docs/method.md "Interventions").

Every prompt is sampled `samples_per_prompt` times. Rows (prompt i, sample j) are laid out prompt-major
and cut into batches of `batch_size` rows; the layout depends on nothing but the settings, so the clean
and the noised run build the same batches. torch samples a whole batch from the global generator, so
before batch b both runs seed it with the same batch seed (and the noise stream is reseeded with its
own seed): sample (i, j) gets the same sampling draws with and without noise.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from mspgt.errors import MspgtError
from mspgt.interventions.noise import ScaleNoise
from mspgt.model.loading import LoadedModel


@dataclass
class Generated:
    """Continuations per prompt (the prompt itself excluded) and the time `generate` took."""

    continuations: list[list[str]]  # [n_prompts][samples_per_prompt]
    new_tokens: int  # generated tokens, padding after EOS excluded
    seconds: float


def check_generation_settings(gen: DictConfig) -> None:
    """Fail before any work on settings that cannot run."""
    checks = [
        (gen.n_prompts >= 2, f"generation.n_prompts={gen.n_prompts}", "a paired t-test needs n_prompts >= 2"),
        (
            gen.samples_per_prompt >= 2,
            f"generation.samples_per_prompt={gen.samples_per_prompt}",
            "Self-BLEU compares a prompt's samples with each other: set samples_per_prompt >= 2",
        ),
        (gen.prompt_words >= 1, f"generation.prompt_words={gen.prompt_words}", "set prompt_words >= 1"),
        (
            gen.max_new_tokens >= 1,
            f"generation.max_new_tokens={gen.max_new_tokens}",
            "set max_new_tokens >= 1",
        ),
        (
            0 <= gen.get("min_new_tokens", 0) <= gen.max_new_tokens,
            f"generation.min_new_tokens={gen.get('min_new_tokens', 0)}",
            "set 0 <= min_new_tokens <= max_new_tokens",
        ),
        (gen.temperature > 0, f"generation.temperature={gen.temperature}", "sampling needs temperature > 0"),
        (0 < gen.top_p <= 1, f"generation.top_p={gen.top_p}", "set 0 < top_p <= 1"),
        (gen.get("top_k", 0) >= 0, f"generation.top_k={gen.get('top_k')}", "set top_k >= 0 (0: off)"),
        (gen.batch_size >= 1, f"generation.batch_size={gen.batch_size}", "set batch_size >= 1"),
    ]
    for ok, problem, fix in checks:
        if not ok:
            raise MspgtError(f"{problem} is not valid", fix)


def batch_seed(base: int, batch_index: int) -> int:
    """The seed of batch `batch_index`: the same in every condition of a run."""
    return (int(base) * 1_000_003 + batch_index) % (2**63)


def row_batches(n_prompts: int, samples_per_prompt: int, batch_size: int) -> list[list[tuple[int, int]]]:
    """(prompt, sample) rows, prompt-major, cut into batches of `batch_size` rows."""
    rows = [(i, j) for i in range(n_prompts) for j in range(samples_per_prompt)]
    return [rows[k : k + batch_size] for k in range(0, len(rows), batch_size)]


def generation_config(loaded: LoadedModel, gen: DictConfig):
    """A full GenerationConfig from our settings, so no model default (top_k, penalties) leaks in."""
    from transformers import GenerationConfig

    tok = loaded.tokenizer
    return GenerationConfig(
        do_sample=True,
        temperature=float(gen.temperature),
        top_p=float(gen.top_p),
        top_k=int(gen.get("top_k", 0)),
        max_new_tokens=int(gen.max_new_tokens),
        min_new_tokens=int(gen.get("min_new_tokens", 0)),
        use_cache=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )


@torch.no_grad()
def sample_continuations(
    loaded: LoadedModel,
    prompts: list[str],
    gen: DictConfig,
    noise: ScaleNoise | None = None,
    progress: str | None = None,
) -> Generated:
    """Sample every prompt `gen.samples_per_prompt` times; with `noise` attached to the blocks if given.
    `progress`: a label for a tqdm bar over the batches (None: no bar)."""
    tok = loaded.tokenizer
    config = generation_config(loaded, gen)
    batches = row_batches(len(prompts), int(gen.samples_per_prompt), int(gen.batch_size))
    out: list[list[str]] = [[""] * int(gen.samples_per_prompt) for _ in prompts]
    new_tokens, seconds = 0, 0.0
    for b, rows in enumerate(tqdm(batches, desc=progress, unit="batch", disable=progress is None, mininterval=2.0)):
        enc = tok(
            [prompts[i] for i, _ in rows], return_tensors="pt", padding=True, padding_side="left"
        )  # input_ids (B, T), left-padded so every row continues at position T
        input_ids = enc["input_ids"].to(loaded.device)  # (B, T)
        attention_mask = enc["attention_mask"].to(loaded.device)  # (B, T)
        torch.manual_seed(batch_seed(gen.seed, b))  # the sampling draws: identical in every condition
        if noise is not None:
            noise.reseed(batch_seed(gen.noise_seed, b))
        start = time.perf_counter()
        with noise if noise is not None else contextlib.nullcontext():  # hooks on only while generating
            sequences = loaded.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=config
            )  # (B, T + new)
        if loaded.device.type == "cuda":
            torch.cuda.synchronize(loaded.device)
        seconds += time.perf_counter() - start
        new = sequences[:, input_ids.shape[1] :].cpu()  # (B, new)
        new_tokens += int(_tokens_before_eos(new, tok.eos_token_id).sum())
        for (i, j), text in zip(rows, tok.batch_decode(new, skip_special_tokens=True), strict=True):
            out[i][j] = " ".join(text.split())
    return Generated(out, new_tokens, seconds)


def _tokens_before_eos(new: torch.Tensor, eos: int | list[int] | None) -> torch.Tensor:
    """Per row, the number of generated tokens up to and including the first EOS."""
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    if not eos_ids:
        return torch.full((new.shape[0],), new.shape[1])  # (B,)
    is_eos = torch.isin(new, torch.tensor(eos_ids))  # (B, new)
    first = is_eos.long().argmax(1) + 1  # (B,)
    return torch.where(is_eos.any(1), first, torch.full_like(first, new.shape[1]))  # (B,)
