"""Noise hooks, activation scale and paired sampling on a tiny random Llama (plumbing, not science)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mspgt.errors import MspgtError
from mspgt.interventions.activation_scale import measure_activation_std
from mspgt.interventions.generation import row_batches, sample_continuations
from mspgt.interventions.noise import ScaleNoise, check_sigma, forward_hook_count
from mspgt.model.loading import load_model

CONF = Path(__file__).resolve().parents[1] / "conf"
TEXTS = [
    "The minister said the plan would be published next week.",
    "Shares in the company rose sharply after the results.",
    "A new film about the war opens in London on Friday.",
    "The team lost two of its last three games at home.",
    "Prices rose by 3% in the year to March, the office said.",
    "He said he would not stand again at the next election.",
]


@pytest.fixture(scope="module")
def tiny(shared_cache):
    return load_model(OmegaConf.load(CONF / "model" / "tiny_llama.yaml"), shared_cache, need_attentions=False)


def gen_cfg(**kw):
    base = dict(
        n_prompts=3,
        samples_per_prompt=2,
        prompt_words=6,
        max_new_tokens=8,
        min_new_tokens=0,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        batch_size=4,
        seed=0,
        noise_seed=1234,
    )
    return OmegaConf.create({**base, **kw})


def logits(loaded, text: str) -> torch.Tensor:
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return loaded.model(input_ids=ids, use_cache=False).logits  # (1, T, V)


def capture_block_output(loaded, layer: int, text: str) -> torch.Tensor:
    """h_layer of `text`, read by a hook registered after any noise hook (so it sees the noised output)."""
    seen = {}
    handle = loaded.blocks[layer - 1].register_forward_hook(
        lambda m, a, out: seen.__setitem__("h", (out[0] if isinstance(out, tuple) else out).clone())
    )
    try:
        logits(loaded, text)
    finally:
        handle.remove()
    return seen["h"]  # (1, T, d)


def all_blocks(loaded, s: float = 1.0) -> dict[int, float]:
    return {layer: s for layer in range(1, loaded.n_blocks + 1)}


def test_sigma_zero_leaves_generation_identical(tiny):
    prompts = [" ".join(t.split()[:6]) for t in TEXTS[:3]]
    bare = sample_continuations(tiny, prompts, gen_cfg())
    with ScaleNoise(tiny.blocks, all_blocks(tiny), sigma=0.0, seed=5) as noise:
        assert forward_hook_count(tiny.blocks) == tiny.n_blocks
        assert torch.equal(logits(tiny, TEXTS[0]), logits(tiny, TEXTS[0]))
    hooked = sample_continuations(tiny, prompts, gen_cfg(), noise=noise)
    assert hooked.continuations == bare.continuations
    assert forward_hook_count(tiny.blocks) == 0


def test_sigma_zero_logits_bitwise_equal(tiny):
    clean = logits(tiny, TEXTS[1])
    with ScaleNoise(tiny.blocks, all_blocks(tiny, 3.0), sigma=0.0, seed=1):
        zero = logits(tiny, TEXTS[1])
    with ScaleNoise(tiny.blocks, all_blocks(tiny, 3.0), sigma=0.5, seed=1):
        noised = logits(tiny, TEXTS[1])
    assert torch.equal(clean, zero)
    assert not torch.allclose(clean, noised)


@pytest.mark.parametrize("layer", [1, 3, 6])
@pytest.mark.parametrize("sigma", [0.3, 2.0])
def test_injected_noise_has_requested_std(tiny, layer, sigma):
    s_l = 0.7 + 0.1 * layer
    text = " ".join(TEXTS)  # ~70 tokens x 64 dims: ~4.5k noise entries
    clean = capture_block_output(tiny, layer, text)
    with ScaleNoise(tiny.blocks, {layer: s_l}, sigma=sigma, seed=layer) as noise:
        noised = capture_block_output(tiny, layer, text)
    diff = (noised - clean).flatten().double()  # the noise itself: block l saw the same input
    requested = sigma * s_l
    assert diff.std().item() == pytest.approx(requested, rel=0.05)
    assert abs(diff.mean().item()) < 4 * requested / diff.numel() ** 0.5
    # float32 rounding of (h + e) - h: agreement to 1e-3, not bitwise
    assert noise.realised_std()[layer] == pytest.approx(diff.std(unbiased=False).item(), rel=1e-3)


def test_realised_std_per_layer_with_several_layers(tiny):
    stds = {2: 0.5, 4: 1.5, 5: 3.0}
    with ScaleNoise(tiny.blocks, stds, sigma=0.8, seed=3) as noise:
        logits(tiny, " ".join(TEXTS))
    realised = noise.realised_std()
    for layer, s in stds.items():
        assert realised[layer] == pytest.approx(0.8 * s, rel=0.05)


def test_noise_leaves_the_global_rng_alone(tiny):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with ScaleNoise(tiny.blocks, all_blocks(tiny), sigma=1.0, seed=9):
        logits(tiny, TEXTS[2])
    assert torch.equal(before, torch.get_rng_state())


def test_noise_stream_is_reproducible_and_reseedable(tiny):
    runs = []
    for _ in range(2):
        with ScaleNoise(tiny.blocks, {2: 1.0}, sigma=1.0, seed=11):
            runs.append(capture_block_output(tiny, 2, TEXTS[0]))
    assert torch.equal(runs[0], runs[1])
    other = ScaleNoise(tiny.blocks, {2: 1.0}, sigma=1.0, seed=11)
    other.reseed(12)
    with other:
        assert not torch.equal(capture_block_output(tiny, 2, TEXTS[0]), runs[0])


def test_no_hook_left_after_an_exception(tiny):
    noise = ScaleNoise(tiny.blocks, all_blocks(tiny), sigma=1.0, seed=0)
    with pytest.raises(ValueError), noise:
        assert forward_hook_count(tiny.blocks) == tiny.n_blocks
        raise ValueError("boom")
    assert forward_hook_count(tiny.blocks) == 0


def test_no_hook_left_after_generation_fails(tiny, monkeypatch):
    noise = ScaleNoise(tiny.blocks, all_blocks(tiny), sigma=1.0, seed=0)

    def broken_generate(*args, **kwargs):
        assert forward_hook_count(tiny.blocks) == tiny.n_blocks  # the hooks are on while generating
        raise RuntimeError("generation failed")

    monkeypatch.setattr(tiny.model, "generate", broken_generate)
    with pytest.raises(RuntimeError, match="generation failed"):
        sample_continuations(tiny, ["The minister said"], gen_cfg(), noise=noise)
    assert forward_hook_count(tiny.blocks) == 0


def test_paired_sampling_replays_and_noise_changes_text(tiny):
    prompts = [" ".join(t.split()[:6]) for t in TEXTS[:3]]
    a = sample_continuations(tiny, prompts, gen_cfg())
    b = sample_continuations(tiny, prompts, gen_cfg())
    assert a.continuations == b.continuations  # same seeds, same batches: the clean run replays
    noise = ScaleNoise(tiny.blocks, all_blocks(tiny, 10.0), sigma=50.0, seed=0)
    c = sample_continuations(tiny, prompts, gen_cfg(temperature=0.01), noise=noise)
    d = sample_continuations(tiny, prompts, gen_cfg(temperature=0.01))
    assert c.continuations != d.continuations
    assert all(len(row) == 2 for row in a.continuations)


def test_row_batches_are_prompt_major_and_complete():
    batches = row_batches(3, 2, 4)
    assert batches == [[(0, 0), (0, 1), (1, 0), (1, 1)], [(2, 0), (2, 1)]]


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "x"])
def test_bad_sigma_is_a_clear_error(bad):
    with pytest.raises(MspgtError, match="sigma"):
        check_sigma(bad)


def test_noise_rejects_blocks_outside_the_model(tiny):
    with pytest.raises(MspgtError, match="outside"):
        ScaleNoise(tiny.blocks, {tiny.n_blocks + 1: 1.0}, sigma=1.0, seed=0)
    with pytest.raises(MspgtError, match="no blocks"):
        ScaleNoise(tiny.blocks, {}, sigma=1.0, seed=0)


@pytest.mark.parametrize("kind", ["pooled", "per_dimension"])
@pytest.mark.parametrize("exclude_first", [True, False])
def test_activation_std_matches_hidden_states(tiny, kind, exclude_first):
    """s_l from block hooks equals the std computed from output_hidden_states (h_0..h_{L-1})."""
    measured = measure_activation_std(
        tiny, TEXTS, max_tokens=64, batch_size=4, kind=kind, exclude_first_token=exclude_first
    )
    assert len(measured) == tiny.n_blocks + 1
    rows: list[list[torch.Tensor]] = [[] for _ in range(tiny.n_blocks)]
    for text in TEXTS:  # one sentence at a time: no padding at all
        ids = tiny.tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            hs = tiny.model(input_ids=ids, output_hidden_states=True).hidden_states  # L+1 x (1, T, d)
        for layer in range(tiny.n_blocks):  # hidden_states[L] is after the final norm: not compared
            rows[layer].append(hs[layer][0, 1:] if exclude_first else hs[layer][0])
    for layer in range(tiny.n_blocks):
        h = torch.cat(rows[layer]).double()  # (N, d)
        expected = h.std(unbiased=False) if kind == "pooled" else h.var(0, unbiased=False).mean().sqrt()
        assert measured[layer] == pytest.approx(expected.item(), rel=1e-6)
