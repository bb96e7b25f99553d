"""The edge check (our definition): is a boundary at block 1 or block L an edge peak, or the edge of a pair?

With `fusion.edges=padded` (the default) the fused curve E is padded with a zero at each end, so block 1 and
block L can be peaks (mspgt/fusion/peaks.py). Such a peak has a neighbour on one side only: its prominence
is measured against our padding, and it can outrank an interior peak that would otherwise be the boundary.
When the padded detection puts L-I or I-G at an edge, the run also detects with `fusion.edges=interior` on
the same curve (peaks at blocks 2..L-1 only; every other peak and prominence unchanged) and bootstraps that
detection over the same resamples. The record says which of two things the data show:
- an interior pair: the edge peak displaced an interior boundary, whose block and CI are given;
- fewer than two interior peaks at the threshold: the boundary exists only as an edge peak. The strongest
  interior candidates (every interior local maximum, by prominence) say how far below the threshold the
  next one lies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mspgt.fusion.fuse import minmax_normalise
from mspgt.fusion.peaks import BoundaryPick, detect_boundaries, find_evidence_peaks
from mspgt.layers import BOUNDARY_NAMES
from mspgt.results import BoundaryCI

EDGE_CHECK_RULE = (
    "a boundary at block 1 or block L (fusion.edges=padded) is re-detected with peaks at blocks 2..L-1 only "
    "(fusion.edges=interior: the same curve, padding and prominences; the edge candidates dropped) and "
    "bootstrapped over the same resamples (ours)"
)
N_CANDIDATES = 5  # interior local maxima listed, most prominent first


def edge_boundaries(pick: BoundaryPick, n_blocks: int) -> dict[str, int]:
    """The boundaries of `pick` that lie at block 1 or block L, with their block."""
    return {name: layer for name, layer in zip(BOUNDARY_NAMES, (pick.li, pick.ig), strict=True)
            if layer is not None and layer in (1, n_blocks)}


def interior_candidates(evidence: np.ndarray, replicated_first: bool) -> dict[str, list[Any]]:
    """Every interior local maximum of E [L] (any prominence), the N_CANDIDATES most prominent first."""
    blocks, prominences = find_evidence_peaks(evidence, 0.0, replicated_first, "interior")
    order = np.lexsort((blocks, -prominences))[:N_CANDIDATES]
    return {"layers": [int(b) for b in blocks[order]], "prominences": [float(p) for p in prominences[order]]}


def edge_check(
    evidence: np.ndarray,
    pick: BoundaryPick,
    prominence: float,
    replicated_first: bool,
    bootstrap: Callable[[BoundaryPick, str], dict[str, BoundaryCI]],
    signals: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any] | None:
    """The interior detection of a curve E [L] whose padded pick has a boundary at an edge (None: it has not).

    bootstrap(point, edges) runs the run's own bootstrap (same resamples, seed and acceptance rule) for a
    point estimate and an edge mode. signals: the fused signals [L] (name -> raw curve); the record then says
    what each contributes at the edge block (min-max normalised, as fused: which signal makes the edge peak).
    """
    n_blocks = len(evidence)
    at_edge = edge_boundaries(pick, n_blocks)
    if not at_edge:
        return None
    inner = detect_boundaries(evidence, prominence, replicated_first, "interior")
    cis = bootstrap(inner, "interior")
    normalised = {signal: minmax_normalise(curve) for signal, curve in (signals or {}).items()}  # name -> [L]
    return {
        "rule": EDGE_CHECK_RULE,
        "edge_blocks": at_edge,
        "normalised_signals_at_edge": {name: {signal: float(curve[block - 1]) for signal, curve in normalised.items()}
                                       for name, block in at_edge.items()},
        "prominence": prominence,
        "found_two_peaks": inner.li is not None,
        "peaks": {"layers": inner.peaks, "prominences": inner.prominences},
        "candidates": interior_candidates(evidence, replicated_first),
        "boundaries": {name: ci.as_dict() for name, ci in cis.items()},
    }


def edge_check_text(check: dict[str, Any], n_blocks: int) -> str:
    """One sentence for reports: what the interior detection found."""
    where = ", ".join(f"{n} at block {b} of {n_blocks}" for n, b in check["edge_blocks"].items())
    made = "; ".join(f"{n}: " + ", ".join(f"{k} {v:.2f}" for k, v in by.items())
                     for n, by in check["normalised_signals_at_edge"].items() if by)
    head = (f"Edge check ({where}" + (f"; the normalised signals there, {made}" if made else "")
            + f"; peaks at blocks 2..{n_blocks - 1} only): ")
    cands = ", ".join(f"{b} ({p:.3f})" for b, p in zip(check["candidates"]["layers"],
                                                       check["candidates"]["prominences"], strict=True))
    if not check["found_two_peaks"]:
        peaks = check["peaks"]["layers"]
        ig = check["boundaries"].get("I-G", {})
        found = ig.get("n_resamples", 0) - ig.get("n_missing", 0) - ig.get("n_undefined", 0)
        freq = sorted((ig.get("selection_frequency") or {}).items(), key=lambda kv: -kv[1])[:3]
        where_found = ", ".join(f"{k}: {v}" for k, v in freq)
        return (head + f"fewer than two interior peaks with prominence >= {check['prominence']} "
                f"(found: {peaks or 'none'}); so the boundary exists here only as an edge peak. Strongest "
                f"interior local maxima (block (prominence)): {cands or 'none'}. Resamples with two interior "
                f"peaks: {found} of {ig.get('n_resamples', 0)}" + (f" (second peak at {where_found})" if freq else "")
                + ".")
    parts = []
    for name, b in check["boundaries"].items():
        ci = "no CI" if b.get("ci_low") is None else f"[{b['ci_low']}, {b['ci_high']}]"
        parts.append(f"{name} {b['layer']} {ci}, {'accepted' if b['accepted'] else 'not accepted'} "
                     f"({b['n_missing']} of {b['n_resamples']} resamples without it)")
    return head + "an interior pair: " + "; ".join(parts) + f". Strongest interior local maxima: {cands}."


__all__ = ["EDGE_CHECK_RULE", "edge_boundaries", "edge_check", "edge_check_text", "interior_candidates"]
