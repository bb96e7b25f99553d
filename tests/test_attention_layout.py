"""Sliding-window attention is a mask, not a signal: each block's allowed keys come from the model's own
layout (config.layer_types, sliding_window), adjacent blocks are compared on the keys both may see, and a
windowed block whose attention is otherwise identical to a full block's gives zero drift (planted)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mspgt.errors import MspgtError
from mspgt.model.attention_layout import FULL, BlockAttention, attention_layout, check_layout_against_weights
from mspgt.model.loading import load_model
from mspgt.signals.attention_drift import attention_js_sums

CONF = Path(__file__).resolve().parents[1] / "conf"
WINDOWED = ("mistral", "gemma2", "gemma3")


def _full_maps(n_blocks: int, heads: int, t: int, gen: torch.Generator) -> list[torch.Tensor]:
    causal = torch.ones(t, t, dtype=torch.bool).tril()  # [T, T]
    return [torch.randn(1, heads, t, t, generator=gen, dtype=torch.float64).masked_fill(~causal, float("-inf"))
            for _ in range(n_blocks)]  # scores [1, H, T, T]


def test_a_windowed_block_with_the_same_scores_as_a_full_block_has_zero_drift() -> None:
    # planted: one set of scores, softmaxed over all causal keys (full block) and over the last 4 (windowed)
    gen = torch.Generator().manual_seed(0)
    t, w = 16, 4
    scores = _full_maps(1, 3, t, gen)[0]  # [1, 3, T, T]
    window = BlockAttention("sliding", w)
    full_map = torch.softmax(scores, dim=-1)  # [1, 3, T, T]
    windowed_map = torch.softmax(scores.masked_fill(~window.key_mask(t), float("-inf")), dim=-1)
    maps = [full_map, windowed_map, full_map, windowed_map]
    layout = [FULL, window, FULL, window]
    for drop_sink in (False, True):
        js_sum, _, count = attention_js_sums(maps, torch.ones(1, t), drop_sink, layout)
        assert int(count) > 10
        assert float(js_sum[0, 1:].abs().max()) < 1e-9
    mask_as_signal, _, count = attention_js_sums(maps, torch.ones(1, t), False)  # every block read as full
    assert float(mask_as_signal[0, 1:].min()) / int(count) > 0.05  # what the old reading measured


def test_common_support_keeps_real_drift_inside_the_window() -> None:
    # two different score sets: drift stays positive, and equals the JS computed by hand on the window
    gen = torch.Generator().manual_seed(1)
    t, w = 8, 3
    a, b = _full_maps(2, 1, t, gen)
    window = BlockAttention("sliding", w)
    maps = [torch.softmax(a, -1), torch.softmax(b.masked_fill(~window.key_mask(t), float("-inf")), -1)]
    js_sum, _, count = attention_js_sums(maps, torch.ones(1, t), False, [FULL, window])
    inside = window.key_mask(t)  # [T, T]
    p = torch.softmax(a[0, 0].masked_fill(~inside, float("-inf")), -1)  # full map restricted, renormalised
    q = maps[1][0, 0]
    m = (p + q) / 2
    kl = lambda x, y: torch.special.xlogy(x, x).sum(-1) - torch.special.xlogy(x, y).sum(-1)  # noqa: E731
    by_hand = ((kl(p, m) + kl(q, m)) / 2)[1:].sum()  # queries 1..T-1 see >= 2 keys
    assert int(count) == t - 1
    assert float(js_sum[0, 1]) == pytest.approx(float(by_hand), rel=1e-9)
    assert float(js_sum[0, 1]) > 0.01


def test_alternating_layouts_give_each_pair_its_own_drift() -> None:
    """Sliding, full, sliding, full, full, sliding, with padding and both sink settings: every column of one
    pass over all blocks equals that pair computed alone (the pass reuses each block's map on the keys it
    shares with its neighbours, and must drop it after the full-full pair). A windowed third block keeps
    the valid queries those of the whole pass."""
    gen = torch.Generator().manual_seed(2)
    t = 12
    window = BlockAttention("sliding", 4)
    layout = [window, FULL, window, FULL, FULL, window]
    maps = []
    for spec in layout:
        scores = torch.randn(2, 3, t, t, generator=gen, dtype=torch.float64)
        maps.append(torch.softmax(scores.masked_fill(~spec.key_mask(t), float("-inf")), dim=-1))
    mask = torch.ones(2, t)
    mask[1, 9:] = 0  # a shorter second sentence
    for drop_sink in (False, True):
        js_sum, _, count = attention_js_sums(maps, mask, drop_sink, layout)
        for block in range(1, len(layout)):
            pair_sum, _, pair_count = attention_js_sums([maps[block - 1], maps[block], maps[0]], mask, drop_sink,
                                                        [layout[block - 1], layout[block], window])
            torch.testing.assert_close(pair_count, count)
            torch.testing.assert_close(js_sum[:, block], pair_sum[:, 1], rtol=1e-12, atol=1e-12)
        assert float(js_sum[:, 1:].min()) > 0


def test_layout_read_from_configs() -> None:
    transformers = pytest.importorskip("transformers")
    common = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    mistral = transformers.MistralConfig(num_hidden_layers=3, sliding_window=5, **common)
    assert attention_layout(mistral, 3) == [BlockAttention("sliding", 5)] * 3
    assert attention_layout(transformers.MistralConfig(num_hidden_layers=2, sliding_window=None, **common), 2) == [FULL] * 2
    gemma2 = transformers.Gemma2Config(num_hidden_layers=4, sliding_window=4, head_dim=8, **common)
    assert [str(b) for b in attention_layout(gemma2, 4)] == ["sliding:4", "full", "sliding:4", "full"]
    types = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
    gemma3 = transformers.Gemma3TextConfig(num_hidden_layers=4, sliding_window=6, head_dim=8, layer_types=types, **common)
    assert [str(b) for b in attention_layout(gemma3, 4)] == ["sliding:6", "sliding:6", "full", "sliding:6"]
    qwen2 = transformers.Qwen2Config(num_hidden_layers=2, use_sliding_window=False, sliding_window=4, **common)
    assert attention_layout(qwen2, 2) == [FULL] * 2
    neo = transformers.GPTNeoConfig(num_layers=2, attention_types=[[["global", "local"], 1]], window_size=7,
                                    hidden_size=32, num_heads=4, vocab_size=64)
    assert [str(b) for b in attention_layout(neo, 2)] == ["full", "sliding:7"]
    with pytest.raises(MspgtError, match="layer_types"):
        attention_layout(gemma3, 5)


def _tiny(architecture: str, cache: Path, **tiny) -> object:
    cfg = OmegaConf.load(CONF / "model" / "tiny.yaml")
    cfg.architecture = architecture
    cfg.tiny.update(tiny)
    return load_model(cfg, cache, need_attentions=True, probe_tokens=24)


@pytest.mark.parametrize("architecture", WINDOWED)
def test_real_windowed_models_with_uniform_attention_show_no_drift(architecture, shared_cache) -> None:
    """Zero query projections make every head uniform over the keys its block may see (scores all 0), so
    blocks differ only by their masks: the drift must be 0 on sentences 5x longer than the window."""
    loaded = _tiny(architecture, shared_cache)
    kinds = {b.kind for b in loaded.attention_layout}
    assert "sliding" in kinds and (architecture == "mistral" or "full" in kinds), loaded.attention_layout
    for block in loaded.blocks:
        block.self_attn.q_proj.weight.zero_()
    ids = torch.tensor([[(i * 7919 + 11) % 5000 for i in range(20)], [(i * 31 + 5) % 5000 for i in range(20)]])
    mask = torch.ones_like(ids)
    mask[1, 14:] = 0  # a padded sentence too
    with torch.no_grad():
        atts = loaded.model(input_ids=ids, attention_mask=mask, output_attentions=True, use_cache=False).attentions
    for drop_sink in (False, True):
        js_sum, first, count = attention_js_sums(atts, mask, drop_sink, loaded.attention_layout)
        assert (count > 10).all()
        assert float(js_sum.abs().max()) < 1e-6 and float(first.abs().max()) < 1e-6
    old, _, _ = attention_js_sums(atts, mask, False)  # blocks read as full: the masks measured as drift
    if architecture != "mistral":  # Mistral: every block has the same window, so the old reading agreed
        assert float(old.max()) > 0.5


def test_an_undeclared_window_fails_loudly(shared_cache) -> None:
    loaded = _tiny("mistral", shared_cache)
    ids = torch.arange(100, 124)[None]  # [1, 24]
    with torch.no_grad():
        atts = list(loaded.model(input_ids=ids, output_attentions=True, use_cache=False).attentions)
    check_layout_against_weights(atts, loaded.attention_layout)  # the declared layout fits
    with pytest.raises(MspgtError, match="undeclared sliding window"):
        check_layout_against_weights(atts, [FULL] * loaded.n_blocks)
    with pytest.raises(MspgtError, match="outside its declared layout"):
        check_layout_against_weights(atts, [BlockAttention("sliding", 2)] * loaded.n_blocks)
