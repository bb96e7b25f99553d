"""What identifies a model's weights, known before the model is loaded: the key of cached statistics and of
the boundary store, so a replaced checkpoint never reuses another checkpoint's results.

- A local folder (`model.local_path`, and `model.tokenizer_path` when it is a folder): the sha256 of the
  list of its files with each file's sha256. The files are the folder's top-level regular files (weights,
  config.json, generation and tokenizer files), without hidden files and `*.md`; subfolders are not read.
- A GGUF file: its sha256.
- Speed: a file's sha256 is computed once and remembered under `<cache>/identity/` while its stat
  signature is unchanged (mspgt/identity.py, the one place for a file's identity).
- A hub id: `<id>@<revision>` (known before any download; set model.revision to a commit hash for an
  exact id, or download once and use model.local_path).
- A packaged GGUF: its configured sha256 (checked against the file when it loads). A tiny random model: its
  architecture and seed (its sizes are part of the cache key through the config).
- Under `control=random_init` (docs/controls.md): the source's id + `+control:random_init-seed<seed>`: the
  weights are the initialiser's, not the file's, so they never share a cache entry or stored boundary with
  the checkpoint (nor with another seed). Other controls leave the weights, and so this id, unchanged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig

from mspgt.controls import RANDOM_INIT, Control
from mspgt.errors import MspgtError
from mspgt.identity import file_sha256, memo_dir_for
from mspgt.model.checkpoint import check_local_folder
from mspgt.model.tiny import tiny_config_fields


def identity_files(folder: Path) -> list[Path]:
    """The files a folder's identity covers: top-level regular files, not hidden, not *.md."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() != ".md")


def folder_identity(folder: str | Path, cache_dir: str | Path) -> str:
    """`sha256:<hex>` of the folder's files and their digests (see the module doc)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MspgtError(f"{folder} is not a folder", "point model.local_path at a checkpoint folder")
    listing = [[p.name, file_sha256(p, memo_dir_for(cache_dir))] for p in identity_files(folder)]
    return "sha256:" + hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def model_identity(cfg: DictConfig, cache_dir: str | Path, control: Control | None = None) -> str:
    """The weights id of the model `cfg` (conf/model/*.yaml) describes under `control`, without loading it."""
    weights = source_identity(cfg, cache_dir)
    if control is not None and control.name == RANDOM_INIT:
        weights += f"+control:{control.key}"
    return weights


def source_identity(cfg: DictConfig, cache_dir: str | Path) -> str:
    """The weights id of the model source itself (its file, folder, hub id or tiny seed)."""
    source = cfg.source
    if source == "tiny_random":
        return tiny_identity(cfg)
    if source in ("gguf_package", "gguf_parts"):
        return str(cfg.sha256)
    if source == "gguf_file":
        if not cfg.get("path") or not Path(str(cfg.path)).expanduser().is_file():
            raise MspgtError(f"model.path={cfg.get('path')} is not a file",
                             "set model.path=/path/to/model.gguf (a GGUF file on disk)")
        return "sha256:" + file_sha256(Path(str(cfg.path)).expanduser(), memo_dir_for(cache_dir))
    if source != "hub":
        raise MspgtError(f"model.source={source!r} is unknown", "use hub, gguf_file, gguf_package, gguf_parts or tiny_random")
    if not cfg.get("local_path") and not cfg.get("hub_id"):
        raise MspgtError("the model has neither local_path nor hub_id",
                         "set model.local_path=/path/to/checkpoint (model=local) or model.hub_id=org/name (model=hub)")
    if cfg.get("local_path"):
        weights = folder_identity(check_local_folder(str(cfg.local_path)), cache_dir)
    else:  # known before any download; pin model.revision to a commit for an exact id
        weights = f"{cfg.hub_id}@{cfg.get('revision') or 'main'}"
    tokenizer = cfg.get("tokenizer_path")
    if tokenizer:  # a separate tokenizer folder (or hub id) is part of what the statistics depend on
        is_folder = Path(tokenizer).is_dir()
        weights += f"+tokenizer:{folder_identity(tokenizer, cache_dir) if is_folder else tokenizer}"
    return weights


def tiny_identity(cfg: DictConfig) -> str:
    """A tiny model's weights id: its architecture, seed and a digest of every config field that makes its weights
    (model.tiny as the architecture resolves it), so two shapes never share an id (or a cache entry)."""
    from omegaconf import OmegaConf

    tiny = OmegaConf.to_container(cfg.tiny, resolve=True)
    assert isinstance(tiny, dict)
    model_type, fields = tiny_config_fields(cfg.architecture, tiny, vocab_size=0)  # an unknown architecture fails here
    shape = hashlib.sha256(json.dumps([model_type, fields], sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"tiny-{cfg.architecture}-seed{cfg.seed}-{shape}"


def short_id(weights_id: str) -> str:
    """12 hex characters of a weights id, for file names."""
    return hashlib.sha256(weights_id.encode()).hexdigest()[:12]
