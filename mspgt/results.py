"""Typed result records of the three experiments, the one layout every writer and reader shares.

`BoundaryResult` (experiment=boundary: results.json and the boundary store), `InterventionResult`
(experiment=intervention: intervention.json) and `FisherResult` (experiment=fisher: fisher.json) are
dataclasses with one field per top-level key of their JSON file (the identifying ones required, the rest
defaulted, so a partial record, e.g. a planted test input, loads); `to_json()` gives the dict written to disk
(with `schema_version`), `from_json()` reads one back. Nested parts that only reports read stay plain dicts;
the boundaries are `BoundaryCI` records.

Schema versions (our definition): 1 = every file written before this module (no `schema_version` key; the
same layout, loadable); 2 = the current one. A file of any other version is an `MspgtError` naming it.
NaN policy: NaN and +-inf are written as null (strict JSON, mspgt/files.py `json_safe`); a reader gets None.
Summary keys: one flat scheme, `<boundary>_<field>` with the boundary's name lower-cased without the dash
(`li_layer`, `ig_ci_low`), used by the sweep return value and the W&B run summaries.

This module imports nothing from the rest of mspgt but the errors, so every layer can use it.
"""

from __future__ import annotations

import datetime
import os
import platform
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from mspgt.errors import MspgtError

SCHEMA_VERSION = 2
LEGACY_VERSION = 1  # files without a `schema_version` key (written before typed records): same layout
READABLE_VERSIONS = (LEGACY_VERSION, SCHEMA_VERSION)

NO_CONTROL = {"name": "none", "seed": None, "key": "none"}  # a result without controls (mspgt/controls.py)
BOUNDARY_FIELDS = ("layer", "relative", "ci_low", "ci_high", "width", "accepted", "n_missing", "n_undefined",
                   "n_relabelled")


def machine_info() -> dict[str, Any]:
    """Where and when a record is made: the OS, the CPU's model name (with AVX512-BF16 when the CPU has it),
    the CPUs this process may use, the memory, Python and torch versions, the UTC time. Read by
    mspgt/reports/tables.py to head every table with the machine that made it."""
    cpu, flags = platform.processor() or platform.machine(), ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        names = [ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")]
        cpu = names[0] if names else cpu
        flags = next((ln for ln in info.splitlines() if ln.startswith("flags")), "")
    except OSError:
        pass
    if "avx512_bf16" in flags.split():
        cpu += " (AVX512-BF16)"
    memory = None
    try:
        kib = next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
        memory = round(int(kib) / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"platform": platform.platform(), "cpu": cpu, "cpus": cpus, "memory_gib": memory,
            "python": platform.python_version(), "torch": torch,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def schema_version(record: dict[str, Any], source: str = "") -> int:
    """The schema version of a result dict; an MspgtError naming it when this code cannot read it."""
    version = record.get("schema_version", LEGACY_VERSION)
    if version not in READABLE_VERSIONS:
        where = f" {source}" if source else ""
        raise MspgtError(
            f"the result file{where} has schema_version={version!r}; this mspgt reads versions "
            f"{list(READABLE_VERSIONS)}",
            "re-run the experiment with this mspgt version, or read the file with the mspgt that wrote it",
        )
    return int(version)


def summary_key(boundary: str, name: str) -> str:
    """The flat summary key of a boundary's field: ('L-I', 'ci_low') -> 'li_ci_low'."""
    return f"{boundary.replace('-', '').lower()}_{name}"


def _check_experiment(record: dict[str, Any], experiment: str, source: str) -> None:
    if not isinstance(record, dict) or record.get("experiment") != experiment:
        got = record.get("experiment") if isinstance(record, dict) else type(record).__name__
        raise MspgtError(f"{source or 'the file'} is not an experiment={experiment} result (it says {got!r})",
                         f"point at the results of experiment={experiment}")
    schema_version(record, source)


def _from_dict(cls: type, record: dict[str, Any], source: str, converted: dict[str, Any]) -> Any:
    names = [f.name for f in fields(cls) if f.name != "schema_version"]
    required = [n for n in names if _required(cls, n) and n not in record and n not in converted]
    if required:
        raise MspgtError(f"{source or 'the result'} lacks {required} (schema version "
                         f"{schema_version(record, source)})", "re-run the experiment that wrote it")
    values = {n: converted[n] if n in converted else record[n] for n in names if n in record or n in converted}
    values.setdefault("machine", {})  # a file written before the field: no machine, not this one
    return cls(**values, schema_version=schema_version(record, source))


def _required(cls: type, name: str) -> bool:
    f = cls.__dataclass_fields__[name]
    return f.default is MISSING and f.default_factory is MISSING


@dataclass
class BoundaryCI:
    """One boundary: point estimate, percentile CI over resamples, acceptance, selection frequencies."""

    layer: int | None  # point estimate (1-based block), None: no such peak on the full data
    relative: float | None  # layer / L
    ci_low: int | None  # None: no resample found the boundary
    ci_high: int | None
    width: int | None  # ci_high - ci_low, in layers
    accepted: bool
    selection_frequency: dict[int, int] = field(default_factory=dict)  # layer -> resamples choosing it
    n_missing: int = 0  # resamples with finite evidence but no such peak
    n_resamples: int = 0
    ci_level: float = 0.95
    n_undefined: int = 0  # resamples whose evidence was NaN/inf (no peak could be looked for)
    undefined_signals: dict[str, int] = field(default_factory=dict)  # signal -> resamples where it was NaN/inf
    n_relabelled: int = 0  # resamples where matching to the point estimate changed this boundary's layer
    # [B] the layer chosen in each resample (<= 0: none), in resample order: what the rival curves' distances
    # to this boundary pair with (fusion/rival_transitions.py); not written to results.json
    chosen: Any = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "chosen"}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BoundaryCI:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["selection_frequency"] = {int(k): int(v) for k, v in (d.get("selection_frequency") or {}).items()}
        for k in ("layer", "relative", "ci_low", "ci_high", "width", "accepted"):
            values.setdefault(k, None if k != "accepted" else False)
        return cls(**values)


@dataclass
class BoundaryResult:
    """experiment=boundary (paper 4.1): results.json, and the boundary store's entry."""

    model: dict[str, Any]  # name, family, n_blocks, weights_id
    data: dict[str, Any]  # name, key, the data identity, n_sentences, n_groups, group_size, grouping
    boundaries: dict[str, BoundaryCI]  # "L-I", "I-G"
    control: dict[str, Any] = field(default_factory=lambda: dict(NO_CONTROL))  # name, seed, key (docs/controls.md)
    found_two_peaks: bool = False
    peaks: dict[str, Any] = field(default_factory=dict)  # layers, prominences
    # the interior detection where a boundary is at block 1 or L (fusion/edge_check.py; None: none is, or older)
    edge_check: dict[str, Any] | None = None
    scales: dict[str, Any] | None = None  # scale -> blocks (None: fewer than two peaks)
    layers: list[int] = field(default_factory=list)  # 1..L
    signals: dict[str, list[float | None]] = field(default_factory=dict)  # signal -> S(l), l = 1..L
    evidence: list[float | None] = field(default_factory=list)  # fused E(l)
    probe_sample: dict[str, Any] | None = None
    probe_f1_by_state: list[float | None] | None = None  # F(l) for h_0..h_L
    probe_selectivity_pos: list[float | None] | None = None
    probe_tasks: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    information: dict[str, Any] | None = None  # curves with bootstrap bands, the eq. 28 test
    rivals: dict[str, Any] | None = None  # rival layer curves, transitions, agreement (fusion/rival_transitions.py)
    activation_std_all_tokens: list[float | None] | None = None  # h_0..h_L, position 0 included
    timings: dict[str, float] = field(default_factory=dict)
    cache_dir: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=machine_info)  # a record read back keeps its own ({}: older)
    experiment: str = "boundary"
    schema_version: int = SCHEMA_VERSION

    @property
    def name(self) -> str:
        return str(self.model.get("name"))

    @property
    def family(self) -> str:
        return str(self.model.get("family"))

    @property
    def n_blocks(self) -> int:
        return int(self.model.get("n_blocks") or 0)

    def layer(self, boundary: str) -> int | None:
        b = self.boundaries.get(boundary)
        return None if b is None else b.layer

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "experiment": self.experiment}
        for f in fields(self):
            if f.name in ("schema_version", "experiment"):
                continue
            value = getattr(self, f.name)
            out[f.name] = {k: b.as_dict() for k, b in value.items()} if f.name == "boundaries" else value
        return out

    @classmethod
    def from_json(cls, record: dict[str, Any], source: str = "") -> BoundaryResult:
        _check_experiment(record, "boundary", source)
        bounds = {k: BoundaryCI.from_json(v or {}) for k, v in (record.get("boundaries") or {}).items()}
        return _from_dict(cls, record, source, {"boundaries": bounds})

    def flat_summary(self) -> dict[str, Any]:
        """The sweep's return value: model, blocks and every boundary field under `summary_key`."""
        out: dict[str, Any] = {"model": self.name, "n_blocks": self.model["n_blocks"],
                               "control": self.control.get("key", "none")}
        for name, b in self.boundaries.items():
            out.update({summary_key(name, k): getattr(b, k) for k in BOUNDARY_FIELDS})
        return out


@dataclass
class InterventionResult:
    """experiment=intervention (paper 4.2): intervention.json."""

    model: dict[str, Any]  # name, family, n_blocks, weights_id
    data: dict[str, Any]  # key and the data identity
    scale: dict[str, Any]  # name, blocks, first_last, source, boundary
    control: dict[str, Any] = field(default_factory=lambda: dict(NO_CONTROL))  # name, seed, key
    sigma: float | None = None  # None for scale=none
    sigma_setting: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # metric -> paired comparison
    brittleness: dict[str, Any] = field(default_factory=dict)  # value, metrics, definition, null
    per_prompt: dict[str, Any] = field(default_factory=dict)  # n_prompts, clean / noised -> metric -> values
    noise: dict[str, Any] = field(default_factory=dict)
    activation_std: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    pairing: dict[str, Any] = field(default_factory=dict)
    alpha: float = 0.05
    test: str = ""
    power: dict[str, Any] = field(default_factory=dict)  # the design's sensitivity (interventions/power.py)
    grammar: dict[str, Any] = field(default_factory=dict)
    sbert: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    device: str = ""
    torch_threads: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=machine_info)  # a record read back keeps its own ({}: older)
    experiment: str = "intervention"
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return _plain_record_json(self)

    @classmethod
    def from_json(cls, record: dict[str, Any], source: str = "") -> InterventionResult:
        _check_experiment(record, "intervention", source)
        return _from_dict(cls, record, source, {})


def _plain_record_json(record: InterventionResult | FisherResult) -> dict[str, Any]:
    """A record whose fields are already JSON values: the schema version first, then every field."""
    out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    out.update({f.name: getattr(record, f.name) for f in fields(record) if f.name != "schema_version"})
    return out


@dataclass
class FisherResult:
    """experiment=fisher (appendix A.5): fisher.json."""

    model: dict[str, Any]
    data: dict[str, Any]
    scales: dict[str, Any]  # scale -> blocks, predicted coefficient, KL per sigma, fits, holds
    verdict: dict[str, Any]  # value, band, sigma, rule
    control: dict[str, Any] = field(default_factory=lambda: dict(NO_CONTROL))  # name, seed, key
    heldout: dict[str, Any] = field(default_factory=dict)
    fisher: dict[str, Any] = field(default_factory=dict)
    activation_std: dict[str, Any] = field(default_factory=dict)
    sigmas: list[float] = field(default_factory=list)
    draws: int = 0
    boundary: dict[str, Any] | None = None
    definitions: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    device: str = ""
    torch_threads: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=machine_info)  # a record read back keeps its own ({}: older)
    experiment: str = "fisher"
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return _plain_record_json(self)

    @classmethod
    def from_json(cls, record: dict[str, Any], source: str = "") -> FisherResult:
        _check_experiment(record, "fisher", source)
        return _from_dict(cls, record, source, {})


__all__ = ["BOUNDARY_FIELDS", "SCHEMA_VERSION", "BoundaryCI", "BoundaryResult", "FisherResult",
           "InterventionResult", "machine_info", "schema_version", "summary_key"]
