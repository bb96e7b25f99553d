"""Signal 3: Jensen-Shannon divergence and attention drift (identities, bounds, padding never leaks in)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mspgt.errors import MspgtError
from mspgt.signals.attention_drift import attention_drift, attention_js_sums, js_divergence

torch.set_num_threads(1)
LN2 = math.log(2.0)


def _random_distributions(
    shape: tuple[int, ...], gen: torch.Generator, sharpness: float = 3.0
) -> torch.Tensor:
    return torch.softmax(sharpness * torch.randn(*shape, generator=gen, dtype=torch.float64), dim=-1)


def _causal_attentions(n_blocks: int, heads: int, length: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Random causal attention maps [1, H, T, T], each row a distribution over keys k <= q."""
    causal = torch.ones(length, length, dtype=torch.bool).tril()  # [T, T]
    maps = []
    for _ in range(n_blocks):
        scores = 3.0 * torch.randn(1, heads, length, length, generator=gen)  # [1, H, T, T]
        maps.append(torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1))
    return maps


def test_js_is_zero_for_identical_distributions() -> None:
    p = _random_distributions((50, 7), torch.Generator().manual_seed(0))
    torch.testing.assert_close(js_divergence(p, p), torch.zeros(50, dtype=torch.float64), atol=1e-12, rtol=0)


def test_js_is_bounded_and_symmetric() -> None:
    gen = torch.Generator().manual_seed(1)
    p = _random_distributions((500, 9), gen, sharpness=6.0)
    q = _random_distributions((500, 9), gen, sharpness=6.0)
    js = js_divergence(p, q)  # [500]
    assert (js >= 0).all() and (js <= LN2 + 1e-12).all()
    torch.testing.assert_close(js, js_divergence(q, p), atol=1e-14, rtol=0)
    torch.testing.assert_close(js_divergence(p.T, q.T, dim=0), js)


def test_js_reaches_ln2_for_disjoint_supports() -> None:
    p = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    q = torch.tensor([0.0, 0.0, 0.3, 0.7], dtype=torch.float64)
    assert float(js_divergence(p, q)) == pytest.approx(LN2, abs=1e-12)


def test_js_hand_computed() -> None:
    # m = (0.75, 0.25): KL(p||m) = ln(4/3), KL(q||m) = ln(4/3) / 2, so JS = 0.75 ln(4/3)
    p = torch.tensor([1.0, 0.0], dtype=torch.float64)
    q = torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert float(js_divergence(p, q)) == pytest.approx(0.75 * math.log(4 / 3), abs=1e-12)


def test_js_sums_hand_computed() -> None:
    block1 = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
    block2 = torch.tensor([[1.0, 0, 0], [1.0, 0.0, 0], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
    maps = [block1[None, None], block2[None, None]]  # 2 blocks of [B=1, H=1, T=3, T=3]
    js_sum, first_uniform, count = attention_js_sums(maps, torch.ones(1, 3), drop_sink=False)
    assert int(count[0]) == 2  # query 0 sees only one key
    torch.testing.assert_close(js_sum, torch.tensor([[0.0, 0.75 * math.log(4 / 3)]], dtype=torch.float64))
    assert float(first_uniform[0]) == pytest.approx(0.0, abs=1e-12)  # block 1 is uniform here


def test_head_average_before_divergence() -> None:
    heads = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)  # rows for query 1 of 2 heads
    block = torch.zeros(1, 2, 2, 2, dtype=torch.float64)  # [B, H, T, T]
    block[0, :, 0, 0] = 1.0
    block[0, :, 1] = heads[0]
    js_sum, first_uniform, count = attention_js_sums([block, block], torch.ones(1, 2), drop_sink=False)
    assert int(count[0]) == 1
    assert float(first_uniform[0]) == pytest.approx(0.0, abs=1e-12)  # the head average (0.5, 0.5) is uniform
    assert float(js_sum[0, 1]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("drop_sink", [False, True])
def test_padding_never_leaks_in_random_maps(drop_sink: bool) -> None:
    gen = torch.Generator().manual_seed(2)
    short, long = 5, 9
    alone = _causal_attentions(4, 3, short, gen)  # 4 blocks of [1, 3, 5, 5]
    other = _causal_attentions(4, 3, long, gen)
    batched = []
    for a, o in zip(alone, other, strict=True):
        garbage = torch.rand(1, 3, long, long, generator=gen)  # mass on padded and future keys
        garbage[0, :, short + 1 :, :] = float("nan")  # even NaN in padded query rows
        garbage[:, :, :short, :short] = a[0]
        batched.append(torch.cat([garbage, o]))  # [2, 3, 9, 9]: garbage around the short sentence
    mask = torch.tensor([[1] * short + [0] * (long - short), [1] * long])
    sums_alone = attention_js_sums(alone, torch.ones(1, short), drop_sink)
    sums_batched = attention_js_sums(batched, mask, drop_sink)
    sums_other = attention_js_sums(other, torch.ones(1, long), drop_sink)
    for single, pair, second in zip(sums_alone, sums_batched, sums_other, strict=True):
        torch.testing.assert_close(pair[:1], single, rtol=1e-12, atol=1e-12, check_dtype=False)
        torch.testing.assert_close(pair[1:], second, rtol=1e-12, atol=1e-12, check_dtype=False)
    assert sums_alone[0][0, 1:].min() > 0.01  # the maps differ across blocks, so the check is not vacuous


def test_padding_never_leaks_in_a_real_model() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.3,  # peaky attention, so blocks differ clearly
        attn_implementation="eager",
    )
    model = transformers.LlamaForCausalLM(config).eval()
    short = torch.tensor([[3, 14, 15, 9, 26]])  # [1, 5]
    long = torch.tensor([[5, 35, 8, 9, 7, 9, 32, 38, 46]])  # [1, 9]
    batch = torch.cat([torch.cat([short, torch.zeros(1, 4, dtype=torch.long)], dim=1), long])  # right padding
    mask = torch.tensor([[1] * 5 + [0] * 4, [1] * 9])
    with torch.no_grad():
        maps_alone = model(input_ids=short, output_attentions=True).attentions
        maps_batch = model(input_ids=batch, attention_mask=mask, output_attentions=True).attentions
    for drop_sink in (False, True):
        sums_alone = attention_js_sums(maps_alone, torch.ones(1, 5), drop_sink)
        sums_batch = attention_js_sums(maps_batch, mask, drop_sink)
        for single, pair in zip(sums_alone, sums_batch, strict=True):
            torch.testing.assert_close(pair[:1], single, rtol=1e-4, atol=1e-6, check_dtype=False)
        assert sums_alone[0][0, 1:].min() > 1e-3


def test_drop_sink_counts() -> None:
    gen = torch.Generator().manual_seed(3)
    maps = [torch.cat([m, m]) for m in _causal_attentions(2, 2, 9, gen)]  # [2, 2, 9, 9]
    mask = torch.tensor([[1] * 5 + [0] * 4, [1] * 9])
    _, _, count = attention_js_sums(maps, mask, drop_sink=False)
    assert count.tolist() == [4, 8]  # queries 1..n-1 see >= 2 keys
    _, _, count = attention_js_sums(maps, mask, drop_sink=True)
    assert count.tolist() == [3, 7]  # without key 0: queries 2..n-1


def test_drop_sink_ignores_sink_mass() -> None:
    gen = torch.Generator().manual_seed(4)
    maps = [m.double() for m in _causal_attentions(3, 2, 6, gen)]
    sunk = []
    for m in maps:
        heavy = m.clone()
        heavy[..., 0] += 50.0  # a huge attention sink, the same in every head ...
        sunk.append(heavy / heavy.sum(-1, keepdim=True))  # ... that leaves the other keys' proportions
    with_sink = attention_js_sums(maps, torch.ones(1, 6), drop_sink=True)
    heavy_sink = attention_js_sums(sunk, torch.ones(1, 6), drop_sink=True)
    for a, b in zip(with_sink, heavy_sink, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, check_dtype=False)
    full = attention_js_sums(sunk, torch.ones(1, 6), drop_sink=False)
    assert float(full[0].sum()) < float(heavy_sink[0].sum())  # the sink hides the drift


def test_attention_drift_weighted_mean_and_first_block() -> None:
    js_sum = np.array([[0.0, 2.0, 4.0], [0.0, 6.0, 2.0]])  # [G=2, L=3]
    first_uniform = np.array([1.0, 3.0])
    count = np.array([2, 4])
    np.testing.assert_allclose(attention_drift(js_sum, first_uniform, count), [8 / 6, 8 / 6, 6 / 6])
    np.testing.assert_allclose(
        attention_drift(js_sum, first_uniform, count, first_block="uniform"), [4 / 6, 8 / 6, 6 / 6]
    )
    counts = np.array([[2, 0], [1, 1], [0, 3]])  # [R=3, G=2]
    drift = attention_drift(js_sum, first_uniform, count, counts)  # [3, 3]
    np.testing.assert_allclose(drift[0], [1.0, 1.0, 2.0])
    np.testing.assert_allclose(drift[1], attention_drift(js_sum, first_uniform, count))
    np.testing.assert_allclose(drift[2], [1.5, 1.5, 0.5])
    with pytest.raises(MspgtError, match="first_block"):
        attention_drift(js_sum, first_uniform, count, first_block="zero")
    with pytest.raises(MspgtError):
        attention_drift(js_sum, first_uniform, count, np.ones(3))
    with pytest.raises(MspgtError):
        attention_drift(js_sum, first_uniform, np.zeros(2))
