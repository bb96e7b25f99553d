"""The nulls of experiment=intervention (mspgt/interventions/paired_stats.py): the brittleness null and the
contrast between scales, on planted answers, with their calibration.

A null is only worth reporting if it behaves like one: identical conditions give brittleness 0 and p = 1; a
planted shift far beyond the sampling noise gets the smallest p a permutation test can give; where the two
conditions are exchangeable by construction, p < 0.05 happens about 5% of the time; and a metric counted
twice is the same test (the swaps are shared across a prompt's metrics)."""

from __future__ import annotations

import numpy as np
import pytest

from mspgt.interventions.paired_stats import brittleness, brittleness_null, compare_paired, scale_contrast


def scores(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[dict, dict]:
    clean = {"a": rng.normal(10, 2, n), "b": rng.lognormal(0, 0.5, n)}
    noised = {"a": clean["a"] + rng.normal(shift, 1, n), "b": clean["b"] * np.exp(rng.normal(0, 0.3, n))}
    return clean, noised


def test_identical_conditions_give_zero_and_p_one():
    clean, _ = scores(np.random.default_rng(0), 40)
    null = brittleness_null(clean, clean, ["a", "b"], n_permutations=200)
    assert null["observed"] == 0 and null["p"] == 1 and null["floor"] == 0


def test_the_observed_value_is_the_brittleness_and_a_planted_shift_gets_the_smallest_p():
    clean, noised = scores(np.random.default_rng(1), 60, shift=5.0)
    null = brittleness_null(clean, noised, ["a", "b"], n_permutations=500)
    comps = {m: compare_paired(clean[m], noised[m]) for m in "ab"}
    assert null["observed"] == pytest.approx(brittleness(comps, ["a", "b"]), rel=1e-12)
    assert null["p"] == pytest.approx(1 / 501) and null["observed"] > null["floor"] > null["null_mean"]


def test_a_metric_counted_twice_is_the_same_test():
    clean, noised = scores(np.random.default_rng(2), 30)
    one = brittleness_null(clean, noised, ["a"], n_permutations=300, seed=4)
    two = brittleness_null(clean, noised, ["a", "a"], n_permutations=300, seed=4)
    assert {k: two[k] for k in ("observed", "null_mean", "floor", "p")} == pytest.approx(
        {k: one[k] for k in ("observed", "null_mean", "floor", "p")}, rel=1e-12)


def test_undefined_values_are_left_out_as_the_paired_test_leaves_them_out():
    clean, noised = scores(np.random.default_rng(3), 30, shift=1.0)
    clean["a"][[0, 5]] = np.nan
    comps = {m: compare_paired(clean[m], noised[m]) for m in "ab"}
    assert brittleness_null(clean, noised, ["a", "b"], n_permutations=50)["observed"] == pytest.approx(
        brittleness(comps, ["a", "b"]), rel=1e-12)


def test_under_exchangeable_conditions_p_below_005_is_rare_as_it_should_be():
    """400 data sets where noise does nothing (both conditions are draws of one distribution per prompt):
    the share with p < 0.05 lies within a binomial 99.9% band around 0.05."""
    rng = np.random.default_rng(5)
    ps = []
    for _ in range(400):
        centre = rng.normal(10, 2, 30)
        clean = {"a": centre + rng.normal(0, 1, 30)}
        noised = {"a": centre + rng.normal(0, 1, 30)}
        ps.append(brittleness_null(clean, noised, ["a"], n_permutations=199, seed=int(rng.integers(1 << 30)))["p"])
    rate = float(np.mean(np.array(ps) < 0.05))
    assert 0.015 <= rate <= 0.095, rate


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="one length"):
        brittleness_null({"a": np.ones(3)}, {"a": np.ones(4)}, ["a"])
    with pytest.raises(ValueError, match="n_permutations"):
        brittleness_null({"a": np.ones(3)}, {"a": np.ones(3)}, ["a"], n_permutations=0)


def _three(rng: np.random.Generator, shifts: dict[str, float], n: int = 90) -> tuple[dict, dict]:
    clean = rng.normal(50, 10, n)
    return ({s: clean for s in shifts}, {s: clean + rng.normal(m, 5, n) for s, m in shifts.items()})


def test_scale_contrast_finds_the_planted_largest_scale_and_says_when_it_cannot_tell():
    rng = np.random.default_rng(0)
    clean, noised = _three(rng, {"local": 0.0, "intermediate": 10.0, "global": 2.0})
    r = scale_contrast(clean, noised, "intermediate")
    assert r["holds"] is True and min(lo for lo, _ in r["ci"].values()) > 0
    for s in ("local", "global"):
        assert r["differences"][s] == pytest.approx(abs(noised["intermediate"].mean() / clean[s].mean() - 1) * 100
                                                    - abs(noised[s].mean() / clean[s].mean() - 1) * 100, rel=1e-12)
    clean, noised = _three(rng, {"local": -20.0, "intermediate": 10.0, "global": 0.0})
    assert scale_contrast(clean, noised, "intermediate")["holds"] is False  # local changes it more
    clean, noised = _three(rng, {"local": 0.0, "intermediate": 0.0, "global": 0.0})
    assert scale_contrast(clean, noised, "intermediate")["holds"] is None


def test_scale_contrast_does_not_depend_on_the_order_of_prompts_or_scales():
    rng = np.random.default_rng(1)
    clean, noised = _three(rng, {"local": 1.0, "intermediate": 3.0, "global": 0.5})
    base = scale_contrast(clean, noised, "intermediate")
    order = rng.permutation(90)
    shuffled = scale_contrast({s: v[order] for s, v in clean.items()}, {s: v[order] for s, v in noised.items()},
                              "intermediate")
    assert shuffled["differences"] == pytest.approx(base["differences"], rel=1e-12)
    renamed = scale_contrast({f"z{s}": v for s, v in clean.items()}, {f"z{s}": v for s, v in noised.items()},
                             "zintermediate")
    assert renamed["differences"] == pytest.approx({f"z{s}": d for s, d in base["differences"].items()}, rel=1e-12)


def test_scale_contrast_without_differences_rarely_claims_one():
    """All three scales draw from one distribution (a common shift, and none at all): 'holds' is claimed in at
    most ~2.5% of 200 data sets each (both intervals above 0), 'fails' in at most ~5%; we allow binomial slack."""
    rng = np.random.default_rng(2)
    for shift in (2.0, 0.0):
        verdicts = []
        for _ in range(200):
            clean, noised = _three(rng, {"local": shift, "intermediate": shift, "global": shift}, n=40)
            verdicts.append(scale_contrast(clean, noised, "intermediate", n_resamples=400,
                                           seed=int(rng.integers(1 << 30)))["holds"])
        assert verdicts.count(True) / 200 <= 0.05 and verdicts.count(False) / 200 <= 0.09, (shift, verdicts)


def test_rescore_counts_a_mean_as_reproduced_only_when_both_are_defined_and_equal_or_both_undefined():
    from mspgt.interventions.rescore import _same

    nan = float("nan")
    assert _same(None, nan) and _same(nan, nan) and _same(1.0, 1.0 + 1e-9)
    assert not _same(None, 1.0) and not _same(1.0, nan) and not _same(1.0, 1.01)


def test_scale_contrast_at_a_smaller_alpha_widens_its_intervals_and_says_its_level():
    rng = np.random.default_rng(3)
    clean, noised = _three(rng, {"local": 1.0, "intermediate": 4.0, "global": 0.0})
    wide, narrow = (scale_contrast(clean, noised, "intermediate", alpha=a) for a in (0.01, 0.05))
    assert wide["ci_level"] == pytest.approx(0.99) and narrow["ci_level"] == pytest.approx(0.95)
    assert wide["differences"] == narrow["differences"]  # the estimate does not depend on the level
    for s in ("local", "global"):
        assert wide["ci"][s][0] <= narrow["ci"][s][0] <= narrow["ci"][s][1] <= wide["ci"][s][1]
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="alpha"):
            scale_contrast(clean, noised, "intermediate", alpha=bad)
