"""Rival layer curves (block influence, logit lens, intrinsic dimension), their transitions and agreement with the
boundaries: planted answers, exact identities, the coverage of the per-group ID interval."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mspgt.errors import MspgtError
from mspgt.fusion.bootstrap import percentile_interval, resample_counts
from mspgt.fusion.rival_transitions import (
    block_influence_peak,
    id_onset,
    id_peak,
    lens_kl_fall,
    rival_result,
)
from mspgt.signals.block_influence import block_influence, group_block_influence
from mspgt.signals.id_reference import (
    REFERENCE_DIMS,
    REFERENCE_N,
    REFERENCE_SEEDS,
    calibrate,
    reference_row,
    reference_table,
)
from mspgt.signals.intrinsic_dimension import (
    group_intrinsic_dimension,
    intrinsic_dimension,
    mean_over_groups,
    nearest_neighbours,
    raw_estimates,
    states_intrinsic_dimension,
)
from mspgt.signals.logit_lens import lens_reader, logit_lens_sums
from mspgt.signals.rivals import RivalSettings


def subspace_points(n: int, d: int, seed: int, ambient: int = 576) -> np.ndarray:
    """n Gaussian points of a d-dimensional linear subspace, isometrically embedded in `ambient` dimensions."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(ambient, d)))
    return rng.normal(size=(n, d)) @ basis.T


@pytest.mark.parametrize("d", [5, 20])
def test_intrinsic_dimension_of_a_planted_subspace_within_ten_percent(d):
    """The pass's estimand (the mean over groups of a group's 128 word states; docs/method.md) on Gaussian points
    of a d-dimensional linear subspace of R^576: calibrated TwoNN and GRIDE within 10% of d. The reference's
    own samples are seeded apart from these (signals/id_reference.py)."""
    G = 30
    feats = np.concatenate([subspace_points(128, d, seed=100 * d + g) for g in range(G)])[:, None]  # [N, 1, 576]
    ids = group_intrinsic_dimension(feats.astype(np.float16), np.repeat(np.arange(G), 128), G)
    twonn, gride = mean_over_groups(ids[0])[0], mean_over_groups(ids[1])[0]
    assert twonn == pytest.approx(d, rel=0.1) and gride == pytest.approx(d, rel=0.1)


def test_raw_estimates_underestimate_a_high_dimension_as_measured():
    """Without the calibration (`id_reference: none`), dadapy's raw estimates: d = 5 comes back, d = 20 comes
    back ~15 (TwoNN) and ~12.5 (GRIDE) from 128 points, the finite-sample bias the calibration removes."""
    assert intrinsic_dimension(subspace_points(128, 5, seed=0), reference="none") == pytest.approx((5, 5), rel=0.2)
    twonn, gride = intrinsic_dimension(subspace_points(128, 20, seed=1), reference="none")
    assert 11 < twonn < 18 and 10 < gride < 15


def test_single_scale_gride_is_dadapys_largest_scale_and_neighbours_are_the_nearest():
    from dadapy.id_estimation import IdEstimation

    x = subspace_points(200, 7, seed=4)
    dist, index = nearest_neighbours(x, 8)
    full = np.linalg.norm(x[:, None] - x[None], axis=-1)  # [n, n] float64
    np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :9], rtol=1e-9, atol=1e-9)
    assert (index[:, 0] == np.arange(200)).all()
    multiscale = IdEstimation(distances=(dist, index), maxk=8, verbose=False).return_id_scaling_gride(8)[0][-1]
    assert raw_estimates(x, 8)[1] == pytest.approx(multiscale, rel=1e-9)


def test_calibration_is_the_identity_on_the_reference_and_increasing():
    table = reference_table(8)
    n_at = REFERENCE_N.index(128)
    for j in (4, REFERENCE_DIMS.index(20), REFERENCE_DIMS.index(64)):
        assert calibrate(table[n_at, :, j], 128) == pytest.approx([REFERENCE_DIMS[j]] * 2, rel=1e-6)
    values = [calibrate(np.array([r, r]), 100)[1] for r in np.linspace(2, 30, 15)]
    assert np.all(np.diff(values) > 0)
    fresh = reference_row(128, 8, dims=(20,), seeds=REFERENCE_SEEDS)  # the shipped table is what the code makes
    np.testing.assert_allclose(fresh[:, 0], table[n_at, :, REFERENCE_DIMS.index(20)], atol=1e-4)


def test_identical_points_are_counted_once_and_rotations_change_nothing():
    x = subspace_points(200, 5, seed=2)
    doubled = np.concatenate([x, x[:50]])  # 50 repeated states (the same word at h_0)
    assert intrinsic_dimension(doubled) == pytest.approx(intrinsic_dimension(x), abs=1e-9)
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(576, 576)))
    assert intrinsic_dimension(x @ q) == pytest.approx(intrinsic_dimension(x), rel=1e-6)
    assert np.isnan(states_intrinsic_dimension(x[:20][None], 8, 32)).all()  # too few points
    repeated_first = np.concatenate([x[:10], x])  # the per-state path (duplicates) equals the batched one
    both = states_intrinsic_dimension(np.stack([x[:138], repeated_first[:138]]))
    np.testing.assert_allclose(both[:, 0], both[:, 1], rtol=1e-9)


def test_per_group_id_interval_covers_its_estimand():
    """The bootstrap resamples groups, so an interval is for the mean per-group ID (never a duplicated point
    inside an estimate). Over 40 planted experiments of 30 groups of 128 points, the 95% interval covers the estimand (the
    mean of the per-group estimator over 300 independent groups) at least 85% of the time."""
    per_group = np.array([intrinsic_dimension(subspace_points(128, 8, seed=1000 + g))[1] for g in range(300)])
    estimand = per_group.mean()
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(40):
        groups = rng.choice(per_group, size=30, replace=False)[:, None]  # [G, 1]
        counts = resample_counts(30, 400, rng)
        lo, hi = percentile_interval(mean_over_groups(groups, counts)[:, 0])
        covered += lo <= estimand <= hi
    assert covered >= 34, covered


def test_group_intrinsic_dimension_leaves_small_groups_out():
    feats = np.stack([subspace_points(100, 4, seed=5), subspace_points(100, 4, seed=6)], 1)  # [N, 2 states, d]
    group = np.array([0] * 60 + [1] * 30 + [2] * 10)
    ids = group_intrinsic_dimension(feats.astype(np.float16), group, 3, gride_range_max=8, min_points=32)
    assert ids.shape == (2, 3, 2)
    assert np.isfinite(ids[:, 0]).all() and np.isnan(ids[:, 1:]).all()
    assert mean_over_groups(ids[1]) == pytest.approx(ids[1, 0])


def test_block_influence_planted():
    x = torch.randn(1, 10, 8, dtype=torch.float64)
    same = torch.cat([x, x * 3.0])  # h_1 = 3 h_0: the same directions
    assert group_block_influence(same).item() == pytest.approx(0.0, abs=1e-12)
    e = torch.eye(8, dtype=torch.float64)
    orthogonal = torch.stack([e[:4], e[4:]])  # [2 states, 4 tokens, 8]: every token turned by 90 degrees
    assert group_block_influence(orthogonal).item() == pytest.approx(4.0)
    sums, counts = np.array([[1.0, 2.0], [3.0, 0.0]]), np.array([2, 4])
    assert block_influence(sums, counts) == pytest.approx([4 / 6, 2 / 6])
    np.testing.assert_allclose(block_influence(sums, counts, np.array([[2, 0]])), [[0.5, 1.0]])


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM  # a random-weight model of a real architecture

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def test_logit_lens_reads_through_the_models_own_modules_and_is_zero_at_the_last_state(tiny_model):
    model = tiny_model
    ids = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    from mspgt.extraction.hooks import residual_stream
    from mspgt.model.loading import decoder_blocks

    with torch.no_grad(), residual_stream(decoder_blocks(model)) as states:
        logits = model(input_ids=ids).logits  # [1, T, V]
    stacked = torch.stack([s[0] for s in states])  # [m, T, d]
    read = lens_reader(model)
    torch.testing.assert_close(read(stacked[-1]), logits[0].float(), rtol=1e-5, atol=1e-5)  # the model's own
    sums = logit_lens_sums(stacked[None], read)[0]  # [2, m]
    assert sums[0, -1].item() == 0.0  # KL(p_L || p_L), exactly
    assert (sums[0, :-1] > 0).all() and (sums[1] > 0).all()
    assert sums[1].max().item() <= 12 * np.log2(model.config.vocab_size) + 1e-6  # entropy <= log2 V per token
    logp = torch.log_softmax(read(stacked), -1)  # [m, T, V]: KL and entropy by their definitions
    kl = (logp[-1].exp() * (logp[-1] - logp)).sum(-1).sum(-1) / np.log(2)  # [m]
    entropy = -(logp.exp() * logp).sum(-1).sum(-1) / np.log(2)
    torch.testing.assert_close(sums.float(), torch.stack([kl, entropy]), rtol=1e-4, atol=1e-4)


def test_transition_rules_on_planted_curves():
    ids = np.array([[5, 6, 12, 20, 25, 22, 18, 15.0], [5, 5, 5, 5, 5, 5, 30, 5]])
    assert id_peak(ids).tolist() == [4, 6] and id_onset(ids).tolist() == [3, 6]
    assert lens_kl_fall(np.array([10, 9.5, 9, 3, 2, 1, 0.5, 0.0])) == 3
    assert block_influence_peak(np.array([0.9, 0.1, 0.3, 0.2, 0.8])) == 3  # blocks 1 and L left out
    assert id_peak(np.array([1.0, np.nan, 2.0])) == -1  # undefined, not a transition


def test_agreement_with_the_boundaries_over_shared_resamples():
    """A block-influence peak planted at block 6 in every group: it coincides with a boundary found at 6 in
    every resample, not with one at 2; a boundary missing in the point estimate is untestable."""
    G, L = 40, 10
    rng = np.random.default_rng(0)
    bi = np.full((G, L), 0.2) + rng.normal(0, 0.01, (G, L))
    bi[:, 5] += 0.5  # block 6
    rivals = {"bi_sum": bi * 100, "bi_count": np.full(G, 100)}
    counts = resample_counts(G, 200, rng)
    bounds = {"L-I": (2, np.full(200, 2)), "I-G": (6, np.full(200, 6)), "X": (None, None)}
    result = rival_result(rivals, None, counts, bounds, RivalSettings(intrinsic_dimension=False))
    (t,) = result.transitions
    assert t.name == "block_influence_peak" and t.block == 6 and t.selection_frequency == {6: 200}
    agree = {a.boundary: a for a in result.agreement}
    assert agree["I-G"].coincides is True and agree["I-G"].distance == 0
    assert agree["L-I"].coincides is False and agree["L-I"].distance == 4
    assert agree["X"].coincides is None
    assert len(result.curves["block_influence"]["value"]) == L


def test_settings_are_checked_with_the_fix():
    with pytest.raises(MspgtError, match="power of two"):
        RivalSettings(gride_range_max=6)
    with pytest.raises(MspgtError, match="gride_range_max"):
        RivalSettings(id_min_points=4)
    with pytest.raises(MspgtError, match="reference's smallest"):
        RivalSettings(id_min_points=16)
    assert RivalSettings(id_min_points=16, id_reference="none").id_min_points == 16
    with pytest.raises(MspgtError, match="512"):
        RivalSettings(id_points=1024)
    assert RivalSettings.from_config({"block_influence": False, "logit_lens": False,
                                      "intrinsic_dimension": False}) is None


def test_logit_lens_read_in_blocks_across_groups_equals_each_group_alone(tiny_model):
    read = lens_reader(tiny_model)
    states = torch.randn(3, 5, 2, tiny_model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    together = logit_lens_sums(states, read, rows_per_read=7)  # blocks that cut across states and groups
    alone = torch.stack([logit_lens_sums(s[None], read)[0] for s in states])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)  # float32 logits, blocked differently
    assert (together[:, 0, -1] == 0).all()


def test_the_per_group_id_is_stored_beside_the_statistics_and_read_back(tmp_path):
    """A rerun on a cached pass reads the per-group ID (an artifact keyed by its settings) instead of
    recomputing it; other ID settings are another artifact."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from mspgt.experiments.boundary import obtain_intrinsic_dimension
    from mspgt.extraction.cache import StatisticsCache

    feats = np.stack([subspace_points(96, 4, seed=7), subspace_points(96, 4, seed=8)], 1).astype(np.float16)
    sample = SimpleNamespace(features=feats, group=np.repeat([0, 1], 48))
    stats = SimpleNamespace(probe_train=sample, probe_eval=SimpleNamespace(features=feats[:0], group=np.zeros(0)),
                            n_groups=2)
    cache = StatisticsCache(tmp_path, {"planted": 1})
    cfg = OmegaConf.create({"extraction": {"cache": True}})
    first, cached = obtain_intrinsic_dimension(cfg, stats, RivalSettings(), cache)
    assert not cached and np.isfinite(first).all() and first.shape == (2, 2, 2)
    again, cached = obtain_intrinsic_dimension(cfg, stats, RivalSettings(), cache)
    assert cached and np.array_equal(again, first)
    other, cached = obtain_intrinsic_dimension(cfg, stats, RivalSettings(id_points=40), cache)
    assert not cached and not np.array_equal(other, first)


def test_the_reports_say_whether_the_id_curves_are_calibrated():
    from mspgt.reports.rivals_report import curve_label, rivals_markdown

    settings = {"intrinsic_dimension": True, "id_reference": "gaussian", "gride_range_max": 8, "id_points": 128,
                "logit_lens_tokens": 2}
    assert curve_label("id_gride", settings) == "intrinsic dimension, GRIDE (calibrated: gaussian reference)"
    assert curve_label("id_twonn", {**settings, "id_reference": "none"}).endswith("(dadapy raw)")
    assert curve_label("block_influence", settings) == "block influence 1 - cos(h_{l-1}, h_l)"
    result = {"rivals": {"transitions": [], "agreement": [], "rule": "r"}, "config": {"rivals": settings}}
    text = rivals_markdown(result)
    assert "GRIDE (ranks 4, 8) on up to 128 distinct words per group, calibrated against Gaussians" in text
    assert "logit lens on 2 tokens per group" in text
