"""The boundary store: the latest boundary result per (model weights, data), read by experiment=intervention.

A result is stored under `paths.store_dir/boundary/<model name>__<weights>__<data key>.json`: <weights> is
12 hex characters of the weights id (mspgt/model/identity.py: for a local folder, a hash of its content),
so two checkpoints run under one model name never overwrite each other's result and a replaced checkpoint
finds none; the data key is a hash of the data settings that change which sentences are read and, for a
local corpus (data=text, data=conllu), of the corpus files' contents instead of their path: a result from
another corpus, or from an earlier version of an edited file, is never used. Under a control
(docs/controls.md) the name ends in `__<control key>` (`__shuffled_words-seed0`), and random_init's weights id
is its own: a control's boundaries never replace or stand in for the real model's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mspgt.controls import Control, control_from_record
from mspgt.errors import MspgtError
from mspgt.files import write_json_atomic
from mspgt.identity import files_sha256
from mspgt.model.identity import short_id
from mspgt.results import BoundaryResult

__all__ = ["boundary_path", "corpus_files", "data_identity", "data_key", "load_boundary", "save_boundary", "write_json_atomic"]

# Data settings that decide which sentences (and labels) a run sees.
DATA_IDENTITY_KEYS = (
    "source", "path", "hub_id", "hub_config", "split", "one_per_line",
    "n_sentences", "min_words", "max_words", "max_tokens", "seed", "labels",
)


def corpus_files(data_cfg: DictConfig) -> list[Path]:
    """The local files a data config reads (data=text: the file; data=conllu: the file or the folder's
    *.conllu), or [] for a packaged or hub corpus."""
    if data_cfg.get("source") not in ("text", "conllu") or OmegaConf.is_missing(data_cfg, "path"):
        return []
    path = Path(str(data_cfg.path))
    if data_cfg.source == "conllu" and path.is_dir():
        return sorted(path.glob("*.conllu"))
    return [path] if path.is_file() else []


def data_identity(data_cfg: DictConfig) -> dict[str, Any]:
    """The data settings that decide the sentences; a local corpus is identified by the SHA-256 of its
    files' contents (`content_sha256`, see mspgt/identity.py), not by its path."""
    d = OmegaConf.to_container(data_cfg, resolve=True)
    out = {k: d[k] for k in DATA_IDENTITY_KEYS if k in d}
    if d.get("source") in ("text", "conllu"):
        files = corpus_files(data_cfg)
        out.pop("path", None)
        out["content_sha256"] = files_sha256(files) if files else None
    return out


def data_key(data_cfg: DictConfig) -> str:
    """A short stable id of the data settings: `<name>-<8 hex>`."""
    blob = json.dumps(data_identity(data_cfg), sort_keys=True).encode()
    return f"{data_cfg.name}-{hashlib.sha256(blob).hexdigest()[:8]}"


def boundary_path(store_dir: str | Path, model_name: str, weights_id: str, data_cfg: DictConfig,
                  control: Control | None = None) -> Path:
    tail = f"__{control.key}" if control is not None and control.active else ""
    return Path(store_dir) / "boundary" / f"{model_name}__{short_id(weights_id)}__{data_key(data_cfg)}{tail}.json"


def save_boundary(store_dir: str | Path, model_name: str, data_cfg: DictConfig, result: BoundaryResult,
                  control: Control | None = None) -> Path:
    """Store `result` under its model name, its weights id (result.model["weights_id"]), the data and the control."""
    path = boundary_path(store_dir, model_name, result.model["weights_id"], data_cfg, control)
    write_json_atomic(path, result.to_json())
    return path


def load_boundary(store_dir: str | Path, model_name: str, weights_id: str, data_cfg: DictConfig,
                  control: Control | None = None) -> BoundaryResult:
    """The stored boundary result for these weights, data and control, or an error naming the command that
    makes it."""
    control = control or Control()
    path = boundary_path(store_dir, model_name, weights_id, data_cfg, control)
    if not path.exists():
        raise MspgtError(
            f"no stored boundary result for model={model_name} with these weights ({weights_id}), these "
            f"data settings and control={control.key} ({path})",
            f"run `python -m mspgt.run experiment=boundary model={model_name} data={data_cfg.name} "
            f"control={control.name}` with the same data settings first, set scale.layers=[first,last], or set "
            "experiment.run_boundary_first=true",
        )
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MspgtError(f"the stored boundary result {path} is corrupt ({err})",
                         "delete it and re-run the boundary experiment") from err
    model = result.get("model", {})
    if (model.get("name") != model_name or model.get("weights_id") != weights_id
            or result.get("data", {}).get("key") != data_key(data_cfg)
            or control_from_record(result.get("control")) != control):
        raise MspgtError(
            f"{path} holds a result for another model, corpus or control",
            "delete it and re-run the boundary experiment for this model, weights, data and control",
        )
    return BoundaryResult.from_json(result, str(path))  # an unknown schema version: an error naming it
