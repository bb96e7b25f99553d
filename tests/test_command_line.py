"""The command `python -m mspgt.run` itself (a subprocess: what a user's shell sees): a bad setting is exit
status 2 and one message without a traceback, Ctrl-C one line and exit 130, a sweep ends with its summary of
the swept values (a full disk: tests/test_full_disk.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import MODEL_LOADED, TINY, log_text, run_cli

EXTRACTION_STARTS = "sentences in 12 groups"  # the log line just before the extraction (experiments/boundary.py)



@pytest.mark.parametrize("override", [["probes.epochs=0"], ["hydra.run.dir={file}"]])
def test_bad_setting_is_exit_2_and_one_message(override, tmp_path):
    """The exit status and the message a shell sees (tests/test_bad_input.py checks every case in-process)."""
    (tmp_path / "file").write_text("a file in the way")
    args = ["model=tiny_llama", *TINY, *(o.format(file=tmp_path / "file") for o in override)]
    if not override[0].startswith("hydra.run.dir="):
        args.append(f"hydra.run.dir={tmp_path / 'r'}")
    proc = run_cli(args, tmp_path, check=False)
    text = log_text(proc)
    assert proc.returncode == 2 and "fix:" in text and override[0].split("=")[0] in text, text[-3000:]
    assert "Traceback" not in text and MODEL_LOADED not in text


@pytest.mark.slow  # processes of their own (a sweep, signals, a mount): CI runs it
def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    env = dict(os.environ, MSPGT_CACHE_DIR=str(tmp_path / "cache"), WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "mspgt.run", "model=tiny_llama", *TINY,
                             "extraction.sleep_per_batch_s=3", f"hydra.run.dir={out}"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a shell without job control starts background jobs with SIGINT ignored, and
                            # Python keeps an inherited SIG_IGN: give the run the default a terminal gives it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "run.log").exists() and EXTRACTION_STARTS in (out / "run.log").read_text():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # during the extraction (3 s per batch): the window a user hits
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
    assert "Traceback" not in stdout + stderr
    assert "interrupted (Ctrl-C)" in stdout + stderr
    assert not (out / "results.json").exists()


def test_sweep_summary_shows_the_swept_values(tmp_path, shared_cache):
    run_cli(["-m", "model=tiny_llama", *TINY, "fusion.prominence=0.2,0.9", "tracking.mode=disabled"], tmp_path,
              cache=shared_cache)
    sweep = next((tmp_path / "outputs" / "multirun").iterdir())
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["swept"] == ["fusion.prominence"]
    md = (sweep / "sweep_summary.md").read_text()
    assert "| job | fusion.prominence | model |" in md
    assert "| 0 | 0.2 | tiny_llama |" in md and "| 1 | 0.9 | tiny_llama |" in md


def test_an_unquoted_value_with_spaces_is_one_line_naming_the_quotes(tmp_path):
    proc = run_cli(["model=tiny_llama", "data=text", f"data.path={tmp_path}/my", "corpus.txt"], tmp_path, check=False,
                   timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "must be quoted" in proc.stderr and f"'data.path=\"{tmp_path}/my corpus.txt\"'" in proc.stderr
    assert "Traceback" not in proc.stderr and "mismatched input" not in proc.stderr
