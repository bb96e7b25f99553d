"""The Gaussian reference that calibrates the intrinsic-dimension estimates (signals/intrinsic_dimension.py).

Nearest-neighbour ID estimators are biased low at a high ID and a small sample (the density is not constant
across a point's neighbourhood when the neighbours are as far away as the data's own scale). The calibration
(our rule, in the spirit of the reference-based corrections of Camastra & Vinciarelli 2002 and Rozza et al.
2012) maps a raw dadapy estimate r from n points to the dimension d at which n points of an isotropic Gaussian
in R^d give r on average:

    E_d,n = mean over REFERENCE_SEEDS seeded Gaussian samples of the raw estimator (the same code path),
    calibrated(r, n) = the d with E_d,n = r (linear interpolation in d; between two tabulated n, linear in log n).

The table of E_d,n for the default GRIDE range (8) ships as `id_reference.json`, made by
`python -m mspgt.signals.id_reference` (deterministic; minutes on one core); other ranges are tabulated on first
use in the process. A raw estimate above the table's largest dimension (256) is clamped there, with a warning.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np

from mspgt.signals.id_estimators import raw_estimates

log = logging.getLogger(__name__)

TABLE = Path(__file__).with_name("id_reference.json")
REFERENCE_N = tuple(int(round(32 * 2 ** (i / 4))) for i in range(17))  # 32 .. 512, steps of 2^(1/4)
REFERENCE_DIMS = tuple([*range(1, 17), *range(18, 33, 2), *range(36, 65, 4), *range(72, 129, 8),
                        *range(144, 257, 16)])
REFERENCE_SEEDS = 32


def reference_row(n: int, gride_range_max: int, dims: tuple[int, ...] = REFERENCE_DIMS,
                  seeds: int = REFERENCE_SEEDS) -> np.ndarray:
    """[2, len(dims)] mean raw (TwoNN, GRIDE) of n isotropic Gaussian points in R^d, over `seeds` samples."""
    out = np.zeros((2, len(dims)))
    for j, d in enumerate(dims):
        for s in range(seeds):
            points = np.random.default_rng([n, d, s]).normal(size=(n, d))
            out[:, j] += raw_estimates(points, gride_range_max)
    return out / seeds


@lru_cache(maxsize=8)
def reference_table(gride_range_max: int) -> np.ndarray:
    """[len(REFERENCE_N), 2, len(REFERENCE_DIMS)] E_d,n: the shipped table for its range, else tabulated now."""
    if TABLE.exists():
        stored = json.loads(TABLE.read_text())
        if (stored["gride_range_max"] == gride_range_max and tuple(stored["n"]) == REFERENCE_N
                and tuple(stored["dims"]) == REFERENCE_DIMS):
            return np.array(stored["mean_raw"])
    log.info("tabulating the Gaussian ID reference for gride_range_max=%d (minutes)", gride_range_max)
    return np.stack([reference_row(n, gride_range_max) for n in REFERENCE_N])


def _invert(raw: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """raw [k] through one increasing curve E_d (made monotone by a running maximum) -> d [k], clamped."""
    curve = np.maximum.accumulate(curve) + np.arange(len(curve)) * 1e-9  # strictly increasing for np.interp
    if np.any(raw > curve[-1]):
        log.warning("a raw ID estimate (%.1f) lies above the Gaussian reference's largest dimension (%d): "
                    "clamped there", float(np.max(raw)), REFERENCE_DIMS[-1])
    return np.interp(raw, curve, np.array(REFERENCE_DIMS, dtype=float))


def calibrate(raw: np.ndarray, n: int, gride_range_max: int = 8) -> np.ndarray:
    """raw [2] (TwoNN, GRIDE) estimated from n points -> [2] calibrated IDs (see the module docstring)."""
    if not REFERENCE_N[0] <= n <= REFERENCE_N[-1]:
        raise ValueError(f"n = {n} points: the ID reference covers {REFERENCE_N[0]}..{REFERENCE_N[-1]}")
    table = reference_table(gride_range_max)
    hi = int(np.searchsorted(REFERENCE_N, n))
    lo = max(hi - 1, 0) if REFERENCE_N[hi] != n else hi
    t = 0.0 if lo == hi else np.log(n / REFERENCE_N[lo]) / np.log(REFERENCE_N[hi] / REFERENCE_N[lo])
    out = np.empty(2)
    for e in range(2):
        at_lo = _invert(raw[e : e + 1], table[lo, e])[0]
        at_hi = _invert(raw[e : e + 1], table[hi, e])[0]
        out[e] = (1 - t) * at_lo + t * at_hi
    return out


def main() -> None:
    """Writes id_reference.json for the default GRIDE range (8)."""
    rows = []
    for n in REFERENCE_N:
        rows.append(reference_row(n, 8))
        print(f"n = {n}: GRIDE at d = 5, 20: {rows[-1][1, 4]:.2f}, {rows[-1][1, REFERENCE_DIMS.index(20)]:.2f}",
              flush=True)
    TABLE.write_text(json.dumps({
        "made_by": "python -m mspgt.signals.id_reference", "estimators": ["twonn", "gride"],
        "gride_range_max": 8, "seeds": REFERENCE_SEEDS, "n": list(REFERENCE_N), "dims": list(REFERENCE_DIMS),
        "mean_raw": np.round(np.stack(rows), 5).tolist()}, indent=None) + "\n")


if __name__ == "__main__":
    main()
