"""Boundary detection on the fused evidence curve (paper 4.1.1): the two most prominent peaks.

`scipy.signal.find_peaks(E, prominence=0.3)` (the paper's threshold) never returns the first or last
sample, so E is padded with one zero on each side: a peak at block 1 or block L can then be found
(method.md, "Fusion and peaks"). The two most prominent peaks (ties -> the earlier layer), in layer
order, are the L-I and I-G boundaries. Fewer than two peaks is a result, never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.signal import find_peaks

from mspgt.errors import MspgtError


@dataclass
class BoundaryPick:
    """Detected boundaries as 1-based block numbers (None: fewer than two peaks), and every peak found."""

    li: int | None
    ig: int | None
    peaks: list[int] = field(default_factory=list)  # 1-based blocks of all peaks, in layer order
    prominences: list[float] = field(default_factory=list)  # prominence of each peak in `peaks`


def _check_prominence(prominence: float) -> None:
    if not 0 < prominence <= 1:
        raise MspgtError(
            f"peak prominence {prominence} is outside (0, 1]",
            "set fusion.prominence to a value in (0, 1], e.g. 0.3 (the paper)",
        )


def _peaks(evidence: np.ndarray, prominence: float) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of one curve [L] as 1-based blocks (padding index i is block i) and their prominences."""
    padded = np.concatenate(([0.0], evidence, [0.0]))  # [L + 2]
    index, props = find_peaks(padded, prominence=prominence)
    return index, props["prominences"]


def _two_most_prominent(blocks: np.ndarray, prominences: np.ndarray) -> tuple[int, int] | None:
    """The two most prominent peaks (ties -> earlier block), returned in layer order."""
    if len(blocks) < 2:
        return None
    order = np.lexsort((blocks, -prominences))  # by prominence descending, then block ascending
    first, second = sorted(int(b) for b in blocks[order[:2]])
    return first, second


def detect_boundaries(evidence: np.ndarray, prominence: float = 0.3) -> BoundaryPick:
    """L-I and I-G boundaries of a fused evidence curve E [L] (index i = block i + 1)."""
    _check_prominence(prominence)
    evidence = np.asarray(evidence, dtype=np.float64)
    if evidence.ndim != 1 or evidence.size == 0 or not np.isfinite(evidence).all():
        raise MspgtError(
            f"evidence must be a finite curve over layers [L], got shape {evidence.shape}"
            + ("" if evidence.ndim != 1 or np.isfinite(evidence).all() else " with NaN/inf values"),
            "check the signals that were fused (a constant representation gives an undefined CKA)",
        )
    blocks, prominences = _peaks(evidence, prominence)
    pair = _two_most_prominent(blocks, prominences)
    li, ig = pair if pair is not None else (None, None)
    return BoundaryPick(li, ig, [int(b) for b in blocks], [float(p) for p in prominences])


def detect_boundaries_batch(evidence: np.ndarray, prominence: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Boundaries of many curves E [B, L] -> li [B], ig [B] int64 blocks; 0 = none found.

    A curve with NaN/inf values (an undefined signal in one resample) counts as none found.
    """
    _check_prominence(prominence)
    evidence = np.asarray(evidence, dtype=np.float64)
    if evidence.ndim != 2:
        raise MspgtError(f"evidence must be [B, L], got shape {evidence.shape}", "stack one curve per row")
    li = np.zeros(evidence.shape[0], dtype=np.int64)  # [B]
    ig = np.zeros(evidence.shape[0], dtype=np.int64)  # [B]
    finite = np.isfinite(evidence).all(axis=1)  # [B]
    for row in np.flatnonzero(finite):
        pair = _two_most_prominent(*_peaks(evidence[row], prominence))
        if pair is not None:
            li[row], ig[row] = pair
    return li, ig
