"""Rival layer curves with bootstrap bands, their transitions, and how far these sit from the MSPGT boundaries,
over the SAME group resamples as the boundary CIs (docs/method.md, "Rival layer curves"; our rules).

Curves (index: state h_l, l = 0..L, or block l = 1..L):
- `block_influence` [block]: BI(l) = mean over tokens of 1 - cos(h_{l-1}, h_l) (signals/block_influence.py);
- `lens_kl`, `lens_entropy` [state]: logit lens KL(p_L || p_l) and read-out entropy, bits (signals/logit_lens.py);
- `id_twonn`, `id_gride` [state]: intrinsic dimension, mean of per-group estimates (signals/intrinsic_dimension.py).

PRE-REGISTERED TRANSITION RULES (block b = the block whose output is the state where the rule fires):
- `id_peak`: the block whose output state has the largest GRIDE ID (l = 1..L);
- `id_onset`: the first block b <= id_peak whose state's GRIDE ID reaches halfway from the lowest ID of the
  states h_0..h_peak to the peak's (the start of the high-ID phase);
- `lens_kl_fall`: the block with the steepest fall of the logit-lens KL, argmax_b KL(h_{b-1}) - KL(h_b);
- `block_influence_peak`: the interior block (2..L-1) with the largest BI (blocks 1 and L, which change the
  stream most in every model ShortGPT measured, are left out).
AGREEMENT: per transition and boundary, the distance transition - boundary in blocks, in every resample where
the boundary was found; its 95% percentile interval; they COINCIDE when that interval contains 0 and is
narrower than `rivals.agreement_max_width` blocks (5: the paper's acceptance width).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mspgt.fusion.bootstrap import percentile_interval
from mspgt.signals.block_influence import block_influence
from mspgt.signals.intrinsic_dimension import mean_over_groups
from mspgt.signals.logit_lens import lens_curves
from mspgt.signals.rivals import RivalSettings

TRANSITION_RULES = {
    "id_peak": "block whose output has the largest GRIDE intrinsic dimension",
    "id_onset": "first block up to id_peak whose output's GRIDE ID reaches halfway from the lowest ID up to there "
                "to the peak's",
    "lens_kl_fall": "block with the steepest fall of the logit-lens KL(final || read-out)",
    "block_influence_peak": "interior block (2..L-1) with the largest block influence 1 - cos(h_{l-1}, h_l)",
}


@dataclass
class RivalTransition:
    """One rival transition: point estimate and percentile CI over the resamples (blocks, 1-based)."""

    name: str
    rule: str
    block: int | None
    ci_low: float | None
    ci_high: float | None
    selection_frequency: dict[int, int] = field(default_factory=dict)


@dataclass
class Agreement:
    """A rival transition against an MSPGT boundary: distance (transition - boundary) in blocks."""

    transition: str
    boundary: str
    distance: int | None
    ci_low: float | None
    ci_high: float | None
    n_resamples: int
    coincides: bool | None  # None: not testable (no boundary or no transition)


@dataclass
class RivalResult:
    curves: dict[str, dict[str, list]]  # name -> value, ci_low, ci_high, index ("state" or "block")
    transitions: list[RivalTransition]
    agreement: list[Agreement]
    rule: str

    def to_json(self) -> dict[str, Any]:
        return {"curves": self.curves, "transitions": [asdict(t) for t in self.transitions],
                "agreement": [asdict(a) for a in self.agreement], "rule": self.rule}


def _argmax(values: np.ndarray, lo: int = 0) -> np.ndarray:
    """Argmax over the last axis from index lo on; -1 where a row is not finite."""
    part = values[..., lo:]
    ok = np.isfinite(part).all(-1)
    return np.where(ok, np.argmax(np.where(np.isfinite(part), part, -np.inf), -1) + lo, -1)


def id_peak(ids: np.ndarray) -> np.ndarray:
    """ids [..., L+1] over states -> [...] block of the largest ID over h_1..h_L (-1: undefined)."""
    return _argmax(ids, 1)


def id_onset(ids: np.ndarray) -> np.ndarray:
    """ids [..., L+1] -> [...] first block b <= peak with ID(h_b) >= (min_{l <= peak} ID(h_l) + ID(peak)) / 2."""
    flat = ids.reshape(-1, ids.shape[-1])
    peaks = id_peak(flat)
    out = np.full(len(flat), -1)
    for i, (row, p) in enumerate(zip(flat, peaks, strict=True)):
        if p < 1:
            continue
        half = (np.min(row[: p + 1]) + row[p]) / 2
        out[i] = 1 + int(np.argmax(row[1 : p + 1] >= half))
    return out.reshape(ids.shape[:-1])


def lens_kl_fall(kl: np.ndarray) -> np.ndarray:
    """kl [..., L+1] over states -> [...] block b maximising KL(h_{b-1}) - KL(h_b)."""
    at = _argmax(kl[..., :-1] - kl[..., 1:])  # [...]: index b - 1 of the fall
    return np.where(at >= 0, at + 1, -1)


def block_influence_peak(bi: np.ndarray) -> np.ndarray:
    """bi [..., L] over blocks -> [...] interior block (2..L-1) with the largest BI (-1 where L < 3)."""
    if bi.shape[-1] < 3:
        return np.full(bi.shape[:-1], -1)
    at = _argmax(bi[..., 1:-1])  # [...]: index b - 2 among the interior blocks
    return np.where(at >= 0, at + 2, -1)


TRANSITIONS: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "id_peak": ("id_gride", id_peak),
    "id_onset": ("id_gride", id_onset),
    "lens_kl_fall": ("lens_kl", lens_kl_fall),
    "block_influence_peak": ("block_influence", block_influence_peak),
}


def rival_curves(rivals: dict[str, np.ndarray], ids: np.ndarray | None,
                 weights: np.ndarray | None) -> dict[str, np.ndarray]:
    """Every rival curve for group weights None, [G] or [B, G] -> [n] or [B, n] each.
    rivals: the pass's sums (CorpusStatistics.rivals); ids [2, G, L+1] per-group (TwoNN, GRIDE) or None."""
    out: dict[str, np.ndarray] = {}
    if "bi_sum" in rivals:
        out["block_influence"] = block_influence(rivals["bi_sum"], rivals["bi_count"], weights)
    if "lens_sum" in rivals:
        both = lens_curves(rivals["lens_sum"], rivals["lens_count"], weights)  # [..., 2, m]
        out["lens_kl"], out["lens_entropy"] = both[..., 0, :], both[..., 1, :]
    if ids is not None:
        out["id_twonn"], out["id_gride"] = mean_over_groups(ids[0], weights), mean_over_groups(ids[1], weights)
    return out


def _interval(values: np.ndarray, ci_level: float) -> tuple[float | None, float | None]:
    lo, hi = percentile_interval(values, ci_level)
    return (None, None) if not np.isfinite(lo) else (lo, hi)


def rival_result(rivals: dict[str, np.ndarray], ids: np.ndarray | None, counts: np.ndarray,
                 boundaries: dict[str, tuple[int | None, np.ndarray | None]], settings: RivalSettings,
                 ci_level: float = 0.95) -> RivalResult:
    """Curves with bands, transitions with CIs and the agreement table. counts [B, G]: the boundary
    bootstrap's resamples; boundaries: name -> (point layer or None, [B] layer chosen per resample or None)."""
    point, boot = rival_curves(rivals, ids, None), rival_curves(rivals, ids, counts)
    curves = {}
    for name, curve in point.items():
        band = [_interval(boot[name][:, i], ci_level) for i in range(curve.shape[-1])]
        curves[name] = {"value": curve.tolist(), "ci_low": [b[0] for b in band], "ci_high": [b[1] for b in band],
                        "index": "block" if name == "block_influence" else "state"}
    transitions, agreement = [], []
    for tname, (curve_name, rule) in TRANSITIONS.items():
        if curve_name not in point:
            continue
        at = int(rule(point[curve_name]))
        per_resample = np.asarray(rule(boot[curve_name]))  # [B]
        found = per_resample[per_resample >= 1]
        layers, n = np.unique(found, return_counts=True)
        lo, hi = _interval(found, ci_level)
        transitions.append(RivalTransition(tname, TRANSITION_RULES[tname], at if at >= 1 else None, lo, hi,
                                           {int(k): int(c) for k, c in zip(layers, n, strict=True)}))
        for bname, (b_point, b_chosen) in boundaries.items():
            if b_point is None or b_chosen is None or at < 1:
                agreement.append(Agreement(tname, bname, None, None, None, 0, None))
                continue
            ok = (np.asarray(b_chosen) >= 1) & (per_resample >= 1)
            dist = per_resample[ok] - np.asarray(b_chosen)[ok]
            dlo, dhi = _interval(dist, ci_level)
            coincides = (dlo is not None and dlo <= 0 <= dhi and (dhi - dlo) < settings.agreement_max_width)
            agreement.append(Agreement(tname, bname, at - int(b_point), dlo, dhi, int(ok.sum()), bool(coincides)))
    rule = (f"a rival transition coincides with a boundary when the {ci_level:.0%} percentile interval of "
            f"(transition - boundary) over the shared resamples contains 0 and is narrower than "
            f"{settings.agreement_max_width} blocks (pre-registered, ours)")
    return RivalResult(curves, transitions, agreement, rule)
