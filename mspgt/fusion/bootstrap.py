"""Group bootstrap of the boundaries (paper 4.1.1: 1,000 resamples, accepted when the 95% CI is < 5 layers).

Resampling unit: groups of consecutive sentences, drawn with replacement (method.md, "Data unit"). A
resample is a vector of group counts; `evidence_fn` recomputes the fused evidence from the stored
per-group statistics with those counts, and the peaks are detected again.

CI: percentile interval over the resamples that found the boundary, on integer layers, with the
empirical-distribution quantile (numpy method="inverted_cdf": the smallest observed layer whose
cumulative frequency reaches the level), so both ends are layers that were actually chosen.
Argmax-type statistics are discrete and bootstrap badly, so the selection frequency of every layer and
the number of resamples without such a peak are reported beside the interval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from mspgt.errors import MspgtError
from mspgt.fusion.peaks import BoundaryPick, detect_boundaries_batch
from mspgt.layers import BOUNDARY_NAMES, relative_position


def resample_counts(n_groups: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[B, G] int64 counts: how often each of G groups is drawn in each of B resamples with replacement."""
    if n_groups < 1 or n_resamples < 1:
        raise MspgtError(
            f"bootstrap needs at least one group and one resample, got {n_groups} groups, {n_resamples} resamples",
            "use more sentences (data.n_sentences) or bootstrap.n_resamples >= 1",
        )
    return rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_resamples).astype(np.int64)


@dataclass
class BoundaryCI:
    """One boundary: point estimate, percentile CI over resamples, acceptance, selection frequencies."""

    layer: int | None  # point estimate (1-based block), None: no such peak on the full data
    relative: float | None  # layer / L
    ci_low: int | None  # None: no resample found the boundary
    ci_high: int | None
    width: int | None  # ci_high - ci_low, in layers
    accepted: bool
    selection_frequency: dict[int, int] = field(default_factory=dict)  # layer -> resamples choosing it
    n_missing: int = 0  # resamples with no such peak
    n_resamples: int = 0
    ci_level: float = 0.95

    def as_dict(self) -> dict:
        return asdict(self)


def _boundary_ci(
    point: int | None,
    chosen: np.ndarray,
    n_blocks: int,
    ci_level: float,
    acceptance_width: float,
    max_missing_fraction: float,
) -> BoundaryCI:
    """Summarise the layers chosen for one boundary over resamples (0 = none found)."""
    found = chosen[chosen > 0]  # [B_found]
    n_missing = int(chosen.size - found.size)
    layers, counts = np.unique(found, return_counts=True)
    if found.size:
        alpha = 1.0 - ci_level
        low, high = np.quantile(found, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
        ci_low, ci_high = int(low), int(high)
        width: int | None = ci_high - ci_low
    else:
        ci_low = ci_high = width = None
    accepted = (
        point is not None
        and width is not None
        and width < acceptance_width
        and n_missing / chosen.size <= max_missing_fraction
    )
    return BoundaryCI(
        layer=point,
        relative=None if point is None else relative_position(point, n_blocks),
        ci_low=ci_low,
        ci_high=ci_high,
        width=width,
        accepted=bool(accepted),
        selection_frequency={int(layer): int(c) for layer, c in zip(layers, counts, strict=True)},
        n_missing=n_missing,
        n_resamples=int(chosen.size),
        ci_level=ci_level,
    )


def bootstrap_boundaries(
    evidence_fn: Callable[[np.ndarray], np.ndarray],
    n_groups: int,
    n_blocks: int,
    point: BoundaryPick,
    n_resamples: int = 1000,
    seed: int = 0,
    ci_level: float = 0.95,
    acceptance_width: float = 5,
    max_missing_fraction: float = 0.05,
    prominence: float = 0.3,
    chunk: int = 250,
) -> dict[str, BoundaryCI]:
    """Bootstrap CIs of the L-I and I-G boundaries over resamples of sentence groups.

    evidence_fn maps group counts [b, G] to fused evidence [b, L]; it is called on chunks of at most
    `chunk` resamples to bound memory. A boundary is accepted iff the full data found it, its CI width
    is below `acceptance_width` layers (the paper: 5) and at most `max_missing_fraction` of the resamples
    found no such peak (that last condition is our definition). Deterministic for a seed.
    """
    if not 0 < ci_level < 1 or acceptance_width <= 0 or not 0 <= max_missing_fraction <= 1 or chunk < 1:
        raise MspgtError(
            f"bad bootstrap settings: ci_level={ci_level}, acceptance_width={acceptance_width}, "
            f"max_missing_fraction={max_missing_fraction}, chunk={chunk}",
            "use 0 < bootstrap.ci_level < 1, bootstrap.acceptance_width > 0, 0 <= bootstrap.max_missing_fraction <= 1",
        )
    counts = resample_counts(n_groups, n_resamples, np.random.default_rng(seed))  # [B, G]
    li = np.zeros(n_resamples, dtype=np.int64)  # [B]
    ig = np.zeros(n_resamples, dtype=np.int64)  # [B]
    for start in range(0, n_resamples, chunk):
        part = counts[start : start + chunk]  # [b, G]
        evidence = np.asarray(evidence_fn(part))  # [b, L]
        if evidence.shape != (part.shape[0], n_blocks):
            raise MspgtError(
                f"evidence_fn returned shape {evidence.shape}, expected {(part.shape[0], n_blocks)}",
                "return one fused evidence curve over the L blocks per resample",
            )
        li[start : start + chunk], ig[start : start + chunk] = detect_boundaries_batch(evidence, prominence)
    settings = (n_blocks, ci_level, acceptance_width, max_missing_fraction)
    li_name, ig_name = BOUNDARY_NAMES
    return {li_name: _boundary_ci(point.li, li, *settings), ig_name: _boundary_ci(point.ig, ig, *settings)}
