"""No hidden global state: loading a tiny model keeps the caller's torch RNG state (its weights still come
from model.seed), and the LanguageTool install folder is set in the environment only while the library
starts (mspgt/interventions/grammar.py), not for the rest of the process. And one h_0 / activation std."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mspgt.interventions.grammar import scoped_environ
from mspgt.model.loading import load_model

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_loading_a_tiny_model_leaves_the_global_torch_rng_alone(shared_cache):
    cfg = OmegaConf.load(CONF / "model" / "tiny.yaml")
    torch.manual_seed(123)
    expected = torch.rand(3)  # what the next draw is without loading anything
    torch.manual_seed(123)
    first = load_model(cfg, shared_cache, need_attentions=False, probe_tokens=24)
    assert torch.equal(torch.rand(3), expected)  # the old code reseeded it with model.seed
    second = load_model(cfg, shared_cache, need_attentions=False, probe_tokens=24)
    for a, b in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)  # the weights are still a function of model.seed alone


def test_scoped_environ_restores_the_environment(monkeypatch):
    monkeypatch.delenv("LTP_PATH", raising=False)
    with scoped_environ("LTP_PATH", "/opt/lt"):
        assert os.environ["LTP_PATH"] == "/opt/lt"
    assert "LTP_PATH" not in os.environ
    monkeypatch.setenv("LTP_PATH", "/mine")
    with scoped_environ("LTP_PATH", "/opt/lt"):
        pass
    assert os.environ["LTP_PATH"] == "/mine"


def test_the_intervention_takes_h0_where_the_extraction_does(shared_cache):
    """One definition of h_0 (the input of block 1, as the extraction hooks take it) and of the pooled std:
    on Gemma 2 (sqrt(d) embedding scale) s_0 is the std of output_hidden_states[0]. (A guard for the shared
    hooks: the old embedding-module hook gave the same number here, since this transformers version scales
    inside the embedding module.)"""
    from mspgt.interventions.activation_scale import measure_activation_std
    from mspgt.statistics import entry_std

    cfg = OmegaConf.load(CONF / "model" / "tiny.yaml")
    cfg.architecture = "gemma2"
    loaded = load_model(cfg, shared_cache, need_attentions=False, probe_tokens=24)
    text = "the cat sat on the mat and looked at the dog"
    s = measure_activation_std(loaded, [text], max_tokens=24, exclude_first_token=False)
    enc = loaded.tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        h0 = loaded.model(**enc, output_hidden_states=True).hidden_states[0].double()  # [1, T, d]
    expected = float(entry_std(float(h0.mean()), float(h0.square().mean())))
    assert abs(s[0] - expected) <= 1e-6 * expected
