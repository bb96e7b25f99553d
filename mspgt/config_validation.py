"""One validation step for every setting, run by mspgt/run.py before any data or model is touched.

Three parts, in order:
1. every setting of every group against its type and range: the typed schema, mspgt/config_schema.py;
2. the cross-group checks of each experiment (fusion weights, probe tasks, scale names, ...);
3. the file-system preflight: the corpus exists and is UTF-8 text or CoNLL-U, a local model folder holds a
   config, weights and a tokenizer, and the run, cache and store folders can be written (a store that cannot be written would otherwise fail after all the work).
Each failure is an `MspgtError` naming the setting and the fix; warnings (a setting that runs, but
probably not as meant) go to the log.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mspgt.config_schema import GROUPS, check_device, check_group, value_of
from mspgt.errors import MspgtError, choose
from mspgt.files import writable_folder

log = logging.getLogger(__name__)

EXPERIMENTS = ("boundary", "intervention", "fisher")
SIGMA_WARN = 10.0  # noise std above 10x the activation scale drowns the signal (our threshold)


# -- cross-group checks ---------------------------------------------------------------------------------
def check_experiment(cfg: DictConfig) -> None:
    """The checks each experiment already owns (they need no data or model), run here before anything."""
    name = cfg.experiment.name
    boundary_too = name == "boundary" or bool(cfg.experiment.get("run_boundary_first", False))
    if boundary_too:
        from mspgt.experiments.boundary import validate_boundary_config

        validate_boundary_config(cfg)
    if name == "fisher":
        from mspgt.experiments.fisher import check_fisher_settings

        check_fisher_settings(cfg.experiment)
    if name == "intervention":
        from mspgt.experiments.intervention import check_brittleness_metrics
        from mspgt.interventions.generation import check_generation_settings
        from mspgt.interventions.noise import check_sigma
        from mspgt.interventions.scale_layers import check_scale_name

        sigma = check_sigma(cfg.sigma)
        check_scale_name(cfg.scale)
        check_generation_settings(cfg.generation)
        check_brittleness_metrics(cfg.metrics.brittleness.metrics)
        layers = cfg.scale.get("layers")
        if layers is not None and (not isinstance(layers, ListConfig | list) or len(layers) != 2
                                   or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers)):
            raise MspgtError(f"scale.layers={layers} is not [first, last]",
                             "give two block numbers, e.g. `scale.layers=[3,7]`, or scale.layers=null")
        if sigma > SIGMA_WARN and cfg.scale.name != "none":
            log.warning("sigma=%g: the noise std is %g times each block's activation scale, so the noise "
                        "dwarfs the activations (the paper used sigma <= 1)", sigma, sigma)
        if cfg.experiment.activation_std.n_sentences > cfg.data.n_sentences:
            log.warning("experiment.activation_std.n_sentences=%d exceeds data.n_sentences=%d: s_l is measured on "
                        "the %d corpus sentences", cfg.experiment.activation_std.n_sentences,
                        cfg.data.n_sentences, cfg.data.n_sentences)
    if cfg.data.min_words > cfg.data.max_words:
        raise MspgtError(f"data.min_words={cfg.data.min_words} > data.max_words={cfg.data.max_words}",
                         "set data.min_words <= data.max_words")


# -- file-system preflight ------------------------------------------------------------------------------
def check_folder(key: str, path: Path) -> None:
    why = writable_folder(path)
    if why is not None:
        raise MspgtError(f"{key}={path} cannot be written: {why}",
                         f"point {key} at a writable folder (e.g. `{key}=/tmp/mspgt`), or fix its permissions "
                         "or remove the file in its place")


def check_cache_folder(path: Path) -> bool:
    """True if the cache can be written. A read-only cache (a shared mount) is allowed: complete entries
    are read without a lock, and anything missing is a clear error before the model loads."""
    why = writable_folder(path)
    if why is None:
        return True
    if path.is_dir() and os.access(path, os.R_OK | os.X_OK):
        log.warning("paths.cache_dir=%s cannot be written (%s): reading complete cache entries only", path, why)
        return False
    raise MspgtError(f"paths.cache_dir={path} cannot be used: {why}",
                     "point paths.cache_dir (or MSPGT_CACHE_DIR) at a writable folder, e.g. "
                     "`paths.cache_dir=/tmp/mspgt-cache`, or remove the file in its place")


def check_corpus_files(cfg: DictConfig) -> None:
    """A local corpus exists and is what its source expects, before any model loads."""
    from mspgt.data.corpus import SOURCES, check_conllu_file, check_utf8

    data = cfg.data
    choose("data source", data.source, SOURCES, "data")
    if data.source not in ("text", "conllu"):
        return
    try:
        _, path_value = value_of(cfg, "data.path")
    except MspgtError:
        raise MspgtError(f"data={data.name} needs a corpus file, and data.path is not set",
                         "give it on the command line: `data.path=/path/to/corpus.txt`") from None
    if path_value in (None, ""):
        raise MspgtError(f"data={data.name} needs a corpus file: data.path is empty",
                         "give it on the command line: `data.path=/path/to/corpus`")
    path = Path(str(path_value))
    if data.source == "text":
        if not path.is_file():
            raise MspgtError(f"data.path={path} is not a file", "give an existing UTF-8 text file: data.path=...")
        check_utf8(path)
        return
    if not path.exists():
        raise MspgtError(f"data.path={path} does not exist",
                         "point data.path at a .conllu file or a folder of them (e.g. ../shared/data/ud-english-ewt)")
    files = sorted(path.glob("*.conllu")) if path.is_dir() else [path]
    if not files:
        raise MspgtError(f"no *.conllu files in {path}", "point data.path at CoNLL-U files")
    for f in files:
        check_conllu_file(f)


WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.pt", "*.pth")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_model_folder(model: DictConfig) -> None:
    """A local Hugging Face folder (model.local_path) holds a config, weights and a tokenizer, so a bad folder
    is named here, not by a sentencepiece or safetensors traceback after minutes. (The folder's content
    identity and the loading itself belong to mspgt/model/loading.py.)"""
    local = model.get("local_path") if model.get("source") == "hub" else None
    if not local:
        return
    folder = Path(str(local))
    if not folder.is_dir():
        raise MspgtError(f"model.local_path={folder} is not a folder",
                         "point model.local_path at a folder with config.json, the weights and the tokenizer")
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any(next(folder.glob(p), None) for p in WEIGHT_FILES):
        missing.append("weights (*.safetensors or pytorch_model*.bin)")
    if not model.get("tokenizer_path") and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        missing.append(f"a tokenizer (one of {', '.join(TOKENIZER_FILES)})")
    if missing:
        raise MspgtError(f"model.local_path={folder} is missing {'; '.join(missing)}",
                         "download the whole model folder (config, weights and tokenizer files) into "
                         "model.local_path, e.g. `huggingface-cli download <hub id> --local-dir <folder>`")
    check_block_count(folder / "config.json")


BLOCK_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")  # what configs call the number of blocks


def check_block_count(config_json: Path) -> None:
    """A config.json whose number of blocks is not a positive integer (`num_hidden_layers: 0` or -1): named
    here, not by transformers or the hooks later ("load it with eager attention", "cannot find the decoder
    blocks")."""
    try:
        config = json.loads(config_json.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MspgtError(f"{config_json} cannot be read as JSON ({err})",
                         "use the config.json that came with the weights") from None
    if not isinstance(config, dict):
        raise MspgtError(f"{config_json} is not a JSON object", "use the config.json that came with the weights")
    for where in (config, config.get("text_config")):  # multimodal configs keep the decoder's in text_config
        if not isinstance(where, dict):
            continue
        for key in BLOCK_COUNT_KEYS:
            n = where.get(key)
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise MspgtError(f"{config_json} says {key}={json.dumps(n)}: a model has at least one block",
                                 f"set {key} in {config_json} to the number of blocks its weights hold (the "
                                 "model.layers.<i>.* of its weight files), or use the config.json that came with them")


ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
MIN_PROBE_TRAIN_WORDS = 200  # below this a probe is noise and moves the fused evidence (warned, not refused)


def check_added_keys(cfg: DictConfig) -> None:
    """A key added with `+` (Hydra appends it instead of failing) that is a misspelling of a setting the group
    has (`+fusion.prominance=0.9`): refused, naming the setting meant. Other added keys are left alone
    (`+model.tiny.num_experts=8`, `+model.tiny.moe_intermediate_size=396` are read by the code)."""
    import difflib

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return
    for item in OmegaConf.select(HydraConfig.get(), "overrides.task", default=[]) or []:
        item = str(item)
        if not item.startswith("+") or item.startswith("++"):
            continue
        key = item[1:].split("=", 1)[0]
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not isinstance(node, DictConfig):
            continue
        if parent == "model.tiny":  # any transformers config field of the tiny model (tiny.py)
            continue
        siblings = [k for k in node if k != name and k not in name and name not in k]  # moe_intermediate_size: new
        close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.8)
        if close:
            meant = f"{parent}.{close[0]}" if parent else close[0]
            raise MspgtError(f"+{key} adds a new key that nothing reads; {meant} is the setting",
                             f"drop the `+`: `{meant}=...`")


def check_model_settings(cfg: DictConfig) -> None:
    """Model settings that need no download: the attention implementation and a tiny model's shape."""
    model = cfg.model
    attn = model.get("attn_implementation")
    if attn is not None and attn not in ATTN_IMPLEMENTATIONS:
        raise MspgtError(f"model.attn_implementation={attn!r} is not an attention implementation",
                         f"set model.attn_implementation=null (automatic) or one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if model.get("source") == "tiny_random":
        from omegaconf import OmegaConf

        from mspgt.model.tiny import check_tiny_shape

        check_tiny_shape(OmegaConf.to_container(model.tiny, resolve=True))
        positions = model.tiny.get("max_position_embeddings", 256)
        if int(cfg.data.max_tokens) > int(positions):
            raise MspgtError(f"data.max_tokens={cfg.data.max_tokens} is more than the tiny model's {positions} positions",
                             f"set data.max_tokens <= {positions} (or model.tiny.max_position_embeddings higher)")


def check_boundary_sizes(cfg: DictConfig) -> None:
    """Settings of the boundary experiment that run, but not as meant or not at all: the eq. 28 settings, a
    bootstrap whose resample table cannot fit in memory (refused before any work), too few probe words."""
    from mspgt.signals.information import InformationSettings

    InformationSettings.from_config(cfg.extraction.get("information"))
    n_groups = -(-int(cfg.data.n_sentences) // int(cfg.bootstrap.group_size))
    bootstrap_s = BOOTSTRAP_S_PER_RESAMPLE_GROUP * int(cfg.bootstrap.n_resamples) * n_groups
    if bootstrap_s > LONG_STEP_S:
        log.warning("bootstrap.n_resamples=%d over %d groups: the bootstrap alone takes about %s (measured: %s)",
                    cfg.bootstrap.n_resamples, n_groups, duration(bootstrap_s), TIMING_BASIS)
    need = 8 * 2 * int(cfg.bootstrap.n_resamples) * n_groups  # [B, G] int64 counts, drawn then kept
    available = available_memory()
    if available is not None and need > available:
        fits = max(1, available // (16 * n_groups))
        raise MspgtError(f"bootstrap.n_resamples={cfg.bootstrap.n_resamples} needs at least {need / 2**30:.1f} GiB "
                         f"for its resample table ({n_groups} groups), more than the {available / 2**30:.1f} GiB "
                         "available", f"use bootstrap.n_resamples <= {fits} (the paper's 1000 are plenty)")
    if need > 2**30:
        log.warning("bootstrap.n_resamples=%d: the resample table alone takes %.1f GiB", cfg.bootstrap.n_resamples,
                    need / 2**30)
    if cfg.fusion.signals.probe_jump:
        probe_s = PROBE_S_PER_EPOCH_WORD * int(cfg.probes.epochs) * int(cfg.probes.max_train_words) \
            * int(OmegaConf.select(cfg, "probes.n_seeds", default=1) or 1)
        if probe_s > LONG_STEP_S:
            log.warning("probes.epochs=%d on %d words: the probe training alone takes about %s (measured: %s; "
                        "the recipe is 6 epochs)", cfg.probes.epochs, cfg.probes.max_train_words, duration(probe_s),
                        TIMING_BASIS)
    if cfg.fusion.signals.probe_jump and int(cfg.probes.max_train_words) < MIN_PROBE_TRAIN_WORDS:
        log.warning("probes.max_train_words=%d: probes trained on fewer than %d words are noise and move the fused "
                    "evidence; the recipe uses 6000 (probes.max_train_words=6000)", cfg.probes.max_train_words,
                    MIN_PROBE_TRAIN_WORDS)


# Up-front time estimates of the steps whose cost a setting makes unbounded, from docs/performance.md (SmolLM2-135M,
# 2 cores: B = 1000 resamples of 125 groups in 0.3 s; 6 probe epochs on 6,000 words in 21.8 s). Larger models take
# longer: a lower bound, said before the work starts.
BOOTSTRAP_S_PER_RESAMPLE_GROUP = 0.3 / (1000 * 125)
PROBE_S_PER_EPOCH_WORD = 21.8 / (6 * 6000)
TIMING_BASIS = "SmolLM2-135M on 2 CPU cores, docs/performance.md; larger models take longer"
LONG_STEP_S = 600.0  # a step estimated to take longer than this is announced


def duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400 * 3:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.0f} days"


def available_memory() -> int | None:
    """Bytes of memory available now (MemAvailable), None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def validate_config(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Every check that needs no data or model. Returns what the preflight learned ({"cache_writable": ...})."""
    choose("experiment", cfg.experiment.name, EXPERIMENTS, "experiment")
    check_added_keys(cfg)
    for group in GROUPS:
        check_group(cfg, group)
    check_model_settings(cfg)
    check_experiment(cfg)
    if cfg.experiment.name == "boundary" or bool(cfg.experiment.get("run_boundary_first", False)):
        check_boundary_sizes(cfg)
    check_corpus_files(cfg)
    check_model_folder(cfg.model)
    check_folder("hydra.run.dir", run_dir)
    boundary_too = cfg.experiment.name == "boundary" or bool(cfg.experiment.get("run_boundary_first", False))
    if boundary_too:
        check_folder("paths.store_dir", Path(cfg.paths.store_dir))
    if not str(cfg.paths.cache_dir).strip():  # MSPGT_CACHE_DIR= (set, empty) would put the cache in the cwd
        raise MspgtError("paths.cache_dir is empty (MSPGT_CACHE_DIR is set to an empty value)",
                         "unset MSPGT_CACHE_DIR (the default is ~/.cache/mspgt) or set it to a folder")
    return {"cache_writable": check_cache_folder(Path(cfg.paths.cache_dir))}


__all__ = ["check_device", "validate_config", "writable_folder"]
