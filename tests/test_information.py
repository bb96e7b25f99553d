"""Information curves (matrix-based Renyi entropy and MI, V-information) and the eq. 28 kink test: closed-form
answers on planted Gram matrices, invariances, and a planted kink that must be recovered (a straight line not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mspgt.fusion.bootstrap import resample_counts
from mspgt.fusion.phase_transition import eq28_test, kink, null_points
from mspgt.signals.information import (
    group_information,
    label_marginal_ce,
    normalised_grams,
    renyi_entropy,
    v_information,
    weighted_curves,
)


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
    info = group_information(torch.stack([h0, h0 * 5, same]), alpha=1.0)
    assert info["entropy"] == pytest.approx([np.log2(n), np.log2(n), 0.0], abs=1e-6)
    assert info["mi_input"][1] == pytest.approx(np.log2(n), abs=1e-6)  # I(X; X) = S(X) for orthogonal tokens
    assert info["mi_input"][2] == pytest.approx(0.0, abs=1e-6)  # a constant carries nothing about h_0
    assert np.isnan(info["mi_adjacent"][0]) and info["mi_adjacent"][2] == pytest.approx(0.0, abs=1e-6)


def test_information_is_invariant_to_rotations_and_token_scales():
    gen = torch.Generator().manual_seed(1)
    states = torch.randn(4, 30, 16, generator=gen, dtype=torch.float64)  # [m, n, d]
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen, dtype=torch.float64))
    scales = torch.rand(4, 30, 1, generator=gen, dtype=torch.float64) * 10 + 0.1
    a, b = group_information(states, 1.0), group_information(states @ q * scales, 1.0)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-8, atol=1e-8)
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


def test_boundary_run_stores_information_per_group_and_tests_eq28(tmp_path, shared_cache):
    import json

    from tests.conftest import TINY, run_mspgt

    args = ["model=tiny_llama", *TINY, "fusion.prominence=0.05", "hydra.run.dir=run"]
    run_mspgt(args, tmp_path, cache=shared_cache)
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    info = result["information"]
    L = result["model"]["n_blocks"]
    assert {"entropy", "mi_input", "mi_adjacent"} <= set(info["curves"])
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
