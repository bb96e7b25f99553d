"""Shared fixtures: run the real entry point (`python -m mspgt.run`) in a subprocess, in temp folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Small, fast settings for plumbing runs on tiny models (random weights: results prove plumbing only).
TINY = [
    "data.n_sentences=48",
    "data.max_tokens=24",
    "extraction.batch_size=8",
    "extraction.chunk_groups=2",
    "extraction.progress=false",
    "probes.epochs=3",
    "probes.max_train_words=300",
    "probes.max_eval_words=150",
    "bootstrap.n_resamples=50",
    "bootstrap.group_size=4",
]


def run_mspgt(args: list[str], tmp: Path, cache: Path | None = None, timeout: float = 900,
              check: bool = True, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m mspgt.run ARGS` with outputs and caches under `tmp`."""
    env = dict(os.environ)
    env.update({"MSPGT_CACHE_DIR": str(cache or tmp / "cache"), "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2"),
                "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "WANDB_SILENT": "true"})
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-m", "mspgt.run", *args], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"mspgt.run failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def read_results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def wandb_run_state(run_folder: Path) -> dict:
    """What a W&B offline run recorded (config, summary, tags, state), read back from its .wandb file with
    `wandb leet inspect --summary --json` (wandb's own reader of the transaction log)."""
    logs = list(run_folder.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 1, f"expected one W&B offline run under {run_folder}/wandb, found {logs}"
    proc = subprocess.run(["wandb", "leet", "inspect", "--summary", "--json", str(logs[0])], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """A model/tokenizer cache shared by the tests of one session (the SmolLM2 tokenizer is slow to parse).
    `MSPGT_TEST_MODEL_CACHE=<an MSPGT_CACHE_DIR>` seeds it with that cache's tokenizers and models: the way
    to run the tiny-model tests on a machine without the packages that ship them (a bare GPU node)."""
    cache = tmp_path_factory.mktemp("mspgt-cache")
    seed = os.environ.get("MSPGT_TEST_MODEL_CACHE")
    if seed:
        for sub in ("tokenizers", "models"):
            if (Path(seed) / sub).is_dir():
                shutil.copytree(Path(seed) / sub, cache / sub)
    return cache
