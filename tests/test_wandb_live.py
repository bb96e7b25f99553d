"""A job's W&B run is a live dashboard (mspgt/reports/tracking.py job_run): opened when the job starts, with an
id derived from the job (sweep, job number, resolved config) and resume="allow"; progress logged while it works
(the step, sentences done, the rate); the per-layer curves as series over the block; the summary, tables and
figure at the end, in the same run. A job run again in its folder continues the run's steps. Read back from the
offline run files with wandb's own reader (`wandb leet inspect --json`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mspgt.reports.tracking import job_run_id
from tests.conftest import TINY, run_mspgt


def wandb_records(run_file: Path) -> list[dict]:
    out = subprocess.run(["wandb", "leet", "inspect", "--json", str(run_file)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def wandb_runs(folder: Path) -> dict[str, list[list[dict]]]:
    """{run id: [history of each attempt (offline-run-* folder), oldest first]} under folder/wandb."""
    runs: dict[str, list[list[dict]]] = {}
    for run_file in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        records = wandb_records(run_file)
        (run_id,) = {r["run"]["run_id"] for r in records if r.get("type") == "run"}
        history = [dict(r["history"]["item"], _step=r["history"].get("step", {}).get("num", 0))
                   for r in records if r.get("type") == "history"]
        runs.setdefault(run_id, []).append(history)
    return runs


def test_the_run_is_live_from_the_start_and_holds_progress_curves_and_results(tmp_path, shared_cache):
    out = tmp_path / "run"
    run_mspgt(["model=tiny_llama", *TINY, "data.n_sentences=40", "extraction.lock_timeout_s=60",
               "tracking.mode=offline", f"hydra.run.dir={out}"], tmp_path, cache=shared_cache)  # its own statistics
    runs = wandb_runs(out)
    assert len(runs) == 1, runs.keys()
    (history,) = next(iter(runs.values()))
    steps = [h["_step"] for h in history]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    progress = [h for h in history if "progress/step" in h]
    assert progress[0]["progress/step"] == "started"
    assert {"probes", "bootstrap", "outputs"} <= {h["progress/step"] for h in progress}
    extraction = [h for h in progress if "progress/sentences_done" in h]  # the first and the last update at least
    assert len(extraction) >= 2 and extraction[-1]["progress/sentences_done"] == 40
    assert extraction[-1]["progress/fraction"] == 1.0 and extraction[-1]["progress/sentences_per_s"] > 0
    layers = [h for h in history if "layer/block" in h]
    assert [h["layer/block"] for h in layers] == [1, 2, 3, 4, 5, 6]
    assert all("layer/evidence" in h and "layer/representation_change" in h for h in layers)
    assert max(h["_step"] for h in progress) < min(h["_step"] for h in layers)  # progress came first
    logged = {key.split(".")[0] for h in history for key in h}  # a table or image: its fields, `per_layer.nrows`
    assert {"per_layer", "boundaries"} <= logged


@pytest.mark.slow  # two runs; the requeued Slurm job checks the same (tests/test_slurm.py): CI runs it
def test_a_job_run_again_continues_its_one_run(tmp_path, shared_cache):
    out = tmp_path / "run"
    args = ["model=tiny_llama", *TINY, "tracking.mode=offline", f"hydra.run.dir={out}"]
    run_mspgt(args, tmp_path, cache=shared_cache)
    run_mspgt(args, tmp_path, cache=shared_cache)
    runs = wandb_runs(out)
    assert len(runs) == 1, f"one W&B run id for one job, found {list(runs)}"
    first, second = next(iter(runs.values()))
    assert max(h["_step"] for h in first) < min(h["_step"] for h in second)  # the history continues


def test_the_run_id_is_the_job():
    cfg = OmegaConf.create({"model": {"name": "tiny_llama"}, "seed": 0, "tracking": {"mode": "offline"}})
    same = job_run_id(cfg, "2026-01-01_00-00-00", 3)
    assert job_run_id(OmegaConf.create(OmegaConf.to_container(cfg)), "2026-01-01_00-00-00", 3) == same
    assert job_run_id(cfg, "2026-01-01_00-00-00", 4) != same  # another job of the sweep
    assert job_run_id(cfg, "2026-01-02_00-00-00", 3) != same  # another sweep
    other = OmegaConf.merge(cfg, {"seed": 1})
    assert job_run_id(other, "2026-01-01_00-00-00", 3) != same  # another config
    tracking_only = OmegaConf.merge(cfg, {"tracking": {"mode": "online"}})
    assert job_run_id(tracking_only, "2026-01-01_00-00-00", 3) == same  # where it is tracked is not the job
