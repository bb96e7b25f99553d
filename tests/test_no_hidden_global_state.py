"""No hidden global state: loading a tiny model keeps the caller's torch RNG state (its weights still come
from model.seed), and the LanguageTool install folder is set in the environment only while the library
starts (mspgt/interventions/grammar.py), not for the rest of the process."""

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
