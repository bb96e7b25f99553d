"""Group bootstrap of the boundaries: planted boundaries give narrow accepted CIs, noise does not."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mspgt.errors import MspgtError
from mspgt.fusion.bootstrap import BoundaryCI, _boundary_ci, bootstrap_boundaries, resample_counts
from mspgt.fusion.fuse import minmax_normalise
from mspgt.fusion.peaks import detect_boundaries

N_BLOCKS = 24
PLANTED = (8, 17)


def _per_group_curves(n_groups: int, signal: float, noise: float, seed: int) -> np.ndarray:
    """c_g = signal * planted two-peak curve + noise: [G, L] (blocks 1..L at index 0..L-1)."""
    rng = np.random.default_rng(seed)
    layers = np.arange(1, N_BLOCKS + 1)
    planted = sum(
        h * np.exp(-0.5 * ((layers - c) / 0.8) ** 2) for c, h in zip(PLANTED, (1.0, 0.8), strict=True)
    )
    return signal * planted + noise * rng.normal(size=(n_groups, N_BLOCKS))


def _evidence_fn(curves: np.ndarray):
    def evidence(counts: np.ndarray) -> np.ndarray:  # [b, G] -> [b, L]
        return minmax_normalise(counts @ curves / counts.sum(axis=1, keepdims=True))

    return evidence


def _run(curves: np.ndarray, **kwargs) -> dict[str, BoundaryCI]:
    evidence_fn = _evidence_fn(curves)
    point = detect_boundaries(evidence_fn(np.ones((1, len(curves))))[0])
    return bootstrap_boundaries(evidence_fn, len(curves), N_BLOCKS, point, **kwargs)


def test_resample_counts() -> None:
    counts = resample_counts(50, 400, np.random.default_rng(0))
    assert counts.shape == (400, 50) and counts.dtype == np.int64
    assert (counts.sum(axis=1) == 50).all() and (counts >= 0).all()
    assert abs(counts.mean() - 1.0) < 1e-12
    assert 0.3 < (counts == 0).mean() < 0.44  # about e^-1 of the groups are left out of a resample
    np.testing.assert_array_equal(counts, resample_counts(50, 400, np.random.default_rng(0)))
    with pytest.raises(MspgtError):
        resample_counts(0, 10, np.random.default_rng(0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_boundaries_are_accepted(seed: int) -> None:
    result = _run(_per_group_curves(200, signal=1.0, noise=0.5, seed=seed), n_resamples=500, seed=seed)
    for name, planted in zip(("L-I", "I-G"), PLANTED, strict=True):
        ci = result[name]
        assert ci.layer == planted
        assert ci.relative == pytest.approx(planted / N_BLOCKS)
        assert ci.ci_low <= planted <= ci.ci_high
        assert ci.width == ci.ci_high - ci.ci_low and ci.width < 5
        assert ci.accepted
        assert ci.selection_frequency[planted] >= 0.8 * ci.n_resamples
        assert sum(ci.selection_frequency.values()) + ci.n_missing == ci.n_resamples == 500


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pure_noise_is_not_accepted(seed: int) -> None:
    result = _run(_per_group_curves(200, signal=0.0, noise=1.0, seed=seed), n_resamples=500, seed=seed)
    for ci in result.values():
        assert not ci.accepted
        # matched peaks (peaks.MATCHING_RULE): noise shows as a wide CI or as many resamples missing the peak
        assert ci.width is None or ci.width >= 5 or ci.n_missing > 0.05 * ci.n_resamples
        top = max(ci.selection_frequency.values(), default=0)
        assert top < 0.8 * ci.n_resamples  # no layer dominates


@pytest.mark.parametrize(("tail", "expected_low"), [(2, 5), (3, 3)])
def test_percentile_interval_on_observed_layers(tail: int, expected_low: int) -> None:
    """inverted_cdf: the low end is the smallest layer whose cumulative frequency reaches 2.5%."""
    chosen = np.array([3] * tail + [5] * (97 - tail) + [9] * 2 + [0])  # 100 resamples, one without a peak
    none = np.zeros(chosen.size, dtype=bool)
    ci = _boundary_ci(5, chosen, none, {}, 10, 0.95, 5, 0.05)
    assert (ci.ci_low, ci.ci_high) == (expected_low, 5)
    assert ci.selection_frequency == {3: tail, 5: 97 - tail, 9: 2}
    assert ci.n_missing == 1 and ci.accepted
    strict = _boundary_ci(5, chosen, none, {}, 10, 0.95, 5, 0.0)  # no resample may miss the peak
    assert not strict.accepted


def test_missing_point_estimate_is_not_accepted() -> None:
    curves = _per_group_curves(100, signal=1.0, noise=0.3, seed=4)
    evidence_fn = _evidence_fn(curves)
    point = detect_boundaries(np.zeros(N_BLOCKS))  # no peaks on the full data
    result = bootstrap_boundaries(evidence_fn, 100, N_BLOCKS, point, n_resamples=100)
    for ci in result.values():
        assert ci.layer is None and ci.relative is None and not ci.accepted


def test_resamples_without_peaks_are_counted_missing() -> None:
    def flat(counts: np.ndarray) -> np.ndarray:
        return np.zeros((len(counts), N_BLOCKS))

    point = detect_boundaries(minmax_normalise(_per_group_curves(1, 1.0, 0.0, seed=0)[0]))
    result = bootstrap_boundaries(flat, 30, N_BLOCKS, point, n_resamples=40)
    for ci in result.values():
        assert ci.n_missing == 40 and ci.ci_low is None and ci.width is None and not ci.accepted
        assert ci.selection_frequency == {}


def test_nan_resamples_are_counted_apart_with_the_signal_that_was_undefined() -> None:
    """Audit defect: a resample whose evidence is NaN is not "no such peak"; it is n_undefined, and the
    output says which signal made it NaN."""
    curves = _per_group_curves(60, signal=1.0, noise=0.05, seed=2)

    def evidence_fn(counts: np.ndarray):
        evidence = _evidence_fn(curves)(counts)  # [b, L]
        probe = np.where(counts[:, :1] > 1, np.nan, evidence)  # undefined where group 0 was drawn twice+
        evidence = np.where(np.isnan(probe).any(axis=1, keepdims=True), np.nan, evidence)
        return evidence, {"probe_jump": probe, "representation_change": np.ones_like(counts[:, :N_BLOCKS], dtype=float)}

    point = detect_boundaries(_evidence_fn(curves)(np.ones((1, 60)))[0])
    result = bootstrap_boundaries(evidence_fn, 60, N_BLOCKS, point, n_resamples=200, seed=3)
    counts = resample_counts(60, 200, np.random.default_rng(3))
    expected = int((counts[:, 0] > 1).sum())
    assert expected > 5
    for ci in result.values():
        assert ci.n_undefined == expected and ci.n_missing == 0
        assert ci.undefined_signals == {"probe_jump": expected, "representation_change": 0}
        assert sum(ci.selection_frequency.values()) + ci.n_missing + ci.n_undefined == 200
        assert not ci.accepted  # undefined resamples count against acceptance (> 5%)


def test_same_seed_same_result_and_chunking_does_not_matter() -> None:
    curves = _per_group_curves(150, signal=0.5, noise=1.0, seed=5)
    first = _run(curves, n_resamples=300, seed=7)
    again = _run(curves, n_resamples=300, seed=7, chunk=17)
    assert {k: v.as_dict() for k, v in first.items()} == {k: v.as_dict() for k, v in again.items()}
    other = _run(curves, n_resamples=300, seed=8)
    assert first["L-I"].selection_frequency != other["L-I"].selection_frequency


def test_as_dict_is_json_ready() -> None:
    result = _run(_per_group_curves(60, signal=1.0, noise=0.3, seed=6), n_resamples=50)
    text = json.dumps({name: ci.as_dict() for name, ci in result.items()})
    assert '"ci_level": 0.95' in text


def test_bad_settings_and_bad_evidence_raise() -> None:
    curves = _per_group_curves(20, signal=1.0, noise=0.3, seed=0)
    point = detect_boundaries(_evidence_fn(curves)(np.ones((1, 20)))[0])
    with pytest.raises(MspgtError, match="ci_level"):
        bootstrap_boundaries(_evidence_fn(curves), 20, N_BLOCKS, point, ci_level=1.5)
    with pytest.raises(MspgtError, match="evidence_fn returned shape"):
        bootstrap_boundaries(_evidence_fn(curves), 20, N_BLOCKS + 1, point, n_resamples=10)
