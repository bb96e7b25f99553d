"""Fusion (paper eq. 6) and boundary peaks: weight normalisation, every error, planted curves recovered."""

from __future__ import annotations

import numpy as np
import pytest

from mspgt.errors import MspgtError
from mspgt.fusion.fuse import SIGNAL_NAMES, fuse, minmax_normalise, validate_fusion
from mspgt.fusion.peaks import NONE_FOUND, UNDEFINED, detect_boundaries, detect_boundaries_batch

ALL_ON = dict.fromkeys(SIGNAL_NAMES, True)
EQUAL = dict.fromkeys(SIGNAL_NAMES, 1.0)


def _bumps(n_blocks: int, centres: list[int], heights: list[float], width: float = 1.0) -> np.ndarray:
    """A curve over blocks 1..L (index l-1) with Gaussian bumps at the given 1-based blocks."""
    layers = np.arange(1, n_blocks + 1)
    return sum(h * np.exp(-0.5 * ((layers - c) / width) ** 2) for c, h in zip(centres, heights, strict=True))


def _signals(seed: int, n_blocks: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=n_blocks) * (i + 1) + i for i, name in enumerate(SIGNAL_NAMES)}


def test_minmax_normalise() -> None:
    s = np.array([[2.0, 4.0, 3.0], [-1.0, -1.0, -1.0]])
    np.testing.assert_allclose(minmax_normalise(s), [[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 20))
    np.testing.assert_allclose(minmax_normalise(3.0 * x - 7.0), minmax_normalise(x), atol=1e-12)


def test_fuse_normalises_weights() -> None:
    signals = _signals(0)
    equal = fuse(signals, EQUAL, ALL_ON)
    np.testing.assert_allclose(fuse(signals, dict.fromkeys(SIGNAL_NAMES, 7.0), ALL_ON), equal, atol=1e-12)
    expected = sum(minmax_normalise(s) for s in signals.values()) / 3
    np.testing.assert_allclose(equal, expected, atol=1e-12)
    assert equal.min() >= 0 and equal.max() <= 1
    weighted = fuse(
        signals, {"representation_change": 3.0, "probe_jump": 1.0, "attention_drift": 0.0}, ALL_ON
    )
    np.testing.assert_allclose(
        weighted,
        0.75 * minmax_normalise(signals["representation_change"])
        + 0.25 * minmax_normalise(signals["probe_jump"]),
        atol=1e-12,
    )


def test_fuse_ignores_disabled_signals() -> None:
    signals = _signals(1)
    enabled = {"representation_change": True, "probe_jump": False, "attention_drift": False}
    only_rep = {"representation_change": signals["representation_change"]}  # disabled arrays may be absent
    np.testing.assert_allclose(
        fuse(only_rep, EQUAL, enabled), minmax_normalise(signals["representation_change"]), atol=1e-12
    )
    fused = fuse(signals, EQUAL, enabled)
    assert fused.max() == pytest.approx(1.0)  # a single signal keeps the full [0, 1] range


def test_fuse_batches() -> None:
    rng = np.random.default_rng(2)
    batch = {name: rng.normal(size=(4, 10)) for name in SIGNAL_NAMES}  # [B, L] each
    fused = fuse(batch, EQUAL, ALL_ON)
    assert fused.shape == (4, 10)
    single = fuse({name: s[2] for name, s in batch.items()}, EQUAL, ALL_ON)
    np.testing.assert_allclose(fused[2], single, atol=1e-12)


@pytest.mark.parametrize(
    ("signals_delete", "weights", "enabled", "match"),
    [
        (None, {**EQUAL, "rep_change": 1.0}, ALL_ON, "unknown signal"),
        (None, EQUAL, {**ALL_ON, "sig3": True}, "unknown signal"),
        (None, {**EQUAL, "probe_jump": -1.0}, ALL_ON, "non-negative"),
        (None, {**EQUAL, "probe_jump": float("nan")}, ALL_ON, "finite"),
        (
            None,
            {"representation_change": 0.0, "probe_jump": 0.0, "attention_drift": 5.0},
            {**ALL_ON, "attention_drift": False},
            "all zero",
        ),
        (None, EQUAL, dict.fromkeys(SIGNAL_NAMES, False), "no signal is enabled"),
        (None, {"representation_change": 1.0}, ALL_ON, "has no weight"),
        ("attention_drift", EQUAL, ALL_ON, "have no values"),
    ],
)
def test_fuse_errors(signals_delete: str | None, weights: dict, enabled: dict, match: str) -> None:
    signals = _signals(3)
    if signals_delete:
        del signals[signals_delete]
    with pytest.raises(MspgtError, match=match) as error:
        fuse(signals, weights, enabled)
    assert error.value.fix  # every error names the fix


def test_fuse_rejects_unknown_signal_array_and_mismatched_layers() -> None:
    with pytest.raises(MspgtError, match="unknown signal"):
        fuse({**_signals(4), "extra": np.zeros(12)}, EQUAL, ALL_ON)
    mismatched = {**_signals(4), "probe_jump": np.zeros(11)}
    with pytest.raises(MspgtError, match="shapes"):
        fuse(mismatched, EQUAL, ALL_ON)


def test_validate_fusion() -> None:
    validate_fusion(EQUAL, ALL_ON, 0.3)
    validate_fusion(EQUAL, ALL_ON, 1.0)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(MspgtError, match="prominence"):
            validate_fusion(EQUAL, ALL_ON, bad)
    with pytest.raises(MspgtError, match="no signal"):
        validate_fusion(EQUAL, dict.fromkeys(SIGNAL_NAMES, False), 0.3)


@pytest.mark.parametrize(("li", "ig"), [(5, 20), (1, 14), (9, 32), (1, 32), (15, 17)])
def test_planted_boundaries_are_recovered(li: int, ig: int) -> None:
    curve = minmax_normalise(_bumps(32, [li, ig], [1.0, 0.8], width=0.5))
    pick = detect_boundaries(curve, prominence=0.3)
    assert (pick.li, pick.ig) == (li, ig)
    assert set(pick.peaks) == {li, ig}
    assert len(pick.prominences) == len(pick.peaks)


def test_two_most_prominent_of_three_in_layer_order() -> None:
    curve = minmax_normalise(_bumps(24, [4, 12, 20], [0.9, 0.5, 1.0]))
    pick = detect_boundaries(curve)
    assert (pick.li, pick.ig) == (4, 20)
    assert pick.peaks == [4, 12, 20]
    assert pick.prominences[1] < min(pick.prominences[0], pick.prominences[2])


def test_ties_go_to_the_earlier_layer() -> None:
    curve = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0])  # three equal peaks at blocks 2, 4, 6
    pick = detect_boundaries(curve)
    assert pick.peaks == [2, 4, 6]
    assert (pick.li, pick.ig) == (2, 4)
    curve = np.array([0.0, 1.0, 0.0, 0.5, 0.0, 0.5, 0.0])  # one clear winner, a tie for second
    assert (detect_boundaries(curve).li, detect_boundaries(curve).ig) == (2, 4)


@pytest.mark.parametrize(
    "curve",
    [
        np.zeros(10),  # flat
        np.linspace(0, 1, 10),  # a ramp: one peak at the last layer
        minmax_normalise(_bumps(16, [8], [1.0])),  # one peak
        np.array([0.0, 1.0, 0.9, 0.95, 0.85, 0.0]),  # a second bump below the prominence threshold
    ],
)
def test_fewer_than_two_peaks_is_a_result(curve: np.ndarray) -> None:
    pick = detect_boundaries(curve, prominence=0.3)
    assert pick.li is None and pick.ig is None
    assert len(pick.peaks) <= 1


def test_prominence_threshold_selects_peaks() -> None:
    curve = np.array([0.0, 1.0, 0.6, 0.8, 0.0])  # second bump: prominence 0.2
    assert detect_boundaries(curve, prominence=0.3).li is None
    assert (detect_boundaries(curve, prominence=0.1).li, detect_boundaries(curve, prominence=0.1).ig) == (
        2,
        4,
    )


def test_batch_matches_single_curves() -> None:
    rng = np.random.default_rng(5)
    curves = minmax_normalise(rng.random((300, 32)) + _bumps(32, [7, 25], [1.5, 1.2]))  # [B, L]
    curves[3] = 0.0  # no peak at all
    curves[4, 10] = np.nan  # an undefined resample
    picks = detect_boundaries_batch(curves, prominence=0.3)  # no point estimate: two most prominent
    li, ig = picks.li, picks.ig
    assert li.shape == ig.shape == (300,)
    for row in range(300):
        if row == 4:
            assert li[row] == ig[row] == UNDEFINED  # NaN is not "no such peak"
            continue
        pick = detect_boundaries(curves[row], prominence=0.3)
        assert (li[row], ig[row]) == (pick.li or NONE_FOUND, pick.ig or NONE_FOUND)
    assert li[3] == ig[3] == NONE_FOUND
    assert not picks.li_relabelled.any() and not picks.ig_relabelled.any()


def test_resample_peaks_are_matched_to_the_point_estimate() -> None:
    """Audit defect: a competing third peak must not be mixed into a boundary's CI. Point estimate (5, 15).
    Resample 1: the third peak (block 10) outranks the one at block 5: labelling by layer order put 10 into
    the L-I interval; matched, L-I is missing in that resample. Resample 2: top peaks (2, 9) with a weak
    peak at 16: by order I-G = 9; matched, 9 is not the I-G peak, so I-G is missing and L-I = 2."""
    three = minmax_normalise(_bumps(20, [5, 10, 15], [0.6, 0.9, 1.0], width=0.7))
    low = minmax_normalise(_bumps(20, [2, 9, 16], [1.0, 0.9, 0.5], width=0.7))
    two = minmax_normalise(_bumps(20, [6, 15], [0.9, 1.0], width=0.7))
    assert (detect_boundaries(three).li, detect_boundaries(three).ig) == (10, 15)  # the order rule
    assert (detect_boundaries(low).li, detect_boundaries(low).ig) == (2, 9)
    picks = detect_boundaries_batch(np.stack([three, low, two]), prominence=0.3, point=(5, 15))
    assert picks.li.tolist() == [NONE_FOUND, 2, 6] and picks.ig.tolist() == [15, NONE_FOUND, 15]
    assert picks.li_relabelled.tolist() == [True, False, False]
    assert picks.ig_relabelled.tolist() == [False, True, False]
    # far from the point estimate the nearest pair still wins; ties go to the larger summed prominence
    tie = minmax_normalise(_bumps(20, [3, 7, 15], [0.7, 0.9, 1.0], width=0.6))  # 3 and 7 both 2 from 5
    assert detect_boundaries_batch(tie[None], point=(5, 15)).li.tolist() == [7]


def test_a_plateau_from_replicated_first_block_does_not_move_a_peak() -> None:
    """Audit defect: first_block=replicate sets S_attn(1) = S_attn(2); a JS peak at block 2 then forms a
    two-block plateau that find_peaks reports at block 1. The planted peak at block 2 is found at 2."""
    from mspgt.signals.attention_drift import attention_drift

    js = _bumps(16, [2, 11], [1.0, 0.8], width=0.5)  # [L] JS of blocks 1..L, a peak at block 2
    js[0] = 0.05  # block 1's own value is never used by replicate
    drift = attention_drift(js[None], np.zeros(1), np.ones(1), first_block="replicate")  # [L]
    assert drift[0] == drift[1]
    only_attention = {"attention_drift": True, "representation_change": False, "probe_jump": False}
    evidence = fuse({"attention_drift": drift}, EQUAL, only_attention)
    pick = detect_boundaries(evidence, replicated_first=True)
    assert (pick.li, pick.ig) == (2, 11)
    assert detect_boundaries_batch(evidence[None], replicated_first=True).li.tolist() == [2]
    # a three-block plateau starting at block 1 is centred on blocks 2..3 -> 2; a plateau elsewhere as before
    plateau = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    assert detect_boundaries(plateau, replicated_first=True).peaks == [2, 7]
    assert detect_boundaries(plateau).peaks == [2, 7]  # (1 + 3) // 2 = 2 either way
    assert detect_boundaries(np.array([1.0, 1.0, 0.0, 0.0, 1.0]), replicated_first=True).peaks == [2, 5]


def test_detect_errors() -> None:
    with pytest.raises(MspgtError, match="prominence"):
        detect_boundaries(np.zeros(5), prominence=0.0)
    with pytest.raises(MspgtError):
        detect_boundaries(np.zeros((2, 5)))
    with pytest.raises(MspgtError, match="NaN"):
        detect_boundaries(np.array([0.0, np.nan, 1.0]))
    with pytest.raises(MspgtError):
        detect_boundaries_batch(np.zeros(5))
