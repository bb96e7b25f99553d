"""The power of the paired t-test over prompts (mspgt/interventions/power.py) against the published table
values (Cohen 1988; G*Power's "difference between two dependent means", two-sided, alpha 0.05, power 0.80)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mspgt.interventions.power import detectable_effect, paired_t_power, power_record, prompts_for_power


@pytest.mark.parametrize(("effect", "n"), [(0.2, 199), (0.3, 90), (0.5, 34), (0.8, 15)])
def test_prompts_for_power_match_the_published_sample_sizes(effect, n):
    assert prompts_for_power(effect) == n
    assert paired_t_power(n, effect) >= 0.80 > paired_t_power(n - 1, effect)
    assert prompts_for_power(-effect) == n  # two-sided: the sign does not matter


def test_detectable_effect_inverts_the_power():
    for n in (2, 10, 34, 90, 500):
        d = detectable_effect(n)
        assert paired_t_power(n, d) == pytest.approx(0.80, abs=1e-8)
    assert detectable_effect(90) < detectable_effect(34) < detectable_effect(10)  # more prompts, smaller effects


def test_power_at_no_effect_is_the_level_and_agrees_with_simulation():
    assert paired_t_power(30, 0.0) == pytest.approx(0.05, abs=1e-12)
    rng = np.random.default_rng(0)
    n, d, reps = 20, 0.5, 20_000
    diffs = rng.normal(d, 1.0, size=(reps, n))
    rejected = stats.ttest_1samp(diffs, 0.0, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(paired_t_power(n, d), abs=0.01)  # 3 binomial s.e. at 20,000 draws


def test_power_record_and_bad_inputs():
    assert np.isnan(power_record(1)["detectable_dz"])
    with pytest.raises(ValueError):
        prompts_for_power(0.0)
    with pytest.raises(ValueError):
        paired_t_power(1, 0.5)
