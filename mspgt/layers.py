"""Layer indexing and scale ranges: the one place these are defined (docs/method.md, "Indexing").

A model with L decoder blocks has residual-stream states h_0 (embeddings) ... h_L (output of block L,
before the final norm). A layer-wise signal S(l) is defined for l = 1..L and describes the change block l
makes (h_{l-1} -> h_l). A boundary at l means block l opens the upper scale; relative position = l / L.
Scales from boundaries b_LI < b_IG: Local = 1..b_LI-1, Intermediate = b_LI..b_IG-1, Global = b_IG..L.
Arrays over signal layers are 0-based in memory: index i holds block l = i + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from mspgt.errors import MspgtError

SCALES = ("local", "intermediate", "global")
# The two boundaries, in order; the block of each is the first block of the next scale (scales_from_boundaries)
BOUNDARY_NAMES = ("L-I", "I-G")
# The boundaries that delimit each scale's range (scales_from_boundaries below)
SCALE_BOUNDARIES = {"local": ("L-I",), "intermediate": ("L-I", "I-G"), "global": ("I-G",)}


def relative_position(layer: int, n_blocks: int) -> float:
    """Relative depth l / L of a boundary at block l."""
    return layer / n_blocks


@dataclass(frozen=True)
class ScaleRanges:
    """Inclusive block ranges of the three scales (1-based block numbers)."""

    n_blocks: int
    local: tuple[int, int]
    intermediate: tuple[int, int]
    global_: tuple[int, int]

    def blocks(self, scale: str) -> list[int]:
        lo, hi = {"local": self.local, "intermediate": self.intermediate, "global": self.global_}[scale]
        return list(range(lo, hi + 1))

    def as_dict(self) -> dict[str, list[int]]:
        return {s: self.blocks(s) for s in SCALES}


def scales_from_boundaries(b_li: int, b_ig: int, n_blocks: int) -> ScaleRanges:
    """Local = 1..b_LI-1, Intermediate = b_LI..b_IG-1, Global = b_IG..L (docs/method.md)."""
    if not 1 <= b_li < b_ig <= n_blocks:
        raise MspgtError(
            f"boundaries L-I={b_li}, I-G={b_ig} are not 1 <= L-I < I-G <= L={n_blocks}",
            "check the boundary result, or set explicit layer ranges (scale.layers=[first,last])",
        )
    return ScaleRanges(n_blocks, (1, b_li - 1), (b_li, b_ig - 1), (b_ig, n_blocks))


def check_scale_blocks(scale: str, blocks: list[int], n_blocks: int) -> list[int]:
    """Validate the blocks chosen for a scale: non-empty, inside 1..L."""
    if not blocks:
        raise MspgtError(
            f"scale {scale!r} has no layers under these boundaries (e.g. L-I at block 1 leaves Local empty)",
            "pick another scale, or give explicit layers: scale.layers=[first,last]",
        )
    bad = [b for b in blocks if not 1 <= b <= n_blocks]
    if bad:
        raise MspgtError(
            f"scale {scale!r} names blocks {bad} outside 1..{n_blocks}",
            f"use block numbers between 1 and {n_blocks}",
        )
    return blocks
