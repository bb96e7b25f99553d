"""Tiny random models of ten real architectures (`model=tiny model.architecture=...`): the first and last
states the hooks take are the ones method.md defines (h_0 = the input of block 1, Gemma's sqrt(d) scale
included; h_L = the output of block L before the final norm), checked against `output_hidden_states`; and
the boundary experiment runs end to end through the entry point on every one, with finite signals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mspgt.extraction.hooks import residual_stream
from mspgt.model.loading import load_model
from mspgt.model.tiny import TINY_ARCHITECTURES
from tests.conftest import TINY, run_cli

CONF = Path(__file__).resolve().parents[1] / "conf"
FINAL_NORMS = ("norm", "ln_f", "final_layer_norm")  # Llama-style, GPT-2, GPT-NeoX


def tiny_model(architecture: str, cache: Path, need_attentions: bool = False):
    cfg = OmegaConf.load(CONF / "model" / "tiny.yaml")
    cfg.architecture = architecture
    return load_model(cfg, cache, need_attentions=need_attentions, probe_tokens=24)


def test_the_required_architectures_are_offered() -> None:
    required = {"llama", "qwen2", "mistral", "gemma2", "gemma3", "phi3", "gpt_neox", "gpt2", "olmo2"}
    assert required <= set(TINY_ARCHITECTURES) and "qwen2_moe" in TINY_ARCHITECTURES  # and one MoE


def test_a_model_tiny_field_wins_over_the_architecture_default(shared_cache) -> None:
    """`+model.tiny.num_experts=8` builds an MoE of 8 experts (the default is 4): benchmarks size an MoE like a
    real one's proportions this way; the defaults it does not name stay."""
    cfg = OmegaConf.load(CONF / "model" / "tiny.yaml")
    cfg.architecture = "qwen2_moe"
    cfg.tiny.num_experts = 8
    cfg.tiny.moe_intermediate_size = 24
    loaded = load_model(cfg, shared_cache, need_attentions=False)
    config = loaded.model.config
    assert (config.num_experts, config.moe_intermediate_size, config.num_experts_per_tok) == (8, 24, 2)
    experts = loaded.model.get_decoder().layers[0].mlp.experts
    weights = [p for p in experts.parameters() if p.dim() == 3]  # fused experts: [E, ., .]
    assert weights and all(w.shape[0] == 8 for w in weights)


@pytest.mark.parametrize("architecture", TINY_ARCHITECTURES)
def test_hooked_states_are_h0_and_h_l_before_the_final_norm(architecture, shared_cache) -> None:
    loaded = tiny_model(architecture, shared_cache)
    L = loaded.n_blocks
    ids = torch.arange(100, 120)[None]  # [1, 20]
    with torch.no_grad(), residual_stream(loaded.blocks) as states:
        out = loaded.model(input_ids=ids, output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states  # L + 1 tensors [1, 20, d]; the last one is after the final norm
    assert len(hidden) == L + 1
    for layer in range(L):
        torch.testing.assert_close(states[layer], hidden[layer], rtol=0, atol=0)
    decoder = loaded.model.get_decoder()
    final_norm = next(getattr(decoder, n) for n in FINAL_NORMS if hasattr(decoder, n))
    with torch.no_grad():
        torch.testing.assert_close(final_norm(states[L]), hidden[L], rtol=1e-5, atol=1e-5)
        assert float((states[L] - hidden[L]).abs().max()) > 1e-2  # h_L is really before the norm
    if architecture.startswith("gemma"):  # Gemma scales the embeddings by sqrt(d) before block 1
        d = loaded.model.config.hidden_size
        raw = decoder.embed_tokens.weight[ids]  # [1, 20, d]
        torch.testing.assert_close(states[0], raw * math.sqrt(d), rtol=1e-2, atol=1e-5)


@pytest.mark.slow  # processes of their own (a sweep, signals, a mount): CI runs it
def test_boundary_runs_on_every_architecture_through_the_entry_point(tmp_path, shared_cache) -> None:
    """One local multirun over all tiny architectures (one process: a few seconds per architecture)."""
    run_cli(["-m", "model=tiny", f"model.architecture={','.join(TINY_ARCHITECTURES)}", *TINY,
               "tracking.mode=disabled"], tmp_path, cache=shared_cache)
    sweep = next((tmp_path / "outputs" / "multirun").iterdir())
    results = {json.loads(p.read_text())["model"]["name"]: json.loads(p.read_text())
               for p in sweep.glob("*/results.json")}
    assert sorted(results) == sorted(f"tiny_{a}" for a in TINY_ARCHITECTURES)
    for name, res in results.items():
        assert res["model"]["family"] == name.removeprefix("tiny_")
        assert res["model"]["n_blocks"] == 6
        for signal, values in res["signals"].items():
            assert len(values) == 6 and all(math.isfinite(v) for v in values), (name, signal, values)
    stored = sorted(p.name.split("__")[0] for p in (tmp_path / "outputs" / "store" / "boundary").glob("*.json"))
    assert stored == sorted(results)
