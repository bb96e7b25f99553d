"""Group bootstrap of the boundaries (paper 4.1.1: 1,000 resamples, accepted when the 95% CI is < 5 layers).

Resampling unit: groups of sentences (bootstrap.group_size, 16 by default; drawn at random across the
corpus by default, bootstrap.grouping=shuffled, or neighbouring sentences with `consecutive`), drawn with
replacement (docs/method.md, "Data unit"). A
resample is a vector of group counts; `evidence_fn` recomputes the fused evidence from the stored
per-group statistics with those counts, and the peaks are detected again.

CI: percentile interval over the resamples that found the boundary, on integer layers, with the
empirical-distribution quantile (numpy method="inverted_cdf": the smallest observed layer whose
cumulative frequency reaches the level), so both ends are layers that were actually chosen.
Argmax-type statistics are discrete and bootstrap badly, so the selection frequency of every layer and
the number of resamples without such a peak are reported beside the interval.

Each resample's peaks are matched to the point estimate's boundaries (`peaks.MATCHING_RULE`), so a third,
competing peak cannot mix two different peaks into one interval; `n_relabelled` counts the resamples where
matching chose another layer than labelling the two most prominent peaks by layer order would have.
A resample whose evidence is NaN (a signal undefined under that resample, e.g. a task's probe F1 when the
resample holds no held-out word of that task) is counted apart from the resamples without the peak
(`n_undefined`, with `undefined_signals`: which signal was NaN how often); both count against acceptance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from mspgt.errors import MspgtError
from mspgt.fusion.peaks import NONE_FOUND, UNDEFINED, BoundaryPick, ResamplePicks, detect_boundaries_batch
from mspgt.layers import BOUNDARY_NAMES, relative_position
from mspgt.results import BoundaryCI

QUANTILE_METHOD = "inverted_cdf"  # every bootstrap interval of the project (boundaries, kinks): one rule


def percentile_interval(values: np.ndarray, ci_level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of finite `values` (QUANTILE_METHOD); nan, nan when none."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    a = 1 - ci_level
    lo, hi = np.quantile(v, [a / 2, 1 - a / 2], method=QUANTILE_METHOD)
    return float(lo), float(hi)


def resample_counts(n_groups: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[B, G] int64 counts: how often each of G groups is drawn in each of B resamples with replacement."""
    if n_groups < 1 or n_resamples < 1:
        raise MspgtError(
            f"bootstrap needs at least one group and one resample, got {n_groups} groups, {n_resamples} resamples",
            "use more sentences (data.n_sentences) or bootstrap.n_resamples >= 1",
        )
    return rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_resamples).astype(np.int64)


EvidenceFn = Callable[[np.ndarray], "np.ndarray | tuple[np.ndarray, Mapping[str, np.ndarray]]"]


def _boundary_ci(
    point: int | None,
    chosen: np.ndarray,
    relabelled: np.ndarray,
    undefined_signals: dict[str, int],
    n_blocks: int,
    ci_level: float,
    acceptance_width: float,
    max_missing_fraction: float,
) -> BoundaryCI:
    """Summarise the layers chosen for one boundary over resamples (NONE_FOUND / UNDEFINED: no layer)."""
    found = chosen[chosen > 0]  # [B_found]
    n_missing = int(np.sum(chosen == NONE_FOUND))
    n_undefined = int(np.sum(chosen == UNDEFINED))
    layers, counts = np.unique(found, return_counts=True)
    if found.size:
        low, high = percentile_interval(found, ci_level)
        ci_low, ci_high = int(low), int(high)
        width: int | None = ci_high - ci_low
    else:
        ci_low = ci_high = width = None
    accepted = (
        point is not None
        and width is not None
        and width < acceptance_width
        and (n_missing + n_undefined) / chosen.size <= max_missing_fraction
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
        n_undefined=n_undefined,
        undefined_signals=dict(undefined_signals) if n_undefined else {},
        n_relabelled=int(relabelled.sum()),
        chosen=chosen,
    )


# The one range of each bootstrap setting: (test, in words); check_bootstrap_settings and the config validation's
# schema (mspgt/config_schema.py) both use it.
BOOTSTRAP_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "n_resamples": (lambda v: v >= 1, ">= 1"),
    "ci_level": (lambda v: 0 < v < 1, "in (0, 1)"),
    "acceptance_width": (lambda v: v > 0, "> 0"),
    "max_missing_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "group_size": (lambda v: v >= 1, ">= 1"),
}


def check_bootstrap_settings(
    n_resamples: int, ci_level: float, acceptance_width: float, max_missing_fraction: float, group_size: int = 1
) -> None:
    """The one range check of the bootstrap settings (run before any data is touched, and again here)."""
    values = {"n_resamples": n_resamples, "ci_level": ci_level, "acceptance_width": acceptance_width,
              "max_missing_fraction": max_missing_fraction, "group_size": group_size}
    if not all(BOOTSTRAP_RANGES[k][0](v) for k, v in values.items()):
        raise MspgtError(
            f"bootstrap settings out of range: n_resamples={n_resamples}, ci_level={ci_level}, "
            f"acceptance_width={acceptance_width}, max_missing_fraction={max_missing_fraction}, "
            f"group_size={group_size}",
            "use bootstrap.n_resamples >= 1, 0 < bootstrap.ci_level < 1, bootstrap.acceptance_width > 0, "
            "0 <= bootstrap.max_missing_fraction <= 1, bootstrap.group_size >= 1",
        )


def _undefined_signals(signals: Mapping[str, np.ndarray] | None, rows: np.ndarray) -> dict[str, int]:
    """For the resamples `rows` [b] bool with undefined evidence: how many had each signal non-finite."""
    if signals is None or not rows.any():
        return {}
    out = {}
    for name, values in signals.items():
        bad = ~np.isfinite(np.asarray(values, dtype=np.float64)).all(axis=-1)  # [b]
        if np.ndim(bad) == 0:
            bad = np.full(rows.shape, bool(bad))
        out[name] = int((bad & rows).sum())
    return out


def bootstrap_boundaries(
    evidence_fn: EvidenceFn,
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
    replicated_first: bool = False,
    n_probe_seeds: int = 1,
    edges: str = "padded",
) -> dict[str, BoundaryCI]:
    """Bootstrap CIs of the L-I and I-G boundaries over resamples of sentence groups.

    evidence_fn maps group counts [b, G] to fused evidence [b, L], or to (evidence [b, L], signals) with
    signals a mapping name -> [b, L] of the fused signals (then a NaN resample says which signal was
    undefined). It is called on chunks of at most `chunk` resamples to bound memory. Each resample's peaks
    are matched to `point` (peaks.MATCHING_RULE). A boundary is accepted iff the full data found it, its CI
    width is below `acceptance_width` layers (the paper: 5) and at most `max_missing_fraction` of the
    resamples found no such peak or were undefined (that last condition is our definition).
    replicated_first: E(1) copies block 2's attention drift (peaks.find_evidence_peaks); edges: may block 1 and
    block L be peaks (peaks.EDGE_CHOICES). Deterministic for a seed.
    n_probe_seeds: P > 1 probe training seeds are resampled too (probes.n_seeds): each resample also draws
    seed counts [P] ~ multinomial(P, 1/P) from its own stream (the group counts stay those of `seed`), and
    evidence_fn is called as evidence_fn(group_counts [b, G], seed_counts [b, P]).
    """
    check_bootstrap_settings(n_resamples, ci_level, acceptance_width, max_missing_fraction)
    if chunk < 1:
        raise MspgtError(f"bootstrap chunk={chunk}", "use a chunk of at least 1 resample")
    counts = resample_counts(n_groups, n_resamples, np.random.default_rng(seed))  # [B, G]
    seed_counts = (resample_counts(n_probe_seeds, n_resamples, np.random.default_rng([seed, 1]))
                   if n_probe_seeds > 1 else None)  # [B, P]
    pair = (point.li, point.ig) if point.li is not None and point.ig is not None else None
    parts: list[ResamplePicks] = []
    undefined: dict[str, int] = {}
    for start in range(0, n_resamples, chunk):
        part = counts[start : start + chunk]  # [b, G]
        returned = evidence_fn(part) if seed_counts is None else evidence_fn(part, seed_counts[start : start + chunk])
        evidence, signals = returned if isinstance(returned, tuple) else (returned, None)
        evidence = np.asarray(evidence)  # [b, L]
        if evidence.shape != (part.shape[0], n_blocks):
            raise MspgtError(
                f"evidence_fn returned shape {evidence.shape}, expected {(part.shape[0], n_blocks)}",
                "return one fused evidence curve over the L blocks per resample",
            )
        picks = detect_boundaries_batch(evidence, prominence, pair, replicated_first, edges)
        parts.append(picks)
        for name, k in _undefined_signals(signals, picks.li == UNDEFINED).items():
            undefined[name] = undefined.get(name, 0) + k
    li = np.concatenate([p.li for p in parts])  # [B]
    ig = np.concatenate([p.ig for p in parts])  # [B]
    settings = (undefined, n_blocks, ci_level, acceptance_width, max_missing_fraction)
    li_name, ig_name = BOUNDARY_NAMES
    return {
        li_name: _boundary_ci(point.li, li, np.concatenate([p.li_relabelled for p in parts]), *settings),
        ig_name: _boundary_ci(point.ig, ig, np.concatenate([p.ig_relabelled for p in parts]), *settings),
    }
