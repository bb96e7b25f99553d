"""Information curves (matrix-based Renyi entropy and MI, V-information) and the eq. 28 kink test: closed-form
answers on planted Gram matrices, invariances, and a planted kink that must be recovered (a straight line not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mspgt.errors import MspgtError
from mspgt.fusion.bootstrap import resample_counts
from mspgt.fusion.phase_transition import combine_verdicts, eq28_test, kink, null_points
from mspgt.signals.information import (
    InformationSettings,
    group_information,
    label_marginal_ce,
    normalised_grams,
    null_permutation,
    renyi_entropy,
    v_information,
    weighted_curves,
)

PLUGIN_VN = InformationSettings(kernel="cosine", estimator="plugin", alpha=1.0)  # Giraldo et al., von Neumann


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 3.0])
def test_entropy_of_orthogonal_and_of_identical_tokens(alpha):
    n = 8
    # float64 states keep the Gram product in float64 (float32 states give rank-one entropies of ~1e-6 bits)
    orthogonal = torch.eye(n, dtype=torch.float64)[None] * 3.0  # [1, n, d=n]: n orthogonal tokens
    identical = torch.ones(1, n, 5, dtype=torch.float64)  # every token the same
    grams = normalised_grams(torch.cat([orthogonal, identical[:, :, :1].expand(1, n, n)]))
    h = renyi_entropy(grams, alpha)
    assert h[0].item() == pytest.approx(np.log2(n), abs=1e-9)
    assert h[1].item() == pytest.approx(0.0, abs=1e-6)


def test_alpha_two_shortcut_equals_the_eigenvalue_formula():
    g = normalised_grams(torch.randn(3, 20, 7, generator=torch.Generator().manual_seed(0)))
    lam = torch.linalg.eigvalsh(g).clamp_min(0)
    torch.testing.assert_close(renyi_entropy(g, 2.0), -torch.log2(lam.square().sum(-1)), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(renyi_entropy(g, 2.0), renyi_entropy(g, 2.0 + 1e-9), rtol=1e-6, atol=1e-6)


def test_mutual_information_planted_answers():
    n = 8
    h0 = torch.eye(n, dtype=torch.float64) * 2.0  # orthogonal tokens: S = log2 n
    same = torch.ones(n, n, dtype=torch.float64)  # one repeated token: S = 0
    info = group_information(torch.stack([h0, h0 * 5, same]), PLUGIN_VN)
    assert info["entropy"] == pytest.approx([np.log2(n), np.log2(n), 0.0], abs=1e-6)
    assert info["mi_input"][1] == pytest.approx(np.log2(n), abs=1e-6)  # I(X; X) = S(X) for orthogonal tokens
    assert info["mi_input"][2] == pytest.approx(0.0, abs=1e-6)  # a constant carries nothing about h_0
    assert np.isnan(info["mi_adjacent"][0]) and info["mi_adjacent"][2] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("settings", [PLUGIN_VN, InformationSettings()], ids=["plugin-cosine", "default"])
def test_information_is_invariant_to_rotations_and_token_scales(settings):
    gen = torch.Generator().manual_seed(1)
    states = torch.randn(4, 30, 16, generator=gen, dtype=torch.float64)  # [m, n, d]
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen, dtype=torch.float64))
    scales = torch.rand(4, 30, 1, generator=gen, dtype=torch.float64) * 10 + 0.1
    a, b = group_information(states, settings), group_information(states @ q * scales, settings)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-8, atol=1e-8)
    if settings.estimator == "plugin":  # Giraldo et al.'s MI is never negative; the U-statistic may dip below 0
        assert np.all(a["mi_input"][1:] >= -1e-9)


def test_weighted_curves_are_weighted_means():
    per_group = np.arange(12.0).reshape(4, 3)
    assert weighted_curves(per_group) == pytest.approx(per_group.mean(0))
    w = np.array([[1, 0, 0, 1], [0, 2, 0, 0]])
    assert weighted_curves(per_group, w) == pytest.approx(np.stack([(per_group[0] + per_group[3]) / 2, per_group[1]]))


def test_v_information_planted():
    labels = np.array([0, 1, 1, -1, 0, 1])
    prior = label_marginal_ce(np.array([0, 1, 1, 1]), labels, 2)  # q = (2/6, 4/6) with add-one
    assert prior[0] == pytest.approx(-np.log(2 / 6)) and np.isnan(prior[3])
    group = np.array([0, 0, 1, 1, 2, 2])
    perfect = np.where(labels[:, None] >= 0, 0.0, np.nan) * np.ones((1, 2))  # CE 0: I_V = H_V(Y)
    as_prior = np.stack([prior, prior], 1)  # the input-free predictor itself: I_V = 0
    probe = np.concatenate([perfect[:, :1], as_prior[:, 1:]], 1)
    v = v_information(prior, probe, group, 3)
    ok = np.isfinite(prior)
    assert v[0] == pytest.approx(prior[ok].mean() / np.log(2)) and v[1] == pytest.approx(0.0)
    # resampling weights: group 2 twice, group 0 once
    w = np.array([[1, 0, 2]])
    expected = (prior[0] + prior[1] + 2 * (prior[4] + prior[5])) / 6 / np.log(2)
    assert v_information(prior, probe, group, 3, w)[0, 0] == pytest.approx(expected)


def test_kink_statistic_and_null_points():
    x = np.arange(11.0)
    curve = np.where(x <= 5, x, 5 + 3 * (x - 5))  # slope 1 then 3: kink +2 at x = 5
    assert kink(curve, 5, 3) == pytest.approx(2.0)
    assert kink(curve, 2, 2) == pytest.approx(0.0)
    assert kink(curve, 1, 3) == pytest.approx(0.0)  # left window cut at the start (one step)
    assert np.isnan(kink(curve, 0, 3))
    assert null_points(11, [5], 2) == [1, 2, 8, 9]


def planted(kinked: bool, n_groups: int = 120, seed: int = 0):
    """Per-group curves over 25 states: a line (slope 0.5) that turns to slope 1.5 at x = 9 if kinked, noise."""
    rng = np.random.default_rng(seed)
    x = np.arange(25.0)
    base = 0.5 * x + (np.maximum(x - 9, 0) if kinked else 0.0)
    per_group = base + rng.normal(0, 1.0, size=(n_groups, len(x)))
    counts = resample_counts(n_groups, 400, np.random.default_rng(1))
    return weighted_curves(per_group), weighted_curves(per_group, counts)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_planted_kink_is_recovered_and_a_straight_line_is_not(seed):
    curve, boot = planted(True, seed=seed)
    found = eq28_test(curve, boot, {"L-I": 9}, k=3)
    assert found["boundaries"]["L-I"]["verdict"] == "supported" and found["verdict"] == "supported"
    assert found["boundaries"]["L-I"]["ci_low"] > 0
    curve, boot = planted(False, seed=seed)
    line = eq28_test(curve, boot, {"L-I": 9}, k=3)
    assert line["verdict"] == "refuted"


def test_too_few_null_points_is_untestable():
    curve, boot = planted(True)
    result = eq28_test(curve[:9], boot[:, :9], {"L-I": 3, "I-G": 5}, k=3)
    assert result["verdict"] == "untestable here"


# --- the default estimator's properties on planted cases (docs/method.md, "Information curves and the eq. 28
# test"; benchmarks/information_estimators.py prints the same table for every kernel and estimator) ---

def low_rank_states(n: int, d: int, gen: torch.Generator, rank: int = 8) -> torch.Tensor:
    """[n, d] token states with a few strong directions (as residual streams have) and noise."""
    z = torch.randn(n, rank, generator=gen, dtype=torch.float64)
    return z @ torch.randn(rank, d, generator=gen, dtype=torch.float64) + 0.3 * torch.randn(
        n, d, generator=gen, dtype=torch.float64)


def mi(x: torch.Tensor, y: torch.Tensor, settings: InformationSettings | None = None) -> float:
    return float(group_information(torch.stack([x, y]), settings)["mi_input"][1])


def entropy(x: torch.Tensor, settings: InformationSettings | None = None) -> float:
    return float(group_information(torch.stack([x, x]), settings)["entropy"][0])


@pytest.mark.parametrize("n,d", [(32, 8), (128, 64), (128, 576), (256, 64)])
def test_independent_states_share_about_nothing_at_any_size(n, d):
    """The plug-in estimator gave 0.4 bits (low rank) to 6.4 bits (isotropic, d = 576) here: its 1/n self-pair
    term. The U-statistic has no such floor: the mean over 24 draws is within 0.05 bits of 0."""
    gen = torch.Generator().manual_seed(n + d)
    for make in (lambda: low_rank_states(n, d, gen), lambda: torch.randn(n, d, generator=gen, dtype=torch.float64)):
        values = [mi(make(), make()) for _ in range(24)]
        assert abs(np.mean(values)) < 0.05, values


def test_independence_estimate_does_not_depend_on_tokens_per_group():
    """From 32 to 256 tokens per group the mean stays within 0.05 bits (the plug-in's moved by 0.7 bits; a
    ratio of U-statistics keeps an O(1/n) bias: -0.08 bits at 16 tokens, docs/method.md)."""
    gen = torch.Generator().manual_seed(5)
    means = [np.mean([mi(low_rank_states(n, 64, gen), low_rank_states(n, 64, gen)) for _ in range(16)])
             for n in (32, 64, 128, 256)]
    assert np.ptp(means) < 0.05, means


@pytest.mark.parametrize("seed", range(5))
def test_data_processing_inequality_on_a_planted_markov_chain(seed):
    """X -> Y -> Z, each a noisy linear map of the last: I(X; X) >= I(X; Y) >= I(X; Z); and an invertible
    function of X (its centred copy) carries no more about X than X itself (the cosine kernel gave
    I(h_0; h_0 - mean) = 0.106 > I(h_0; h_0) = 0.003)."""
    gen = torch.Generator().manual_seed(seed)
    x = low_rank_states(128, 64, gen)
    y = x @ torch.randn(64, 64, generator=gen, dtype=torch.float64) / 8 + 0.5 * x.std() * torch.randn(
        128, 64, generator=gen, dtype=torch.float64)
    z = y @ torch.randn(64, 64, generator=gen, dtype=torch.float64) / 8 + 1.0 * y.std() * torch.randn(
        128, 64, generator=gen, dtype=torch.float64)
    assert mi(x, x) >= mi(x, y) >= mi(x, z)
    assert mi(x, x - x.mean(0)) <= mi(x, x) + 1e-9


@pytest.mark.parametrize("times", [1.0, 3.0])
def test_a_common_offset_barely_moves_the_entropy(times):
    """An offset of 1x / 3x the typical token norm cut the cosine kernel's S_2 by 1.2 / 2.6 bits here."""
    gen = torch.Generator().manual_seed(7)
    x = low_rank_states(128, 64, gen)
    b = torch.randn(64, generator=gen, dtype=torch.float64)
    b = b / b.norm() * x.norm(dim=-1).mean() * times
    assert abs(entropy(x + b) - entropy(x)) < 0.1
    cosine = InformationSettings(kernel="cosine")
    assert entropy(x + b, cosine) - entropy(x, cosine) < -1.0  # the uncentred kernel follows the offset


def test_mi_with_itself_equals_entropy_exactly_for_a_zero_one_kernel_and_is_below_it_otherwise():
    """I(X; X) = log2(E k^4 / (E k^2)^2) <= -log2 E k^2 = S(X), equal iff k^2 is 0 or 1: tokens in orthogonal
    clusters (cosine 1 within, 0 across) reach it; smooth data stays below (why the eq. 28 test does not rest
    on I(X; X) = S(X))."""
    clusters = torch.eye(4, dtype=torch.float64)[torch.arange(40) % 4] * torch.linspace(1, 3, 40)[:, None]
    zero_one = InformationSettings(kernel="cosine")
    assert mi(clusters, clusters, zero_one) == pytest.approx(entropy(clusters, zero_one), abs=1e-12)
    x = low_rank_states(128, 64, torch.Generator().manual_seed(3))
    assert 0 < mi(x, x) < entropy(x)


def test_shuffle_null_pairs_every_token_with_another_and_is_reproducible():
    for n in (2, 3, 17, 128):
        perm = null_permutation(n, group=5, seed=0)
        assert sorted(perm) == list(range(n)) and not np.any(perm == np.arange(n))
        assert np.array_equal(perm, null_permutation(n, group=5, seed=0))
    assert not np.array_equal(null_permutation(64, 1), null_permutation(64, 2))


def test_shuffle_null_is_near_zero_where_the_states_are_shared():
    gen = torch.Generator().manual_seed(11)
    x = low_rank_states(128, 64, gen)
    info = group_information(torch.stack([x, x * 2 + 0.01 * torch.randn(128, 64, generator=gen)]))
    assert info["mi_input"][1] > 1.0
    assert abs(info["mi_input_null"][1]) < 0.1 and abs(info["mi_adjacent_null"][1]) < 0.1


def test_settings_are_checked_with_the_fix():
    with pytest.raises(MspgtError, match="estimator=plugin"):
        InformationSettings(alpha=1.0)
    with pytest.raises(MspgtError, match="recentred_cosine"):
        InformationSettings(kernel="rbf")
    assert InformationSettings(estimator="plugin", alpha=1.0).alpha == 1.0


# --- the eq. 28 test ---

def test_kink_windows_stop_at_the_undefined_first_value():
    """I(h_{l-1}; h_l) has no value at l = 0: the left window is cut there, not the whole kink (it was nan)."""
    assert kink(np.array([np.nan, 1, 2, 5, 8, 11, 14.0]), 2, 3) == pytest.approx(2.0)
    assert np.isnan(kink(np.array([np.nan, 1, 2, 5.0]), 1, 3))  # nothing defined on the left
    x = np.arange(25.0)
    curve = np.where(x <= 3, x, 3 + 3 * (x - 3))
    curve[0] = np.nan
    boot = curve + np.random.default_rng(0).normal(0, 0.01, size=(200, 25))
    boot[:, 0] = np.nan
    found = eq28_test(curve, boot, {"L-I": 3}, k=3)
    assert found["boundaries"]["L-I"]["kink"] == pytest.approx(2.0)
    assert found["verdict"] == "supported"
    assert found["n_null_points"] == len(null_points(25, [3], 3))  # x = 7..23, none dropped for the nan


def test_a_kink_of_the_estimators_own_floor_is_not_a_phase_transition():
    """The shuffle null carries the same kink as the curve: the excess is a line, so the test refutes; a kink
    in the excess over the same null is supported."""
    rng = np.random.default_rng(0)
    x = np.arange(25.0)
    floor = 0.2 * x + 2.0 * np.maximum(x - 9, 0)  # the estimator's floor kinks at x = 9
    per_group_null = floor + rng.normal(0, 0.5, size=(120, 25))
    counts = resample_counts(120, 400, np.random.default_rng(1))
    for extra, expected in ((0.5 * x, "refuted"), (0.5 * x + 1.0 * np.maximum(x - 9, 0), "supported")):
        per_group = per_group_null + extra + rng.normal(0, 0.3, size=(120, 25))
        found = eq28_test(weighted_curves(per_group), weighted_curves(per_group, counts), {"L-I": 9}, 3,
                          shuffle_null=weighted_curves(per_group_null),
                          shuffle_null_resampled=weighted_curves(per_group_null, counts))
        assert found["verdict"] == expected
        assert found["boundaries"]["L-I"]["kink_shuffle_null"] == pytest.approx(2.0, abs=0.3)


def test_one_rule_combines_verdicts():
    assert combine_verdicts([]) == "untestable here"
    assert combine_verdicts(["untestable here", "supported"]) == "supported"
    assert combine_verdicts(["refuted", "refuted"]) == "refuted"
    assert combine_verdicts(["refuted", "supported"]) == "mixed"
    assert combine_verdicts(["mixed"]) == "mixed"


def test_boundary_run_stores_information_per_group_and_tests_eq28(tmp_path, shared_cache):
    import json

    from tests.conftest import TINY, run_mspgt

    args = ["model=tiny_llama", *TINY, "fusion.prominence=0.05", "hydra.run.dir=run"]
    run_mspgt(args, tmp_path, cache=shared_cache)
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    info = result["information"]
    L = result["model"]["n_blocks"]
    assert {"entropy", "mi_input", "mi_adjacent", "mi_input_null", "mi_adjacent_null"} <= set(info["curves"])
    assert "mi_input_null" not in info["eq28"]["tests"]  # a null is reported, not tested
    assert info["eq28"]["tests"]["mi_input"]["null"].startswith("shuffle")
    assert info["settings"]["estimator"] == "u_statistic" and "shuffle null" in info["estimator"]
    assert any(c.startswith("v_info_") for c in info["curves"])
    for c in info["curves"].values():
        assert len(c["value"]) == L + 1
        finite = [(v, lo, hi) for v, lo, hi in zip(c["value"], c["ci_low"], c["ci_high"], strict=True)
                  if v is not None]
        assert all(lo - 1e-9 <= hi for _, lo, hi in finite)
    assert info["eq28"]["verdict"] in ("supported", "refuted", "mixed", "untestable here")
    assert (tmp_path / "run" / "information.png").stat().st_size > 0
    assert "Information phase transition" in (tmp_path / "run" / "summary.md").read_text()
    # the per-group curves come back from the cache: a second run (fusion change only) gives the same curves
    run_mspgt([*args[:-1], "fusion.prominence=0.06", "hydra.run.dir=run2"], tmp_path, cache=shared_cache)
    again = json.loads((tmp_path / "run2" / "results.json").read_text())["information"]
    assert again["curves"]["mi_input"]["value"] == info["curves"]["mi_input"]["value"]


def test_v_information_of_trained_probes_jumps_where_the_labels_become_decodable():
    from mspgt.signals.probes import train_probes
    from tests.test_probes import DECODABLE_FROM, N_CLASSES, N_GROUPS, planted_sample

    torch.set_num_threads(1)
    train = planted_sample(1200, np.arange(28), seed=1)
    held_out = planted_sample(600, np.arange(28, N_GROUPS), seed=2, unlabeled=0.1)
    result = train_probes(train, held_out, N_CLASSES, epochs=30, seed=0, control_task=False)
    ce = result.heldout_ce["pos"]  # [N, L+1] nats
    assert np.array_equal(np.isnan(ce[:, 0]), held_out.labels["pos"] < 0)
    prior = label_marginal_ce(train.labels["pos"], held_out.labels["pos"], N_CLASSES["pos"])
    index = np.unique(held_out.group, return_inverse=True)[1]
    v = v_information(prior, ce.astype(float), index, int(index.max()) + 1)  # [L+1] bits
    assert np.all(v[:DECODABLE_FROM] < 0.2)  # noise: no usable information (held-out, so ~0 or below)
    assert np.all(v[DECODABLE_FROM:] > 1.5)  # 4 balanced classes: at most 2 bits
    assert np.all(v <= np.log2(4) + 0.05)


def test_v_information_over_probe_seeds_follows_each_resamples_seed_draw():
    """With several probe training seeds the point V-information is the seeds' mean, and a resample that drew
    only seed k gives seed k's curve (the boundary bootstrap's seed draws, fusion/bootstrap.py)."""
    from types import SimpleNamespace

    from mspgt.reports.information_report import information_curves

    labels = np.array([0, 1, 1, 0, 1, 0])
    sample = SimpleNamespace(labels={"pos": labels}, group=np.array([0, 0, 1, 1, 2, 2]))
    stats = SimpleNamespace(information={}, group_is_eval=np.ones(3, bool), probe_eval=sample, probe_train=sample,
                            label_names={"pos": ["A", "B"]})
    rng = np.random.default_rng(0)
    runs = [SimpleNamespace(heldout_ce={"pos": rng.uniform(0.1, 1.0, size=(6, 4)).astype(np.float32)})
            for _ in range(2)]
    single = [information_curves(stats, r, None)["v_info_pos"] for r in runs]
    both = information_curves(stats, SimpleNamespace(runs=runs), None)["v_info_pos"]
    np.testing.assert_allclose(both, (single[0] + single[1]) / 2)
    counts = np.ones((2, 3))
    boot = information_curves(stats, SimpleNamespace(runs=runs), counts, np.array([[2, 0], [0, 2]]))["v_info_pos"]
    np.testing.assert_allclose(boot, np.stack(single))
