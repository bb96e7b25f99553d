"""Boundary detection on the fused evidence curve (paper 4.1.1): the two most prominent peaks.

`scipy.signal.find_peaks(E, prominence=0.3)` (the paper's threshold) never returns the first or last
sample, so E is padded with one zero on each side: a peak at block 1 or block L can then be found
(docs/method.md, "Fusion and peaks"). The two most prominent peaks (ties -> the earlier layer), in layer
order, are the L-I and I-G boundaries. Fewer than two peaks is a result, never a crash.

Two rules of ours (docs/method.md, "Fusion and peaks"):
- Our own padding must not move a peak. With `fusion.attention.first_block=replicate`, S_attn(1) is a copy
  of S_attn(2), so E(1) = E(2) can be a two-block plateau that find_peaks reports at its left sample
  (block 1). A plateau that starts at block 1 is then read as if block 1 were not there: its peak is the
  middle of blocks 2..right edge (`replicated_first=True`).
- In a bootstrap resample, the peaks are MATCHED to the point estimate's boundaries, so that a boundary's
  CI collects one peak, not whichever peaks happen to rank first. Among all peaks of the resample that
  pass the prominence threshold, the pair (a < b) with the smallest |a - L-I| + |b - I-G| is the pair of
  matched peaks (ties: the larger summed prominence, then the earlier pair). A matched peak is that
  boundary's layer in the resample only if it is also one of the resample's two most prominent peaks
  (the estimator would have reported it there); otherwise the resample has no such peak (counted
  missing). So every layer in a CI is a layer the estimator chose, and a competing third peak that
  outranks the matched one shows up as a missing resample, never inside the interval. Fewer than two
  peaks: neither boundary, as on the full data. Without a point estimate (fewer than two peaks on the
  full data) resamples fall back to the two most prominent in layer order. How often matching gave
  another result than that order-based labelling is reported (`n_relabelled`).

Edges (`fusion.edges`, our definition): `padded` (the default, above) lets block 1 and block L be peaks;
such a peak has a neighbour on one side only, so its height is measured against the zero we pad with.
`interior` drops the candidates at block 1 and block L after find_peaks, and nothing else: the padding and
so every other peak's prominence are unchanged, and a peak that `padded` finds inside the curve is found the
same way. A boundary run whose padded detection puts a boundary at an edge also runs the interior detection
and its bootstrap (mspgt/fusion/edge_check.py): is there an interior pair the edge peak
displaced, or does the boundary exist only as an edge peak?
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.signal import find_peaks

from mspgt.errors import MspgtError

NONE_FOUND = 0  # a resample without such a peak
UNDEFINED = -1  # a resample whose evidence is NaN/inf (an undefined signal): no peak can be looked for
MATCHING_RULE = (
    "resample peaks matched to the point estimate: among all peaks with prominence >= the threshold, the "
    "pair a < b minimising |a - L-I| + |b - I-G| (ties: larger summed prominence, then earlier); a matched "
    "peak counts only if it is one of the resample's two most prominent peaks, else the resample misses it"
)


@dataclass
class BoundaryPick:
    """Detected boundaries as 1-based block numbers (None: fewer than two peaks), and every peak found."""

    li: int | None
    ig: int | None
    peaks: list[int] = field(default_factory=list)  # 1-based blocks of all peaks, in layer order
    prominences: list[float] = field(default_factory=list)  # prominence of each peak in `peaks`


@dataclass
class ResamplePicks:
    """Boundaries of B resampled curves: 1-based blocks, NONE_FOUND (0) or UNDEFINED (-1) per resample."""

    li: np.ndarray  # [B] int64
    ig: np.ndarray  # [B] int64
    li_relabelled: np.ndarray  # [B] bool: matching gave another L-I than the two-most-prominent rule
    ig_relabelled: np.ndarray  # [B] bool


EDGE_CHOICES = ("padded", "interior")  # fusion.edges: may block 1 and block L be peaks (module docstring)

# The one range of the peak prominence (the fused evidence lies in [0, 1]): (test, in words); the config
# schema (mspgt/config_schema.py) uses it too.
PROMINENCE_RANGE: tuple[Callable[[float], bool], str] = (lambda v: 0 < v <= 1, "in (0, 1]")


def check_prominence(prominence: float) -> None:
    """The one range check of the peak prominence (the fused evidence lies in [0, 1])."""
    if not PROMINENCE_RANGE[0](float(prominence)):
        raise MspgtError(
            f"peak prominence {prominence} is outside (0, 1]; the fused evidence lies in [0, 1]",
            "set fusion.prominence to a value in (0, 1], e.g. 0.3 (the paper)",
        )


def check_edges(edges: str) -> None:
    """fusion.edges is one of EDGE_CHOICES."""
    if edges not in EDGE_CHOICES:
        raise MspgtError(f"fusion.edges={edges!r} is not one of {EDGE_CHOICES}",
                         "set fusion.edges=padded (block 1 and L may be peaks) or fusion.edges=interior")


def find_evidence_peaks(
    evidence: np.ndarray, prominence: float, replicated_first: bool = False, edges: str = "padded"
) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of one curve [L] as 1-based blocks (padding index i is block i) and their prominences.

    replicated_first: E(1) copies a value of block 2 (see the module docstring); a plateau that starts at
    block 1 is then centred on its blocks from 2 on. edges="interior": peaks at block 1 or block L are
    dropped (the others and their prominences are those of "padded").
    """
    padded = np.concatenate(([0.0], evidence, [0.0]))  # [L + 2]
    index, props = find_peaks(padded, prominence=prominence, plateau_size=1)
    if replicated_first and index.size:
        left, right = props["left_edges"], props["right_edges"]  # [P] padded indices
        index = np.where((left == 1) & (right >= 2), (2 + right) // 2, index)  # find_peaks: (left+right)//2
    prominences = props["prominences"]
    if edges == "interior":
        inside = (index > 1) & (index < len(evidence))  # [P]
        index, prominences = index[inside], prominences[inside]
    return index.astype(np.int64), prominences


def _two_most_prominent(blocks: np.ndarray, prominences: np.ndarray) -> tuple[int, int] | None:
    """The two most prominent peaks (ties -> earlier block), returned in layer order."""
    if len(blocks) < 2:
        return None
    order = np.lexsort((blocks, -prominences))  # by prominence descending, then block ascending
    first, second = sorted(int(b) for b in blocks[order[:2]])
    return first, second


def _matched_pair(blocks: np.ndarray, prominences: np.ndarray, point: tuple[int, int]) -> tuple[int, int] | None:
    """The pair of peaks a < b closest to the point estimate (MATCHING_RULE)."""
    if len(blocks) < 2:
        return None
    li, ig = point
    i, j = np.triu_indices(len(blocks), k=1)  # all pairs, blocks are in layer order so blocks[i] < blocks[j]
    cost = np.abs(blocks[i] - li) + np.abs(blocks[j] - ig)  # [P]
    best = np.lexsort((blocks[j], blocks[i], -(prominences[i] + prominences[j]), cost))[0]
    return int(blocks[i[best]]), int(blocks[j[best]])


def _check_curve(evidence: np.ndarray, ndim: int) -> np.ndarray:
    evidence = np.asarray(evidence, dtype=np.float64)
    if evidence.ndim != ndim or evidence.size == 0:
        raise MspgtError(
            f"evidence must be {'[L]' if ndim == 1 else '[B, L]'}, got shape {evidence.shape}",
            "pass one fused evidence curve over the L blocks" + ("" if ndim == 1 else " per row"),
        )
    return evidence


def detect_boundaries(evidence: np.ndarray, prominence: float = 0.3, replicated_first: bool = False,
                      edges: str = "padded") -> BoundaryPick:
    """L-I and I-G boundaries of a fused evidence curve E [L] (index i = block i + 1)."""
    check_prominence(prominence)
    check_edges(edges)
    evidence = _check_curve(evidence, 1)
    if not np.isfinite(evidence).all():
        raise MspgtError(
            f"evidence must be a finite curve over layers [L], got shape {evidence.shape} with NaN/inf values",
            "check the signals that were fused (a constant representation gives an undefined CKA)",
        )
    blocks, prominences = find_evidence_peaks(evidence, prominence, replicated_first, edges)
    pair = _two_most_prominent(blocks, prominences)
    li, ig = pair if pair is not None else (None, None)
    return BoundaryPick(li, ig, [int(b) for b in blocks], [float(p) for p in prominences])


def detect_boundaries_batch(
    evidence: np.ndarray,
    prominence: float = 0.3,
    point: tuple[int, int] | None = None,
    replicated_first: bool = False,
    edges: str = "padded",
) -> ResamplePicks:
    """Boundaries of many curves E [B, L], matched to the point estimate `point` (MATCHING_RULE).

    A curve with NaN/inf values (an undefined signal in that resample) is UNDEFINED, never "none found".
    """
    check_prominence(prominence)
    check_edges(edges)
    evidence = _check_curve(evidence, 2)
    n = evidence.shape[0]
    li = np.full(n, NONE_FOUND, dtype=np.int64)  # [B]
    ig = np.full(n, NONE_FOUND, dtype=np.int64)  # [B]
    li_relabelled = np.zeros(n, dtype=bool)  # [B]
    ig_relabelled = np.zeros(n, dtype=bool)  # [B]
    finite = np.isfinite(evidence).all(axis=1)  # [B]
    li[~finite] = ig[~finite] = UNDEFINED
    for row in np.flatnonzero(finite):
        blocks, prominences = find_evidence_peaks(evidence[row], prominence, replicated_first, edges)
        by_order = _two_most_prominent(blocks, prominences)
        if by_order is None:
            continue
        pair = by_order if point is None else _matched_pair(blocks, prominences, point)
        li[row], ig[row] = (b if b in by_order else NONE_FOUND for b in pair)
        li_relabelled[row], ig_relabelled[row] = li[row] != by_order[0], ig[row] != by_order[1]
    return ResamplePicks(li, ig, li_relabelled, ig_relabelled)
