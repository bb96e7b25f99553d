"""Signal 1: linear CKA, unbiased HSIC and the minibatch estimator (identities, invariances, planted data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mspgt.errors import MspgtError
from mspgt.signals.cka import (
    _check_min_tokens,
    gram_linear,
    hsic_unbiased_matrix,
    linear_cka,
    minibatch_cka,
    representation_change,
    standardise_dimensions,
)


def hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> float:  # noqa: E741 (the kernels are K and L in the paper)
    """Unbiased HSIC of two n x n Gram matrices, n >= 4 (Song et al. 2012; Nguyen et al. 2021, eq. 3).

    HSIC_1 = [tr(K~ L~) + (1'K~1)(1'L~1) / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)), K~ = K with zero
    diagonal. The direct formula, in float64: the test oracle for `hsic_unbiased_matrix`.
    """
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape != l.shape:
        raise MspgtError(
            f"hsic_unbiased needs two square Gram matrices of one shape, got {tuple(k.shape)} and {tuple(l.shape)}",
            "pass gram_linear(x) and gram_linear(y) of the same n tokens",
        )
    n = k.shape[0]
    _check_min_tokens(n)
    k_t = k.to(torch.float64).clone()  # [n, n]
    l_t = l.to(torch.float64).clone()  # [n, n]
    k_t.fill_diagonal_(0.0)
    l_t.fill_diagonal_(0.0)
    ones = torch.ones(n, 1, dtype=torch.float64, device=k.device)  # [n, 1]
    trace_kl = torch.trace(k_t @ l_t)
    sums = (ones.T @ k_t @ ones) * (ones.T @ l_t @ ones) / ((n - 1) * (n - 2))
    cross = (ones.T @ k_t @ l_t @ ones) * 2.0 / (n - 2)
    return float((trace_kl + sums - cross).squeeze() / (n * (n - 3)))


def group_hsic(states: torch.Tensor, standardise: bool = False) -> torch.Tensor:
    """(The per-group step, written out for the tests.) Unbiased HSIC of linear kernels between every pair of states of one group: [m, n, d] -> [m, m] float64.

    states holds h_0..h_L of the group's n real tokens (padding already removed). Features are centred over
    the group's tokens first: the unbiased HSIC does not change under feature shifts (it U-centres the
    kernel), and centring in float64 avoids cancellation. standardise=True z-scores each dimension within
    the group (`standardise_dimensions`). Computed on the device of `states`.
    """
    if states.ndim != 3:
        raise MspgtError(
            f"group_hsic needs states [m, n, d] (h_0..h_L of one group's tokens), got {tuple(states.shape)}",
            "stack the states of one group along a new first axis, with padding removed",
        )
    _check_min_tokens(states.shape[1])
    if standardise:
        x = standardise_dimensions(states)  # [m, n, d]
    else:
        x = states.to(torch.float64)  # [m, n, d]
        x = x - x.mean(dim=1, keepdim=True)  # [m, n, d]
    return hsic_unbiased_matrix(gram_linear(x))  # [m, m]

torch.set_num_threads(1)


def _random_orthogonal(d: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q  # [d, d]


def _correlated(n: int, d: int, noise: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Planted pair: Y = X A + noise (so CKA(X, Y) is strictly between 0 and 1)."""
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)  # [n, d]
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)  # [d, d]
    y = x @ a + noise * torch.randn(n, d, generator=gen, dtype=torch.float64)  # [n, d]
    return x, y


def _groups_hsic(states: torch.Tensor, group_size: int, standardise: bool = False) -> np.ndarray:
    """Per-group HSIC terms of states [m, N, d] cut into consecutive groups of rows -> [G, m, m]."""
    chunks = states.split(group_size, dim=1)
    return np.stack([group_hsic(c, standardise=standardise).numpy() for c in chunks])


def _u_centred_hsic(k: torch.Tensor, l: torch.Tensor) -> float:  # noqa: E741
    """Independent reference: HSIC_1 = <K^U, L^U> / (n (n - 3)) with U-centred kernels (Szekely & Rizzo 2014)."""
    n = k.shape[0]

    def u_centre(a: torch.Tensor) -> torch.Tensor:
        a = a.clone()
        a.fill_diagonal_(0.0)
        u = (
            a
            - a.sum(1, keepdim=True) / (n - 2)
            - a.sum(0, keepdim=True) / (n - 2)
            + a.sum() / ((n - 1) * (n - 2))
        )
        u.fill_diagonal_(0.0)
        return u

    return float((u_centre(k) * u_centre(l)).sum() / (n * (n - 3)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_self_similarity_is_one(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(300, 12, generator=gen, dtype=torch.float64)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    hsic = _groups_hsic(torch.stack([x, x]), 50)  # [6, 2, 2]
    np.testing.assert_allclose(minibatch_cka(hsic), np.ones((2, 2)), atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_cka_invariant_to_rotation_scale_shift(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x, y = _correlated(400, 10, 2.0, gen)
    y_moved = 3.7 * y @ _random_orthogonal(10, gen) + 5.0
    reference = linear_cka(x, y)
    assert 0.05 < reference < 0.95
    assert linear_cka(x, y_moved) == pytest.approx(reference, abs=1e-10)
    assert linear_cka(y, x) == pytest.approx(reference, abs=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minibatch_cka_invariant_to_rotation_and_scale(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x, y = _correlated(600, 10, 2.0, gen)
    y_moved = 0.3 * y @ _random_orthogonal(10, gen) - 2.0
    cka = minibatch_cka(_groups_hsic(torch.stack([x, y, y_moved]), 60))  # [3, 3]
    assert 0.05 < cka[0, 1] < 0.95
    assert cka[0, 2] == pytest.approx(cka[0, 1], abs=1e-10)
    assert cka[1, 2] == pytest.approx(1.0, abs=1e-10)
    np.testing.assert_allclose(cka, cka.T, atol=1e-12)


@pytest.mark.parametrize("n", [4, 7, 30])
def test_hsic_unbiased_matches_u_centred_reference(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    x, y = _correlated(n, 5, 1.0, gen)
    k, l = gram_linear(x), gram_linear(y)  # noqa: E741
    assert hsic_unbiased(k, l) == pytest.approx(_u_centred_hsic(k, l), rel=1e-9, abs=1e-9)


def test_hsic_unbiased_is_invariant_to_feature_shifts() -> None:
    gen = torch.Generator().manual_seed(3)
    x, y = _correlated(40, 6, 1.0, gen)
    shifted = hsic_unbiased(gram_linear(x + 10.0), gram_linear(y - 4.0))
    assert shifted == pytest.approx(hsic_unbiased(gram_linear(x), gram_linear(y)), rel=1e-8)


@pytest.mark.parametrize("n", [4, 9, 64])
def test_hsic_matrix_equals_pairwise(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    states = torch.randn(5, n, 7, generator=gen, dtype=torch.float64).cumsum(0)  # [m, n, d], related states
    grams = gram_linear(states)  # [m, n, n]
    matrix = hsic_unbiased_matrix(grams)  # [m, m]
    pairwise = torch.tensor(
        [[hsic_unbiased(grams[i], grams[j]) for j in range(5)] for i in range(5)], dtype=torch.float64
    )
    torch.testing.assert_close(matrix, pairwise, rtol=1e-9, atol=1e-9)


def test_group_hsic_accepts_float32_and_matches_float64() -> None:
    gen = torch.Generator().manual_seed(5)
    states = torch.randn(4, 50, 16, generator=gen)  # [m, n, d] float32
    torch.testing.assert_close(group_hsic(states), group_hsic(states.double()), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_minibatch_agrees_with_full_data_cka(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x, y = _correlated(20_000, 16, 3.0, gen)
    z = torch.tanh(y) + 0.5 * torch.randn(
        20_000, 16, generator=gen, dtype=torch.float64
    )  # nonlinear relative
    full = np.array([[linear_cka(a, b) for b in (x, y, z)] for a in (x, y, z)])
    streamed = minibatch_cka(_groups_hsic(torch.stack([x, y, z]), 100))  # 200 groups of 100 rows
    assert 0.1 < full[0, 1] < 0.9
    np.testing.assert_allclose(streamed, full, atol=0.02)


def test_minibatch_is_unbiased_where_small_group_biased_cka_is_inflated() -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(4000, 32, generator=gen, dtype=torch.float64)
    y = torch.randn(4000, 32, generator=gen, dtype=torch.float64)  # independent of x: population CKA = 0
    groups = 400  # 10 rows each
    biased = np.mean([linear_cka(a, b) for a, b in zip(x.chunk(groups), y.chunk(groups), strict=True)])
    streamed = minibatch_cka(_groups_hsic(torch.stack([x, y]), 10))[0, 1]
    assert biased > 0.3
    assert abs(streamed) < 0.03


def test_weights_are_group_counts() -> None:
    gen = torch.Generator().manual_seed(11)
    x, y = _correlated(400, 8, 2.0, gen)
    hsic = _groups_hsic(torch.stack([x, y, x + y]), 40)  # [10, 3, 3]
    counts = np.array([[0, 2, 1, 0, 3, 1, 1, 0, 2, 0], [1] * 10])  # [B=2, G=10]
    weighted = minibatch_cka(hsic, counts)  # [2, 3, 3]
    duplicated = minibatch_cka(np.repeat(hsic, counts[0], axis=0))
    np.testing.assert_allclose(weighted[0], duplicated, atol=1e-12)
    np.testing.assert_allclose(weighted[1], minibatch_cka(hsic), atol=1e-12)
    np.testing.assert_allclose(minibatch_cka(hsic, 2 * np.ones(10)), minibatch_cka(hsic), atol=1e-12)
    with pytest.raises(MspgtError):
        minibatch_cka(hsic, np.ones(9))
    with pytest.raises(MspgtError):
        minibatch_cka(hsic, -np.ones(10))


def test_standardised_variant_is_invariant_to_per_dimension_scaling() -> None:
    gen = torch.Generator().manual_seed(13)
    x, y = _correlated(80, 6, 1.0, gen)
    scale_x = torch.logspace(-3, 3, 6, dtype=torch.float64)  # [d]
    scale_y = torch.rand(6, generator=gen, dtype=torch.float64) * 100 + 0.01  # [d]
    plain = torch.stack([x, y])
    scaled = torch.stack([x * scale_x + 7.0, y * scale_y])
    torch.testing.assert_close(group_hsic(scaled, standardise=True), group_hsic(plain, standardise=True))
    assert not torch.allclose(group_hsic(scaled), group_hsic(plain), rtol=1e-3)


def test_standardised_variant_handles_constant_dimensions() -> None:
    gen = torch.Generator().manual_seed(17)
    x, y = _correlated(30, 5, 1.0, gen)
    x_const = torch.cat([x, torch.full((30, 1), 3.3, dtype=torch.float64)], dim=1)  # one constant dimension
    y_const = torch.cat([y, torch.zeros(30, 1, dtype=torch.float64)], dim=1)
    with_const = group_hsic(torch.stack([x_const, y_const]), standardise=True)
    torch.testing.assert_close(with_const, group_hsic(torch.stack([x, y]), standardise=True))


def test_standardised_variant_removes_a_massive_shared_dimension() -> None:
    """Planted rogue dimension: two independent representations share one huge dimension."""
    gen = torch.Generator().manual_seed(19)
    n, d = 2000, 32
    rogue = 100.0 * torch.randn(n, 1, generator=gen, dtype=torch.float64)  # [n, 1]
    x = torch.cat([torch.randn(n, d, generator=gen, dtype=torch.float64), rogue], dim=1)
    y = torch.cat([torch.randn(n, d, generator=gen, dtype=torch.float64), rogue], dim=1)
    states = torch.stack([x, y])
    raw = minibatch_cka(_groups_hsic(states, 100))[0, 1]
    standardised = minibatch_cka(_groups_hsic(states, 100, standardise=True))[0, 1]
    assert raw > 0.95
    assert standardised < 0.2


def test_fewer_than_four_tokens_raises() -> None:
    with pytest.raises(MspgtError, match="at least 4 tokens"):
        group_hsic(torch.randn(3, 3, 8))
    with pytest.raises(MspgtError):
        hsic_unbiased(torch.eye(3), torch.eye(3))
    with pytest.raises(MspgtError):
        group_hsic(torch.randn(3, 8))


def test_representation_change_reads_adjacent_states() -> None:
    cka = np.array([[1.0, 0.9, 0.2], [0.9, 1.0, 0.6], [0.2, 0.6, 1.0]])  # h_0, h_1, h_2
    np.testing.assert_allclose(representation_change(cka), [0.1, 0.4])  # blocks 1, 2
    batch = np.stack([cka, np.eye(3)])  # [B, m, m]
    np.testing.assert_allclose(representation_change(batch), [[0.1, 0.4], [1.0, 1.0]])


def test_group_hsic_variants_match_the_reference_estimator():
    """The fast four-variant path used by extraction equals group_hsic (above, the float64 reference) on the same rows."""
    from mspgt.signals.cka import group_hsic_variants

    g = torch.Generator().manual_seed(3)
    states = torch.randn(5, 40, 24, generator=g) * torch.linspace(0.1, 30, 24)  # uneven dimension scales
    states[:, ::10] += 200.0  # a massive first position in each of 4 sentences of 10 tokens
    keep = torch.ones(40, dtype=torch.bool)
    keep[::10] = False
    terms = group_hsic_variants(states, keep, ["raw", "raw_nofirst", "std", "std_nofirst"])
    fast = terms.hsic
    ref = {
        "raw": group_hsic(states),
        "raw_nofirst": group_hsic(states[:, keep]),
        "std": group_hsic(states, standardise=True),
        "std_nofirst": group_hsic(states[:, keep], standardise=True),
    }
    for k, r in ref.items():
        torch.testing.assert_close(fast[k], r, rtol=1e-5, atol=1e-6 * float(r.abs().max()))
    assert not torch.allclose(fast["raw"], fast["raw_nofirst"])
    # the activation moments read off the kernel equal the direct sums
    x = states.double()
    torch.testing.assert_close(terms.sum_of_means, x.mean(-1).sum(-1))
    torch.testing.assert_close(terms.sum_of_mean_squares, x.pow(2).mean(-1).sum(-1), rtol=1e-5, atol=0)


@pytest.mark.parametrize("massive", [1e4, 3e4])
def test_massive_first_token_agrees_with_float64(massive: float) -> None:
    """Audit defect: with an attention-sink-like first token 1e4-3e4x the typical size, the fast float32
    kernels (raw and position-0-excluded) agree with a float64 computation on the same rows to 1e-6."""
    from mspgt.signals.cka import group_hsic_variants

    g = torch.Generator().manual_seed(0)
    states = torch.randn(6, 100, 128, generator=g) + 0.5  # h_0..h_5 of 4 sentences of 25 tokens
    states[:, ::25, :2] *= massive  # position 0 of every sentence: massive values in two dimensions
    keep = torch.ones(100, dtype=torch.bool)
    keep[::25] = False
    fast = group_hsic_variants(states, keep, ["raw", "raw_nofirst"]).hsic
    x = states.to(torch.float64)
    ref = {"raw": group_hsic(x), "raw_nofirst": group_hsic(x[:, keep])}
    for k, r in ref.items():
        assert float((fast[k] - r).abs().max() / r.abs().max()) < 1e-6, k
        change = representation_change(minibatch_cka(fast[k][None].numpy()))
        np.testing.assert_allclose(change, representation_change(minibatch_cka(r[None].numpy())), rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [4, 5, 6, 37, 64])
def test_hsic_from_features_equals_the_gram_matrix_formula(n: int) -> None:
    """The block (symmetric, upper-triangle) route of extraction gives the direct all-pairs formula on the
    same features, even and odd n, down to n = 4, and each kernel's trace."""
    from mspgt.signals.cka import hsic_unbiased_from_features

    g = torch.Generator().manual_seed(n)
    x = torch.randn(4, n, 8, generator=g) * torch.tensor([0.5, 1.0, 3.0, 20.0])[:, None, None] + 1.0
    hsic, trace = hsic_unbiased_from_features(x)
    grams = gram_linear(x.double())
    torch.testing.assert_close(hsic, hsic_unbiased_matrix(grams), rtol=1e-6, atol=1e-9 * float(hsic.abs().max()))
    torch.testing.assert_close(trace, grams.diagonal(dim1=1, dim2=2).sum(-1), rtol=1e-6, atol=0)
    assert torch.allclose(hsic, hsic.T)
    with pytest.raises(MspgtError):
        hsic_unbiased_from_features(torch.randn(2, 3, 8))
