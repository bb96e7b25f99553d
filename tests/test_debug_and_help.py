"""`debug=fast` sizes every experiment down to a tiny model, and `--help` is a help page (conf/debug/,
conf/hydra/help/mspgt.yaml)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from mspgt.config_validation import EXPERIMENTS

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_debug_fast_composes_small_for_every_experiment(experiment):
    cfg = _compose([f"experiment={experiment}", "debug=fast"])
    assert cfg.experiment.name == experiment
    assert cfg.model.source == "tiny_random" and cfg.model.tiny.num_hidden_layers == 6
    assert cfg.data.n_sentences == 48 and cfg.bootstrap.n_resamples == 50 and cfg.tracking.mode == "disabled"
    assert cfg.hydra.runtime.choices["debug/experiment@_global_"] == f"fast_{experiment}"
    assert "/debug/" in str(cfg.hydra.run.dir)
    if experiment == "intervention":
        assert cfg.generation.n_prompts == 6 and cfg.experiment.activation_std.n_sentences == 24
    if experiment == "fisher":
        assert cfg.experiment.kl_sentences == 8 and cfg.experiment.n_sentences == 12
        assert dict(cfg.experiment.scale_layers)["global"] == [5, 6]  # within the tiny model's 6 blocks
    if experiment == "boundary":
        assert "generation" not in cfg and "kl_sentences" not in cfg.experiment  # nothing of the others


def test_debug_fast_yields_to_the_command_line_and_leaves_the_defaults_alone():
    cfg = _compose(["debug=fast", "model=tiny_qwen2", "data.n_sentences=64"])
    assert cfg.model.name == "tiny_qwen2" and cfg.data.n_sentences == 64
    plain = _compose([])
    assert plain.model.name == "smollm2" and plain.data.n_sentences == 1000 and plain.bootstrap.n_resamples == 1000


def test_help_page_names_the_tool_the_groups_and_examples_and_no_base_file():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "mspgt.run", "--help"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "powered by Hydra" not in text and "Multi-Scale Probabilistic Generation Theory" in text
    examples = [line.strip() for line in text.splitlines() if line.strip().startswith("python -m mspgt.run")]
    assert len(examples) >= 5 and "python -m mspgt.run debug=fast" in " ".join(examples)
    groups = {line.split(":")[0].strip(): line.split(":", 1)[1] for line in text.splitlines()
              if line.startswith("  ") and ":" in line and not line.strip().startswith("python")}
    for group in ("model", "data", "experiment", "debug", "weights", "hydra/launcher"):
        assert group in groups, group
    assert "smollm2" in groups["model"] and "fast" in groups["debug"]
    assert not any("base" in [c.strip() for c in choices.split(",")] for choices in groups.values())
    assert "model/base" not in text and "hub_7b" not in text and "launcher/base" not in text
    assert "debug/experiment" not in groups and "fast_boundary" not in text
