"""Forward hooks on the real Hugging Face decoder blocks: the residual stream h_0..h_L of one forward pass.

h_0 is the input of block 1 (the embeddings as the blocks see them); h_l is the output of block l, before
the final norm (docs/method.md "Indexing": `hidden_states[-1]` is after the norm in some families).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def residual_stream(blocks: torch.nn.ModuleList) -> Iterator[list[torch.Tensor | None]]:
    """Yield a list that, after a forward pass, holds h_0..h_L ([B, T, d] each). Hooks removed on exit."""
    states: list[torch.Tensor | None] = [None] * (len(blocks) + 1)

    def block_input(_module, args, kwargs):
        states[0] = args[0] if args else kwargs["hidden_states"]

    def block_output(index: int):
        def hook(_module, _args, output):
            states[index] = output[0] if isinstance(output, tuple) else output

        return hook

    handles = [blocks[0].register_forward_pre_hook(block_input, with_kwargs=True)]
    handles += [b.register_forward_hook(block_output(i + 1)) for i, b in enumerate(blocks)]
    try:
        yield states
    finally:
        for h in handles:
            h.remove()
