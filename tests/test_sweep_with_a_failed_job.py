"""A sweep in which a job fails still ends with its summary and report (sweep_summary.md/.json, robustness.*),
listing the failed job with its one-line error, and exits 1 naming it (mspgt/run.py returns a sweep job's
failure instead of raising; mspgt/cluster/callbacks.py SweepSummary). The Slurm version: tests/test_slurm.py."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY, run_cli


@pytest.mark.slow  # a sweep in processes of its own: CI runs it
def test_a_failed_job_is_listed_in_the_summary_and_the_sweep_exits_1(tmp_path, shared_cache):
    proc = run_cli(["-m", "model=tiny_llama", *TINY, "fusion.prominence=0.3,5,0.2", "tracking.mode=disabled"],
                   tmp_path, cache=shared_cache, check=False)
    assert proc.returncode == 1, proc.stderr[-4000:]
    sweep = next((tmp_path / "outputs" / "multirun").iterdir())
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert [(r["job"], r["status"]) for r in summary["jobs"]] == [("0", "done"), ("1", "failed"), ("2", "done")]
    error = summary["jobs"][1]["error"]
    assert "fusion.prominence" in error and "fix:" in error and "\n" not in error
    md = (sweep / "sweep_summary.md").read_text()
    assert "| 1 | 5 | failed: " in md and "fusion.prominence" in md
    assert (sweep / "robustness.md").exists() and (sweep / "robustness.json").exists()
    assert "1 of 3 jobs failed" in proc.stderr and "job 1 (fusion.prominence=5)" in proc.stderr
    assert "Traceback" not in proc.stderr
