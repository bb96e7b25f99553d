"""Isotropic Gaussian noise at the output of the blocks of one scale (paper 4.2.1, eq. 7; docs/method.md).

For every block l of the scale: h_l <- h_l + e, e ~ N(0, (sigma * s_l)^2 I), where s_l is the standard
deviation of block l's clean activations (activation_scale.py). The hook sits on the real Hugging Face
block, so the noise reaches every position of every forward call: the prompt at prefill and the new
token at each generation step (with the KV cache a position's state is noised once, when it is computed,
and later steps attend to the keys and values computed from the noised state).

The noise draws from its own torch.Generator (one per device), never from the global RNG that sampling
uses: the clean and the noised run consume identical sampling draws (the paired design). Hooks are
removed when the context exits, whatever happens inside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

import torch

from mspgt.errors import MspgtError


def check_sigma(sigma: float) -> float:
    """sigma must be a finite number >= 0 (0 is a hook that adds exact zeros)."""
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        raise MspgtError(
            f"sigma={sigma!r} is not a number", "set sigma to a number >= 0, e.g. sigma=0.5"
        ) from None
    if not value >= 0 or value == float("inf"):
        raise MspgtError(
            f"sigma={sigma} must be finite and >= 0", "set sigma >= 0, e.g. sigma=0.5 (0: no noise)"
        )
    return value


def forward_hook_count(blocks: torch.nn.ModuleList) -> int:
    """How many forward hooks sit on these blocks (0 after every intervention)."""
    return sum(len(block._forward_hooks) for block in blocks)


class ScaleNoise:
    """A context manager that adds N(0, (sigma * s_l)^2 I) to the output of blocks l (1-based).

    `layer_std` maps block number l -> s_l. `reseed(seed)` restarts the noise stream (the generation
    loop reseeds before each batch, so a batch's noise does not depend on how long earlier batches ran).
    `realised_std()` reports the standard deviation of the noise actually injected per block.
    """

    def __init__(
        self,
        blocks: torch.nn.ModuleList,
        layer_std: Mapping[int, float],
        sigma: float,
        seed: int,
    ) -> None:
        self.sigma = check_sigma(sigma)
        if not layer_std:
            raise MspgtError("no blocks to put noise in", "give the scale at least one block")
        n_blocks = len(blocks)
        bad = [layer for layer in layer_std if not 1 <= layer <= n_blocks]
        if bad:
            raise MspgtError(f"noise blocks {bad} are outside 1..{n_blocks}", f"use blocks 1..{n_blocks}")
        bad_std = {layer: s for layer, s in layer_std.items() if not float(s) >= 0}
        if bad_std:
            raise MspgtError(f"activation std {bad_std} is not >= 0", "re-measure the clean activation scale")
        self.blocks = blocks
        self.layer_std = {int(layer): float(s) for layer, s in sorted(layer_std.items())}
        self.seed = int(seed)
        self._generators: dict[torch.device, torch.Generator] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        # per block: (entries, variance, mean) of the noise of each call (0-d tensors on the block's device,
        # read only when asked: recording never waits for the device), folded every FOLD_EVERY calls
        self._moments: dict[int, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}

    # -- the noise stream -------------------------------------------------------------------------------
    def reseed(self, seed: int) -> None:
        """Restart the noise stream from `seed` on every device."""
        self.seed = int(seed)
        for device, gen in self._generators.items():
            gen.manual_seed(self._device_seed(device))

    def _device_seed(self, device: torch.device) -> int:
        return self.seed + 7919 * (device.index or 0)

    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self._device_seed(device))
            self._generators[device] = gen
        return gen

    # -- hooks ------------------------------------------------------------------------------------------
    def _make_hook(self, layer: int):
        scale = self.sigma * self.layer_std[layer]

        def add_noise(module: torch.nn.Module, args: Any, output: Any) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output  # (B, T, d)
            noise = torch.randn(
                hidden.shape,
                generator=self._generator(hidden.device),
                device=hidden.device,
                dtype=hidden.dtype,
            )  # (B, T, d) ~ N(0, 1)
            noise = noise * scale  # (B, T, d) ~ N(0, (sigma * s_l)^2)
            self._record(layer, noise)
            noised = hidden + noise  # (B, T, d)
            return (noised, *output[1:]) if isinstance(output, tuple) else noised

        return add_noise

    FOLD_EVERY = 256

    def _record(self, layer: int, noise: torch.Tensor) -> None:
        """Keep this call's noise moments: one reduction kernel, no host-device copy (cheap per step)."""
        var, mean = torch.var_mean(noise.detach(), correction=0)  # 0-d each
        calls = self._moments.setdefault(layer, [])
        calls.append((noise.numel(), var, mean))
        if len(calls) >= self.FOLD_EVERY:
            self._moments[layer] = [_pooled_moments(calls)]

    def realised_std(self) -> dict[int, float]:
        """Standard deviation of all noise entries injected so far, per block (nan if none)."""
        out = {}
        for layer in self.layer_std:
            calls = self._moments.get(layer)
            n, var, _ = _pooled_moments(calls) if calls else (0, None, None)
            out[layer] = float(var.sqrt()) if n >= 2 else float("nan")
        return out

    def __enter__(self) -> ScaleNoise:
        if self._handles:
            raise RuntimeError("ScaleNoise is already attached")
        try:
            for layer in self.layer_std:
                block = self.blocks[layer - 1]  # block l is blocks[l - 1] (mspgt.layers)
                self._handles.append(block.register_forward_hook(self._make_hook(layer)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this object registered (safe to call twice)."""
        while self._handles:
            self._handles.pop().remove()


def _pooled_moments(calls: list[tuple[int, torch.Tensor, torch.Tensor]]) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(entries, variance, mean) of the union of several calls' noise, from each call's own moments (float64,
    on the device of the moments): mean = sum n_i m_i / n, var = sum n_i (v_i + (m_i - mean)^2) / n."""
    total = sum(n for n, _, _ in calls)
    var = torch.stack([v for _, v, _ in calls]).double()  # (calls,)
    mean = torch.stack([m for _, _, m in calls]).double()  # (calls,)
    share = torch.tensor([n / total for n, _, _ in calls], dtype=torch.float64).to(var.device)  # (calls,)
    pooled_mean = (share * mean).sum()
    pooled_var = (share * (var + (mean - pooled_mean) ** 2)).sum()
    return total, pooled_var, pooled_mean
