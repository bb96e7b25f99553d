"""Shared fixtures: run an experiment in temp folders, in-process through Hydra's compose API (`run_mspgt`,
the same config and `mspgt.run.run_experiment` as the command line, without a new Python per run), or as the
real command `python -m mspgt.run` in a subprocess (`run_cli`: where the command line itself is tested:
exit codes, signals, sweeps, Slurm)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
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


CONF = REPO / "conf"
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log format


@contextlib.contextmanager
def _environment(tmp: Path, env: dict[str, str]) -> Iterator[None]:
    """Run inside `tmp` (outputs go to tmp/outputs, as for a command started there) with `env` set."""
    before = {k: os.environ.get(k) for k in env}
    cwd = os.getcwd()
    os.environ.update(env)
    os.chdir(tmp)
    try:
        yield
    finally:
        os.chdir(cwd)
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _captured_log(run_log: Path | None) -> Iterator[io.StringIO]:
    """The run's log lines (INFO and up), as the command line prints them; also into run.log, as Hydra does."""
    text = io.StringIO()
    handlers: list[logging.Handler] = [logging.StreamHandler(text)]
    if run_log is not None:
        run_log.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_log))
    root = logging.getLogger()
    level = root.level
    for h in handlers:
        h.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(h)
    root.setLevel(logging.INFO)
    try:
        yield text
    finally:
        root.setLevel(level)
        for h in handlers:
            root.removeHandler(h)
            h.close()


def run_mspgt(args: list[str], tmp: Path, cache: Path | None = None, check: bool = True,
              env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m mspgt.run ARGS` in-process: the config composed from conf/ with Hydra's compose API, run by
    `mspgt.run.run_experiment` in hydra.run.dir; outputs and caches under `tmp`. Returns what the command
    would: exit status 0, 2 (an MspgtError, logged) or 130 (Ctrl-C), the log as stdout."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict

    from mspgt.cluster.callbacks import OutputFolderCheck
    from mspgt.errors import MspgtError
    from mspgt.run import run_experiment

    env = {"MSPGT_CACHE_DIR": str(cache or tmp / "cache"), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           **(env_extra or {})}
    code, out, err = 0, None, io.StringIO()
    with _environment(tmp, env):
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(CONF), version_base=None):
                cfg = compose("config", overrides=list(args), return_hydra_config=True)
        except HydraException as bad:  # an unknown group option, a malformed override: Hydra's message, exit 1
            GlobalHydra.instance().clear()
            proc = subprocess.CompletedProcess(["mspgt.run", *args], 1, "", f"{bad}\n")
            if check:
                raise AssertionError(f"mspgt.run failed (1):\n{bad}") from None
            return proc
        HydraConfig.instance().set_config(cfg)  # `${hydra:...}` and the folder check resolve as in a run
        try:
            with contextlib.redirect_stderr(err):
                OutputFolderCheck().on_run_start(config=cfg)
            out = Path(str(cfg.hydra.run.dir)).resolve()
            (out / ".hydra").mkdir(parents=True, exist_ok=True)  # what Hydra saves in a run folder
            OmegaConf.save(cfg.hydra.overrides.task, out / ".hydra" / "overrides.yaml")
        except SystemExit as stop:
            code = int(stop.code)
        with open_dict(cfg):
            del cfg["hydra"]
        if out is not None:
            OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
        with _captured_log(out / "run.log" if out is not None else None) as text:
            if out is not None:
                try:
                    run_experiment(cfg, out)
                except MspgtError:
                    code = 2  # logged by run_experiment, as on the command line
                except KeyboardInterrupt:
                    code = 130
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None  # the next run (or a test's own compose) starts clean
    proc = subprocess.CompletedProcess(["mspgt.run", *args], code, text.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"mspgt.run failed ({code}):\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_cli(args: list[str], tmp: Path, cache: Path | None = None, timeout: float = 900,
            check: bool = True, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run the command `python -m mspgt.run ARGS` in a subprocess with outputs and caches under `tmp`."""
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


MODEL_LOADED = "loaded tiny_llama"  # the model-load log line (mspgt/model/loading.py)


def log_text(proc: subprocess.CompletedProcess) -> str:
    """Everything a run printed (its log)."""
    return proc.stdout + proc.stderr


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
