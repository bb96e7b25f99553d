"""SIGTERM (`kill`, `scancel`, a Slurm time limit outside submitit) stops a run like Ctrl-C: one line, exit 143
(128 + 15), finished cache chunks kept for the re-run (mspgt/run.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import TINY

EXTRACTION_STARTS = "sentences in"  # the log line before the pass (mspgt/experiments/boundary.py)


@pytest.mark.slow  # a process of its own and a signal: CI runs it
def test_sigterm_is_one_line_and_exit_143(tmp_path):
    env = dict(os.environ, MSPGT_CACHE_DIR=str(tmp_path / "cache"), WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "mspgt.run", "model=tiny_llama", *TINY,
                             "extraction.sleep_per_batch_s=3", f"hydra.run.dir={out}"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "run.log").exists() and EXTRACTION_STARTS in (out / "run.log").read_text():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # during the extraction, as scancel would
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stdout[-2000:] + stderr[-2000:]
    assert "Traceback" not in stdout + stderr
    assert "interrupted (SIGTERM)" in stdout + stderr and "run the same command to resume" in stdout + stderr
    assert not (out / "results.json").exists()
