"""The typed schema of the configuration: one dataclass per config group, each field with its type and range.

conf/<group>/*.yaml holds the values (and says what each means); the dataclass here holds what a value may
be, once: its type from the annotation (`int`, `float`, `bool`, `str`; `int | Auto` where `auto` is allowed
and sized at run time) and its range or choices from `setting(...)`. `settings(cfg, Group)` checks every
key of one group that the composed config holds and returns the typed object a step reads
(`settings(cfg, BootstrapSettings).n_resamples`, an int), or raises the `MspgtError` that names the key and
the fix, before any data or model is touched (mspgt/config_validation.py runs them all first).

Choices that belong to the code using them (probe schedules, grammar backends, ...) are named here as
`module:CONSTANT` and read from that module when checked, so this file never imports torch.
A key a group file does not have is not checked (experiment files add groups; other keys may be added).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from mspgt.errors import MspgtError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
NONNEG = ">= 0 (not negative)"
TRACKING_MODES = ("offline", "online", "disabled")


class Auto(str):
    """The annotation `int | Auto`: the value `auto` is allowed too (sized at run time)."""


class Device(str):
    """`auto`, `cpu`, `cuda`, `cuda:N` or `mps`; CUDA only where it is available."""


class Choice(str):
    """One of the field's `choices`."""


def setting(ok: Callable[[Any], bool] | None = None, need: str = "", example: str = "",
            choices: tuple[str, ...] | str = ()) -> Any:
    """A field's range (`ok`, said as `need`), an example value for messages, or its choices (a tuple, or
    `"module:CONSTANT"` read from the code that owns them)."""
    return field(metadata={"ok": ok, "need": need, "example": example, "choices": choices})


def _ge(n: float) -> Callable[[Any], bool]:
    return lambda v: v >= n


def _in_open(lo: float, hi: float) -> Callable[[Any], bool]:
    return lambda v: lo < v < hi


def _positive(example: str) -> Any:
    return setting(_ge(1), ">= 1", example)


def _nonneg(example: str) -> Any:
    return setting(_ge(0), NONNEG, example)


SEED_RANGE = (lambda v: 0 <= v < 2**32, ">= 0 and < 2**32 (numpy and torch seeds)")


def _seed() -> Any:
    """A random seed: what numpy's and torch's generators accept."""
    return setting(*SEED_RANGE, "0")


def _bootstrap(key: str, example: str) -> Any:
    """A bootstrap range from mspgt/fusion/bootstrap.py (the code's own check uses the same table)."""
    from mspgt.fusion.bootstrap import BOOTSTRAP_RANGES

    ok, need = BOOTSTRAP_RANGES[key]
    return setting(ok, need, example)


def _prominence() -> Any:
    from mspgt.fusion.peaks import PROMINENCE_RANGE

    return setting(*PROMINENCE_RANGE, "0.3")


# -- the groups ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RootSettings:
    """The top-level keys (conf/config.yaml)."""

    seed: int = _seed()
    sigma: float = _nonneg("0.5")


@dataclass(frozen=True)
class DataSettings:
    """conf/data/*.yaml: which sentences (mspgt/data/)."""

    n_sentences: int = _positive("1000")
    min_words: int = _positive("5")
    max_words: int = _positive("40")
    max_tokens: int = setting(_ge(2), ">= 2", "64")
    seed: int = _seed()
    labels: Choice = setting(choices=("silver", "gold"))
    one_per_line: bool = setting()


@dataclass(frozen=True)
class ModelSettings:
    """conf/model/*.yaml: the checked keys (the rest describe where the weights come from)."""

    device: Device = setting()


@dataclass(frozen=True)
class ExtractionSettings:
    """conf/extraction/default.yaml: the one pass over the corpus (mspgt/extraction/)."""

    batch_size: int | Auto = _positive("32")  # auto: mspgt/model/sizing.py
    call_overhead_tokens: int | Auto = _nonneg("64")  # auto: mspgt/model/sizing.py
    chunk_groups: int = _positive("16")
    cache: bool = setting()
    progress: bool = setting()
    sleep_per_batch_s: float = _nonneg("0")
    lock_timeout_s: float = setting(_ge(0), ">= 0", "21600")
    variants: Choice = setting(choices=("selected", "all"))


@dataclass(frozen=True)
class ProbeSettings:
    """conf/probes/default.yaml: the probe training recipe (mspgt/signals/probes.py)."""

    hidden: int = _positive("128")
    eval_fraction: float = setting(_in_open(0, 1), "in (0, 1)", "0.3")
    max_train_words: int = _positive("6000")
    max_eval_words: int = _positive("2500")
    epochs: int = _positive("30")
    batch_size: int = _positive("512")
    lr: float = setting(lambda v: v > 0, "> 0", "0.001")
    weight_decay: float = _nonneg("0.0001")
    f1_average: Choice = setting(choices="mspgt.signals.probes:F1_AVERAGES")
    schedule: Choice = setting(choices="mspgt.signals.probes:SCHEDULES")
    precision: Choice = setting(choices="mspgt.signals.probes:PRECISIONS")
    control_task: bool = setting()
    seed: int = _seed()
    train_seed: int = _seed()
    n_seeds: int = _positive("1")
    steady_malloc: bool = setting()
    device: Device = setting()


SIGNALS = ("representation_change", "probe_jump", "attention_drift")


@dataclass(frozen=True)
class FusionWeights:
    representation_change: float = _nonneg("1.0")
    probe_jump: float = _nonneg("1.0")
    attention_drift: float = _nonneg("1.0")


@dataclass(frozen=True)
class FusionSignals:
    representation_change: bool = setting()
    probe_jump: bool = setting()
    attention_drift: bool = setting()


@dataclass(frozen=True)
class CkaVariant:
    exclude_first_position: bool = setting()
    standardise: bool = setting()


@dataclass(frozen=True)
class AttentionVariant:
    drop_sink: bool = setting()
    first_block: Choice = setting(choices="mspgt.signals.attention_drift:FIRST_BLOCK_CHOICES")


@dataclass(frozen=True)
class FusionSettings:
    """conf/fusion/default.yaml, with the `weights` and `variants` groups that write into `fusion`."""

    weights: FusionWeights = setting()
    signals: FusionSignals = setting()
    prominence: float = _prominence()
    edges: Choice = setting(choices="mspgt.fusion.peaks:EDGE_CHOICES")
    cka: CkaVariant = setting()
    attention: AttentionVariant = setting()


@dataclass(frozen=True)
class BootstrapSettings:
    """conf/bootstrap/default.yaml: the group bootstrap (mspgt/fusion/bootstrap.py)."""

    n_resamples: int = _bootstrap("n_resamples", "1000")
    ci_level: float = _bootstrap("ci_level", "0.95")
    acceptance_width: float = _bootstrap("acceptance_width", "5")
    max_missing_fraction: float = _bootstrap("max_missing_fraction", "0.05")
    group_size: int = _bootstrap("group_size", "16")
    grouping: Choice = setting(choices="mspgt.extraction.groups:GROUPINGS")
    grouping_seed: int = _seed()
    seed: int = _seed()


@dataclass(frozen=True)
class ActivationStdSettings:
    n_sentences: int = _positive("128")
    batch_size: int = _positive("16")
    kind: Choice = setting(choices="mspgt.interventions.activation_scale:STD_KINDS")
    exclude_first_token: bool = setting()


@dataclass(frozen=True)
class ExperimentSettings:
    """conf/experiment/*.yaml: the keys the experiments share."""

    alpha: float = setting(_in_open(0, 1), "in (0, 1)", "0.05")
    run_boundary_first: bool = setting()
    activation_std: ActivationStdSettings = setting()


@dataclass(frozen=True)
class GenerationSettings:
    """conf/generation/default.yaml: sampling for experiment=intervention."""

    n_prompts: int = setting(_ge(2), ">= 2", "100")
    samples_per_prompt: int = setting(_ge(2), ">= 2", "4")
    prompt_words: int = _positive("12")
    max_new_tokens: int = _positive("48")
    min_new_tokens: int = _nonneg("0")
    temperature: float = setting(lambda v: v > 0, "> 0", "0.8")
    top_p: float = setting(lambda v: 0 < v <= 1, "in (0, 1]", "0.95")
    top_k: int = _nonneg("0")
    batch_size: int = _positive("32")
    seed: int = _seed()
    noise_seed: int = _seed()
    reuse_clean: bool = setting()


@dataclass(frozen=True)
class GrammarSettings:
    backend: Choice = setting(choices="mspgt.interventions.grammar:BACKENDS")
    languagetool_timeout_s: float = setting(lambda v: v > 0, "> 0", "10")


@dataclass(frozen=True)
class BrittlenessSettings:
    null_permutations: int = _positive("2000")
    null_seed: int = _seed()


@dataclass(frozen=True)
class MetricSettings:
    """conf/metrics/default.yaml: the checked keys."""

    grammar: GrammarSettings = setting()
    brittleness: BrittlenessSettings = setting()


@dataclass(frozen=True)
class ControlSettings:
    """conf/control/*.yaml: the control a run applies (mspgt/controls.py, docs/controls.md)."""

    name: Choice = setting(choices="mspgt.controls:CONTROLS")
    seed: int = _seed()


@dataclass(frozen=True)
class TrackingSettings:
    """conf/tracking/wandb.yaml."""

    mode: Choice = setting(choices=TRACKING_MODES)
    project: str = setting(example="mspgt")


# group key in the composed config -> its schema ("" : the top level)
GROUPS: dict[str, type] = {
    "": RootSettings, "data": DataSettings, "model": ModelSettings, "extraction": ExtractionSettings,
    "probes": ProbeSettings, "fusion": FusionSettings, "bootstrap": BootstrapSettings,
    "experiment": ExperimentSettings, "generation": GenerationSettings, "metrics": MetricSettings,
    "tracking": TrackingSettings, "control": ControlSettings,
}


# -- checking ----------------------------------------------------------------------------------------------
_ABSENT = object()
WHAT = {"int": "an integer", "number": "a finite number", "bool": "true or false", "str": "a string"}


def value_of(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    """(present, value) of a dotted setting; an unset mandatory value (`???`) is an error naming it."""
    try:
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
    except MissingMandatoryValue:
        raise MspgtError(f"{key} is not set", f"give it on the command line: `{key}=...`") from None
    except Exception as err:  # an interpolation that cannot be resolved (${oc.env:...})
        raise MspgtError(f"{key} cannot be resolved: {err}", f"set {key} explicitly: `{key}=...`") from None
    return value is not _ABSENT, value


def _choices(spec: tuple[str, ...] | str) -> tuple[str, ...]:
    if isinstance(spec, str):
        module, name = spec.split(":")
        return tuple(getattr(importlib.import_module(module), name))
    return spec


def check_value(key: str, kind: Any, v: Any, meta: dict[str, Any]) -> None:
    """One value against its annotation and range; the error names the key and a value that works."""
    example = meta["example"]
    auto = False
    if getattr(kind, "__args__", None):  # int | Auto
        auto = Auto in kind.__args__
        kind = next(k for k in kind.__args__ if k is not Auto)
    if auto and v == "auto":
        return
    if kind is Choice:
        choices = _choices(meta["choices"])
        if v not in choices:
            raise MspgtError(f"{key}={v!r} is not one of {list(choices)}",
                             f"set `{key}={choices[0]}` (choices: {', '.join(choices)})")
        return
    if kind is Device:
        check_device(key, v)
        return
    name = {int: "int", float: "number", bool: "bool", str: "str"}[kind]
    types = {"int": (int,), "number": (int, float), "bool": (bool,), "str": (str,)}[name]
    wrong = not isinstance(v, types) or (name in ("int", "number") and isinstance(v, bool))
    if not wrong and name == "number" and not math.isfinite(v):
        wrong = True
    if wrong:
        hint = f"e.g. `{key}={example}`" if example else f"e.g. `{key}=true`" if name == "bool" else ""
        raise MspgtError(f"{key}={v!r} is not {WHAT[name]}", f"set {key} to {WHAT[name]} {hint}".strip())
    if meta["ok"] is not None and not meta["ok"](v):
        raise MspgtError(f"{key}={v!r} is out of range: it must be {meta['need']}",
                         f"set {key} {meta['need']}, e.g. `{key}={example}`")


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


def _check(cfg: DictConfig, prefix: str, schema: type) -> dict[str, Any]:
    """Check every field of `schema` that `cfg` holds under `prefix`; the present values, typed."""
    hints = get_type_hints(schema, globals())
    out: dict[str, Any] = {}
    for f in fields(schema):
        key = f"{prefix}.{f.name}" if prefix else f.name
        kind = hints[f.name]
        if isinstance(kind, type) and hasattr(kind, "__dataclass_fields__"):
            present, _ = value_of(cfg, key)
            if present:
                out[f.name] = _check(cfg, key, kind)
            continue
        present, v = value_of(cfg, key)
        if present:
            check_value(key, kind, v, dict(f.metadata))
            out[f.name] = v
    return out


def check_group(cfg: DictConfig, group: str) -> None:
    """Every key of one group (GROUPS) that the composed config holds."""
    _check(cfg, group, GROUPS[group])


def settings(cfg: DictConfig, schema: type) -> Any:
    """The typed settings of one group (or sub-group), checked: e.g. `settings(cfg.bootstrap,
    BootstrapSettings)`. Every field must be set (the composed config always has them)."""
    values = _check(cfg, "", schema)
    hints = get_type_hints(schema, globals())
    missing = [f.name for f in fields(schema) if f.name not in values]
    if missing:
        raise MspgtError(f"{schema.__name__}: {', '.join(missing)} not set", "set them in the config group")
    return schema(**{k: settings(OmegaConf.select(cfg, k), hints[k]) if hasattr(hints[k], "__dataclass_fields__")
                     else v for k, v in values.items()})


__all__ = ["GROUPS", "check_device", "check_group", "settings", "value_of"]
