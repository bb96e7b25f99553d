"""One validation step for every setting, run by mspgt/run.py before any data or model is touched.

Three parts, in order:
1. `RULES`: every scalar setting of every group with its type and range (our table; it mirrors conf/);
2. the cross-group checks of each experiment (fusion weights, probe tasks, scale names, ...);
3. the file-system preflight: the corpus exists and is UTF-8 text or CoNLL-U, a local model folder holds a
   config, weights and a tokenizer, and the run, cache and store folders can be written (a store that cannot be written would otherwise fail after all the work).
Each failure is an `MspgtError` naming the setting and the fix; warnings (a setting that runs, but
probably not as meant) go to the log.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from mspgt.errors import MspgtError, choose
from mspgt.files import writable_folder

log = logging.getLogger(__name__)

EXPERIMENTS = ("boundary", "intervention", "fisher")
TRACKING_MODES = ("offline", "online", "disabled")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
NONNEG = ">= 0 (not negative)"
SIGMA_WARN = 10.0  # noise std above 10x the activation scale drowns the signal (our threshold)


@dataclass(frozen=True)
class Rule:
    """A setting: its type (`int`, `number`, `bool`, `str`, `choice`, `device`) and an optional range."""

    key: str
    kind: str
    ok: Callable[[Any], bool] | None = None
    need: str = ""
    example: str = ""
    choices: tuple[str, ...] = ()
    auto: bool = False  # the value `auto` is allowed too (sized at run time)


def _ge(n: float) -> Callable[[Any], bool]:
    return lambda v: v >= n


def _in_open(lo: float, hi: float) -> Callable[[Any], bool]:
    return lambda v: lo < v < hi


def _rules() -> list[Rule]:
    from mspgt.extraction.groups import GROUPINGS
    from mspgt.fusion.bootstrap import BOOTSTRAP_RANGES
    from mspgt.fusion.peaks import PROMINENCE_RANGE
    from mspgt.interventions.activation_scale import STD_KINDS
    from mspgt.interventions.grammar import BACKENDS
    from mspgt.signals.attention_drift import FIRST_BLOCK_CHOICES
    from mspgt.signals.probes import F1_AVERAGES, PRECISIONS, SCHEDULES

    pos, nonneg = _ge(1), _ge(0)
    return [
        Rule("seed", "int", example="0"),
        Rule("sigma", "number", nonneg, NONNEG, "0.5"),
        Rule("data.n_sentences", "int", pos, ">= 1", "1000"),
        Rule("data.min_words", "int", pos, ">= 1", "5"),
        Rule("data.max_words", "int", pos, ">= 1", "40"),
        Rule("data.max_tokens", "int", _ge(2), ">= 2", "64"),
        Rule("data.seed", "int", example="0"),
        Rule("data.labels", "choice", choices=("silver", "gold")),
        Rule("data.one_per_line", "bool"),
        Rule("model.device", "device"),
        Rule("extraction.batch_size", "int", pos, ">= 1", "32", auto=True),  # auto: mspgt/model/sizing.py
        Rule("extraction.call_overhead_tokens", "int", nonneg, NONNEG, "64", auto=True),  # auto: sizing.py
        Rule("extraction.chunk_groups", "int", pos, ">= 1", "16"),
        Rule("extraction.cache", "bool"),
        Rule("extraction.progress", "bool"),
        Rule("extraction.sleep_per_batch_s", "number", nonneg, NONNEG, "0"),
        Rule("extraction.lock_timeout_s", "number", _ge(0), ">= 0", "21600"),
        Rule("extraction.variants", "choice", choices=("selected", "all")),
        Rule("probes.hidden", "int", pos, ">= 1", "128"),
        Rule("probes.eval_fraction", "number", _in_open(0, 1), "in (0, 1)", "0.3"),
        Rule("probes.max_train_words", "int", pos, ">= 1", "6000"),
        Rule("probes.max_eval_words", "int", pos, ">= 1", "2500"),
        Rule("probes.epochs", "int", pos, ">= 1", "30"),
        Rule("probes.batch_size", "int", pos, ">= 1", "512"),
        Rule("probes.lr", "number", lambda v: v > 0, "> 0", "0.001"),
        Rule("probes.weight_decay", "number", nonneg, NONNEG, "0.0001"),
        Rule("probes.f1_average", "choice", choices=F1_AVERAGES),
        Rule("probes.schedule", "choice", choices=SCHEDULES),
        Rule("probes.precision", "choice", choices=PRECISIONS),
        Rule("probes.control_task", "bool"),
        Rule("probes.seed", "int", example="0"),
        Rule("probes.device", "device"),
        *(Rule(f"fusion.weights.{k}", "number", nonneg, NONNEG, "1.0")
          for k in ("representation_change", "probe_jump", "attention_drift")),
        *(Rule(f"fusion.signals.{k}", "bool") for k in ("representation_change", "probe_jump", "attention_drift")),
        Rule("fusion.prominence", "number", *PROMINENCE_RANGE, "0.3"),
        Rule("fusion.cka.exclude_first_position", "bool"),
        Rule("fusion.cka.standardise", "bool"),
        Rule("fusion.attention.drop_sink", "bool"),
        Rule("fusion.attention.first_block", "choice", choices=FIRST_BLOCK_CHOICES),
        Rule("bootstrap.n_resamples", "int", *BOOTSTRAP_RANGES["n_resamples"], "1000"),
        Rule("bootstrap.ci_level", "number", *BOOTSTRAP_RANGES["ci_level"], "0.95"),
        Rule("bootstrap.acceptance_width", "number", *BOOTSTRAP_RANGES["acceptance_width"], "5"),
        Rule("bootstrap.max_missing_fraction", "number", *BOOTSTRAP_RANGES["max_missing_fraction"], "0.05"),
        Rule("bootstrap.group_size", "int", *BOOTSTRAP_RANGES["group_size"], "16"),
        Rule("bootstrap.grouping", "choice", choices=GROUPINGS),
        Rule("bootstrap.grouping_seed", "int", example="0"),
        Rule("bootstrap.seed", "int", example="0"),
        Rule("experiment.alpha", "number", _in_open(0, 1), "in (0, 1)", "0.05"),
        Rule("experiment.run_boundary_first", "bool"),
        Rule("experiment.activation_std.n_sentences", "int", pos, ">= 1", "128"),
        Rule("experiment.activation_std.batch_size", "int", pos, ">= 1", "16"),
        Rule("experiment.activation_std.kind", "choice", choices=STD_KINDS),
        Rule("experiment.activation_std.exclude_first_token", "bool"),
        Rule("generation.n_prompts", "int", _ge(2), ">= 2", "100"),
        Rule("generation.samples_per_prompt", "int", _ge(2), ">= 2", "4"),
        Rule("generation.prompt_words", "int", pos, ">= 1", "12"),
        Rule("generation.max_new_tokens", "int", pos, ">= 1", "48"),
        Rule("generation.min_new_tokens", "int", nonneg, NONNEG, "0"),
        Rule("generation.temperature", "number", lambda v: v > 0, "> 0", "0.8"),
        Rule("generation.top_p", "number", lambda v: 0 < v <= 1, "in (0, 1]", "0.95"),
        Rule("generation.top_k", "int", nonneg, NONNEG, "0"),
        Rule("generation.batch_size", "int", pos, ">= 1", "32"),
        Rule("generation.seed", "int", example="0"),
        Rule("generation.noise_seed", "int", example="1234"),
        Rule("metrics.grammar.backend", "choice", choices=BACKENDS),
        Rule("metrics.grammar.languagetool_timeout_s", "number", lambda v: v > 0, "> 0", "10"),
        Rule("tracking.mode", "choice", choices=TRACKING_MODES),
        Rule("tracking.project", "str", example="mspgt"),
    ]


def _value(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    """(present, value) of a dotted setting; an unset mandatory value (`???`) is an error naming it."""
    try:
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
    except MissingMandatoryValue:
        raise MspgtError(f"{key} is not set", f"give it on the command line: `{key}=...`") from None
    except Exception as err:  # an interpolation that cannot be resolved (${oc.env:...})
        raise MspgtError(f"{key} cannot be resolved: {err}", f"set {key} explicitly: `{key}=...`") from None
    return value is not _ABSENT, value


_ABSENT = object()


def check_rule(cfg: DictConfig, rule: Rule) -> None:
    present, v = _value(cfg, rule.key)
    if not present:
        return
    key, example = rule.key, rule.example
    if rule.auto and v == "auto":
        return
    if rule.kind == "choice":
        if v not in rule.choices:
            raise MspgtError(f"{key}={v!r} is not one of {list(rule.choices)}",
                             f"set `{key}={rule.choices[0]}` (choices: {', '.join(rule.choices)})")
        return
    if rule.kind == "device":
        check_device(key, v)
        return
    types = {"int": (int,), "number": (int, float), "bool": (bool,), "str": (str,)}[rule.kind]
    wrong_type = not isinstance(v, types) or (rule.kind in ("int", "number") and isinstance(v, bool))
    if not wrong_type and rule.kind == "number" and not math.isfinite(v):
        wrong_type = True
    if wrong_type:
        what = {"int": "an integer", "number": "a finite number", "bool": "true or false", "str": "a string"}
        hint = f"e.g. `{key}={example}`" if example else f"e.g. `{key}=true`" if rule.kind == "bool" else ""
        raise MspgtError(f"{key}={v!r} is not {what[rule.kind]}", f"set {key} to {what[rule.kind]} {hint}".strip())
    if rule.ok is not None and not rule.ok(v):
        raise MspgtError(f"{key}={v!r} is out of range: it must be {rule.need}",
                         f"set {key} {rule.need}, e.g. `{key}={example}`")


def check_device(key: str, value: Any) -> None:
    """`auto`, `cpu`, `cuda`, `cuda:N` or `mps`; CUDA only where it is available (named by its own key)."""
    if not isinstance(value, str) or not DEVICE_PATTERN.match(value):
        raise MspgtError(f"{key}={value!r} is not a device", f"set {key} to auto, cpu or cuda")
    if value.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise MspgtError(f"{key}={value} but CUDA is not available here", f"set {key}=auto or {key}=cpu")
        index = int(value.split(":")[1]) if ":" in value else 0
        if index >= torch.cuda.device_count():
            raise MspgtError(f"{key}={value} but this machine has {torch.cuda.device_count()} CUDA device(s)",
                             f"set {key}=cuda:0 or {key}=auto")


# -- cross-group checks ---------------------------------------------------------------------------------
def check_experiment(cfg: DictConfig) -> None:
    """The checks each experiment already owns (they need no data or model), run here before anything."""
    name = cfg.experiment.name
    boundary_too = name == "boundary" or bool(cfg.experiment.get("run_boundary_first", False))
    if boundary_too:
        from mspgt.experiments.boundary import validate_boundary_config

        validate_boundary_config(cfg)
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
        _, path_value = _value(cfg, "data.path")
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


def validate_config(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Every check that needs no data or model. Returns what the preflight learned ({"cache_writable": ...})."""
    choose("experiment", cfg.experiment.name, EXPERIMENTS, "experiment")
    for rule in _rules():
        check_rule(cfg, rule)
    check_experiment(cfg)
    check_corpus_files(cfg)
    check_model_folder(cfg.model)
    check_folder("hydra.run.dir", run_dir)
    boundary_too = cfg.experiment.name == "boundary" or bool(cfg.experiment.get("run_boundary_first", False))
    if boundary_too:
        check_folder("paths.store_dir", Path(cfg.paths.store_dir))
    return {"cache_writable": check_cache_folder(Path(cfg.paths.cache_dir))}


__all__ = ["Rule", "check_device", "validate_config", "writable_folder"]
