"""mspgt: tests of Multi-Scale Probabilistic Generation Theory (Zhang & Dong, arXiv 2505.18244).

Pipeline, one sub-package a step: data -> model -> extraction -> signals -> fusion (peaks, bootstrap)
-> interventions -> reports; experiments/ wires them into the three experiments of the paper.
"""

import json
import os
from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"

# `${mspgt.launch_dir:}`: the folder the command was started from. Hydra's `${hydra:runtime.cwd}` is the
# same folder (jobs never chdir: hydra.job.chdir=false) but cannot be resolved while a multirun sets up its
# sweep folder, so conf/ uses this one for every path that a sweep folder is built from.
OmegaConf.register_new_resolver("mspgt.launch_dir", os.getcwd, replace=True)


def _model_name(where: str | None) -> str:
    """`${mspgt.model_name:${.local_path}}`: a folder's name, a file's stem, a hub id's last part."""
    if not where:
        return "unnamed"
    path = Path(str(where).rstrip("/"))
    return path.stem if path.suffix.lower() == ".gguf" else path.name


def _model_family(where: str | None) -> str:
    """`${mspgt.model_family:${.local_path}}`: config.json's model_type (a GGUF: general.architecture; a hub
    id: its cached config.json), else "unknown"."""
    path = Path(str(where or "")).expanduser()
    try:
        if path.is_dir():
            return str(json.loads((path / "config.json").read_text())["model_type"])
        if path.suffix.lower() == ".gguf":
            from gguf import GGUFReader

            field = GGUFReader(path).fields["general.architecture"]
            return bytes(field.parts[field.data[0]]).decode()
        if str(where or "").count("/") == 1:  # a hub id: its config.json if the local hub cache has it
            from huggingface_hub import try_to_load_from_cache

            config = try_to_load_from_cache(str(where), "config.json")
            if isinstance(config, str):
                return str(json.loads(Path(config).read_text())["model_type"])
    except Exception:  # the loader reports a missing or broken checkpoint with its fix
        pass
    return "unknown"


OmegaConf.register_new_resolver("mspgt.model_name", _model_name, replace=True)
OmegaConf.register_new_resolver("mspgt.model_family", _model_family, replace=True)


def _config_groups() -> str:
    """`${mspgt.config_groups:}`: the shipped config groups and their choices, one line each, for
    `python -m mspgt.run --help` (conf/hydra/help/mspgt.yaml). Leaves out hydra/ but its launchers, and the
    files that other choices extend (`base/` folders) or that a group adds itself (`debug/experiment/`)."""
    conf = Path(__file__).resolve().parents[1] / "conf"
    lines = []
    for folder in sorted(p for p in conf.rglob("*") if p.is_dir()):
        group = folder.relative_to(conf).as_posix()
        if (group.startswith("hydra") and group != "hydra/launcher") or "base" in group.split("/") \
                or group == "debug/experiment":
            continue
        choices = sorted(f.stem for f in folder.glob("*.yaml"))
        if choices:
            lines.append(f"  {group}: {', '.join(choices)}")
    return "\n".join(lines)


OmegaConf.register_new_resolver("mspgt.config_groups", _config_groups, replace=True)
