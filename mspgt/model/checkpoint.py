"""Load a Hugging Face checkpoint from a local folder or a hub id, with every failure turned into an error
that names the fix (a missing folder, no config.json, no tokenizer files, an architecture this
transformers does not know, a truncated weight file, no network for a hub id)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from mspgt.errors import MspgtError

log = logging.getLogger(__name__)

# A folder holds a tokenizer when it has one of these (fast, sentencepiece, BPE, WordPiece, tiktoken).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt",
                   "sentencepiece.bpe.model", "tokenizer.tiktoken", "qwen.tiktoken")


def check_local_folder(path: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise MspgtError(
            f"model.local_path={path} does not exist",
            "point model.local_path at a folder with config.json and the weights",
        )
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise MspgtError(
            f"model.local_path={path} is not a Hugging Face checkpoint folder (no config.json in it)",
            "point it at the folder that holds config.json and *.safetensors; for a single .gguf file use "
            "model=gguf model.path=/path/file.gguf",
        )
    return folder


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES) or any(folder.glob("*.tiktoken"))


def tokenizer_source(cfg: DictConfig) -> str:
    """Where the tokenizer comes from: model.tokenizer_path, else the checkpoint folder (which must hold
    tokenizer files), else the hub id."""
    if cfg.get("tokenizer_path"):
        path = Path(str(cfg.tokenizer_path)).expanduser()
        if path.exists() and not (path.is_dir() and has_tokenizer(path)):
            raise MspgtError(
                f"model.tokenizer_path={cfg.tokenizer_path} holds no tokenizer files (none of {list(TOKENIZER_FILES)})",
                "point model.tokenizer_path at the folder of the tokenizer the model was trained with",
            )
        if not path.exists() and str(cfg.tokenizer_path).startswith(("/", ".", "~")):  # a path, not a hub id
            raise MspgtError(f"model.tokenizer_path={cfg.tokenizer_path} does not exist",
                             "point model.tokenizer_path at the folder of the model's tokenizer (or give a hub id)")
        return str(path) if path.exists() else str(cfg.tokenizer_path)  # else a hub id
    if cfg.get("local_path"):
        folder = Path(str(cfg.local_path)).expanduser()
        if not has_tokenizer(folder):
            raise MspgtError(
                f"the checkpoint folder {folder} has no tokenizer files (none of {list(TOKENIZER_FILES)})",
                "set model.tokenizer_path=/folder/with/the/tokenizer (the one the model was trained with; "
                "or its hub id, on a machine that reaches the hub), or copy the tokenizer files into the folder",
            )
        return str(folder)
    return str(cfg.hub_id)


def hub_offline() -> bool:
    """The user switched the hub off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_hub_reachable(hub_id: str, timeout_s: float = 5.0) -> None:
    """Where the hub is on but cannot be reached (no network, a compute node), fail in seconds with the fix,
    instead of after the hub client's retries (a minute and a screen of retry lines)."""
    if hub_offline():
        return
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError as err:
        raise MspgtError(f"model.hub_id={hub_id}: the hub ({host}) cannot be reached from here ({err})",
                         "export HF_HUB_OFFLINE=1 to load it from the local hub cache, or download it on a machine "
                         "that reaches the hub and use model=local model.local_path=/path/to/checkpoint") from None


def loading_error(where: str, err: Exception, hub: bool, what: str = "model") -> MspgtError:
    """A loading failure as a problem and its fix."""
    text = str(err)
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    if "does not recognize this architecture" in text or ("model_type" in text and isinstance(err, (KeyError, ValueError))):
        fix = ("this transformers version does not know the checkpoint's model_type: upgrade it "
               "(pip install -U transformers), or check model_type in config.json")
    elif "Unrecognized configuration class" in text:
        fix = "mspgt needs a decoder-only causal language model (AutoModelForCausalLM); this checkpoint is not one"
    elif "size mismatch" in text:
        fix = "config.json does not describe these weights: use the config.json that came with them"
    elif type(err).__name__ == "SafetensorError" or any(s in text for s in (
            "HeaderTooLarge", "incomplete metadata", "invalid load key", "unexpected EOF",
            "PytorchStreamReader failed", "MetadataIncompleteBuffer", "deserializing header")):
        fix = "a weight file is truncated or corrupt: copy the checkpoint again"
    elif hub and isinstance(err, OSError):
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
        fix = (("the hub is switched off here (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) and " if offline else "")
               + f"{where} is not in the local hub cache: on a machine that reaches the hub, log in "
               "(`huggingface-cli login`, its licence accepted) or download it once and use "
               "model=local model.local_path=/path/to/checkpoint")
    elif isinstance(err, OSError):
        fix = f"check that {where} holds config.json and the weight files (*.safetensors or pytorch_model.bin)"
    elif isinstance(err, torch.OutOfMemoryError if hasattr(torch, "OutOfMemoryError") else MemoryError):
        fix = "the model does not fit: use model.dtype=bfloat16, a larger device, or model.device_map=auto"
    else:
        fix = f"check that {where} is a causal LM checkpoint that this transformers version can load"
    return MspgtError(f"cannot load the {what} {where!r}: {type(err).__name__}: {first}", fix)


def load_checkpoint(cfg: DictConfig, dtype: torch.dtype, device: torch.device, attn: str,
                    with_attention: Any) -> tuple[torch.nn.Module, Any]:
    """The model and tokenizer of model.local_path (a folder) or model.hub_id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = cfg.get("local_path")
    if not local and not cfg.get("hub_id"):
        raise MspgtError("the model has neither local_path nor hub_id",
                         "set model.local_path=/path/to/checkpoint or model.hub_id=org/name")
    where = str(check_local_folder(str(local))) if local else str(cfg.hub_id)
    if not local:
        check_hub_reachable(where)
    revision = None if local else cfg.get("revision")
    tok_where = tokenizer_source(cfg)
    try:
        tok = AutoTokenizer.from_pretrained(tok_where, revision=revision if tok_where == cfg.get("hub_id") else None)
    except Exception as err:
        raise loading_error(tok_where, err, hub=not Path(tok_where).exists(), what="tokenizer") from err
    kwargs: dict[str, Any] = {"dtype": dtype}
    if device.type == "cuda":
        kwargs["device_map"] = cfg.get("device_map") or "auto"
    if revision:
        kwargs["revision"] = revision
    try:
        model, info = with_attention(lambda a: AutoModelForCausalLM.from_pretrained(
            where, attn_implementation=a, output_loading_info=True, **kwargs), attn, Path(where).name)
    except MspgtError:
        raise
    except Exception as err:
        raise loading_error(where, err, hub=not local) from err
    check_loading_info(where, info)
    return model, tok


def check_loading_info(where: str, info: dict[str, Any]) -> None:
    """Weights the config expects but the checkpoint lacks (randomly initialised by transformers) or holds but
    the config has no place for (dropped): an error, never a model that is silently part random."""
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    mismatched = sorted(str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys") or [])
    if not (missing or unexpected or mismatched):
        return
    parts = [f"{len(v)} {what} (e.g. {', '.join(v[:3])})" for what, v in
             (("missing", missing), ("unexpected", unexpected), ("wrong-shaped", mismatched)) if v]
    raise MspgtError(f"{where}: its weights do not match its config.json: {'; '.join(parts)} weights",
                     "use a config.json that describes these weights (num_hidden_layers, sizes), or the weights "
                     "the config was saved with")
