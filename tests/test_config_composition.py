"""Every shipped config composes and validates (mspgt/config_validation.py) without loading a model: each
model x data x experiment x launcher file, the weights / variants / sigmas presets, and the experiment
files' own groups (experiment=intervention pulls in scale, generation and metrics; boundary does not)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

import mspgt  # noqa: F401  (registers the mspgt.* resolvers)
from mspgt.config_validation import validate_config
from mspgt.fusion.fuse import normalised_weights
from tests.conftest import REPO

CONF = REPO / "conf"


def options(group: str) -> list[str]:
    """The selectable files of a group (sub-folders such as model/base/ hold shared bases, not options)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides: list[str], hydra_cfg: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("config", overrides=overrides, return_hydra_config=hydra_cfg)


def _required(model: str, data: str, tmp: Path) -> list[str]:
    """The settings a file leaves to the command line (a path, a hub id), filled with stand-ins."""
    out = []
    if model == "local":
        folder = tmp / "ckpt"
        folder.mkdir(exist_ok=True)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (folder / name).write_text("{}")
        out.append(f"model.local_path={folder}")
    if model == "hub":
        out.append("model.hub_id=org/some-model")
    if model == "gguf":
        out.append(f"model.path={tmp / 'm.gguf'}")
    if data == "text":
        corpus = tmp / "corpus.txt"
        corpus.write_text("One sentence here is enough for the check. Another one follows it.\n")
        out.append(f"data.path={corpus}")
    if data == "conllu":
        corpus = tmp / "c.conllu"
        corpus.write_text("# text = Hi there\n1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_\n"
                          "2\tthere\tthere\tADV\tRB\t_\t1\tadvmod\t_\t_\n\n")
        out.append(f"data.path={corpus}")
    return out


LAUNCHERS = [None, *options("hydra/launcher")]


@pytest.mark.parametrize("model", options("model"))
def test_every_model_data_experiment_launcher_composes_and_validates(model, tmp_path):
    """One model per test, every data x experiment file under it, and every launcher file with every
    experiment (a launcher file sets only hydra.*, so it is crossed with one data file: compose is ~0.3 s)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        combos = [(d, e, None) for d, e in itertools.product(options("data"), options("experiment"))]
        combos += [("bbc", e, la) for e, la in itertools.product(options("experiment"), LAUNCHERS[1:])]
        for data, experiment, launcher in combos:
            overrides = [f"model={model}", f"data={data}", f"experiment={experiment}",
                         f"paths.outputs={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}",
                         *_required(model, data, tmp_path)]
            if launcher is not None:
                overrides.append(f"hydra/launcher={launcher}")
            cfg = compose("config", overrides=overrides, return_hydra_config=launcher is not None)
            if launcher is not None:
                assert cfg.hydra.launcher._target_.endswith("SlurmLauncher"), overrides
                assert "slurm_preflight" in cfg.hydra.callbacks, overrides
                with open_dict(cfg):
                    del cfg["hydra"]
            validate_config(cfg, tmp_path / "run")
            assert cfg.experiment.name == experiment
            assert ("generation" in cfg) == (experiment == "intervention"), overrides
            assert ("scale" in cfg) == (experiment in ("intervention", "fisher")), overrides


@pytest.mark.parametrize("model", ["llama2", "llama3", "qwen15", "qwen25"])
def test_the_hub_models_share_one_base(model):
    cfg = _compose([f"model={model}"])
    assert cfg.model.name == model and cfg.model.source == "hub" and cfg.model.extraction_batch_size == 64
    assert cfg.model.hub_id and cfg.model.dtype == "auto" and cfg.model.device_map == "auto"


@pytest.mark.parametrize("preset", options("weights"))
def test_every_weights_preset_is_a_valid_fusion(preset, tmp_path):
    cfg = _compose([f"weights={preset}"])
    w = normalised_weights(dict(cfg.fusion.weights), dict(cfg.fusion.signals))
    expected = {"equal": 3, "cka_only": 1, "probes_only": 1, "attention_only": 1}.get(preset, 2)
    assert len(w) == expected and abs(sum(w.values()) - 1) < 1e-12
    validate_config(cfg, tmp_path / "run")


def test_weights_presets_name_the_signals_they_keep():
    cka = _compose(["weights=cka_only"]).fusion.signals
    assert cka.representation_change and not cka.probe_jump and not cka.attention_drift
    no_probes = _compose(["weights=no_probes"]).fusion.signals
    assert no_probes.representation_change and not no_probes.probe_jump and no_probes.attention_drift


def test_the_default_composition_keeps_every_fusion_key_of_before():
    """weights/equal + variants/default + fusion/default compose to the same fusion settings as the single
    fusion file did, and a plain value override still reaches them."""
    fusion = OmegaConf.to_container(_compose([]).fusion)
    assert fusion == {
        "prominence": 0.3,
        "edges": "padded",
        "cka": {"exclude_first_position": False, "standardise": False},
        "attention": {"drop_sink": False, "first_block": "replicate"},
        "weights": {"representation_change": 1.0, "probe_jump": 1.0, "attention_drift": 1.0},
        "signals": {"representation_change": True, "probe_jump": True, "attention_drift": True},
    }
    cfg = _compose(["weights=no_probes", "fusion.weights.attention_drift=2", "variants=cka_both",
                    "fusion.attention.drop_sink=true"])
    assert cfg.fusion.weights.attention_drift == 2 and not cfg.fusion.signals.probe_jump
    assert cfg.fusion.cka.standardise and cfg.fusion.cka.exclude_first_position and cfg.fusion.attention.drop_sink


def test_sigma_stays_a_plain_value_and_sigmas_presets_set_the_sweep():
    cfg = _compose(["experiment=intervention", "scale=local", "sigma=0.37"])
    assert cfg.sigma == 0.37 and cfg.scale.name == "local"
    h = _compose(["experiment=intervention", "sigmas=coarse"], hydra_cfg=True).hydra
    assert h.sweeper.params.sigma == "0.1,0.5,1.0"


def test_experiment_files_pull_in_their_own_groups():
    boundary = _compose(["experiment=boundary"])
    assert not {"scale", "generation", "metrics"} & set(boundary)
    intervention = _compose(["experiment=intervention"])
    assert intervention.scale.name == "none" and intervention.generation.n_prompts > 0 and "brittleness" in intervention.metrics
    fisher = _compose(["experiment=fisher", "scale=global"])
    assert fisher.scale.name == "global" and "generation" not in fisher


@pytest.mark.parametrize("variant", options("variants"))
def test_the_old_group_name_signals_still_selects_a_variant(variant):
    """`variants` was called `signals` (one word for the config group, the fusion switches and mspgt/signals/):
    signals=<name> still composes to the same fusion settings as variants=<name>."""
    assert options("signals") == options("variants")
    new = OmegaConf.to_container(_compose([f"variants={variant}"]).fusion)
    assert OmegaConf.to_container(_compose([f"signals={variant}"]).fusion) == new
