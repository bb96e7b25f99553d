"""Sweeps on a real Slurm cluster: the single-node dev cluster of launch/slurm_dev_cluster.sh (started by
.ci/run; skipped with the reason when it is not up). Tiny random models: plumbing, not science.

- a two-model sweep becomes two Slurm jobs, each with its results and W&B offline run in its own folder;
- a job that Slurm preempts part-way through extraction is requeued by submitit's checkpoint protocol,
  resumes from the cached chunks, and ends with the results of an uninterrupted run and one W&B run holding
  the whole history;
- a sweep with a failed job ends with its summary listing the failure, and exit status 1;
- two jobs that need the same statistics at once: one builds, the other waits and reuses; cache intact;
- a job that Slurm kills ends the sweep with an error naming it (bounded wait), and an oversized request
  is refused at submission even without the pre-flight checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from mspgt.cluster.watchdog import SweepWatchdog
from tests.conftest import REPO, TINY, read_results, run_cli
from tests.test_cluster_config import dev_cluster, needs_dev_cluster  # noqa: F401 (dev_cluster: a fixture)
from tests.test_wandb_live import wandb_records, wandb_runs

pytestmark = [pytest.mark.slurm, needs_dev_cluster]

# One CPU per job, partition debug; short job folder names; the sweep summary callback.
SLURM_SWEEP = ["hydra/launcher=slurm_dev", "experiment=boundary", *TINY,
               "hydra.sweep.subdir=${hydra.job.num}-${model.name}",
               "++hydra.callbacks.sweep_summary._target_=mspgt.cluster.callbacks.SweepSummary"]
ENV = {"PYTHONPATH": str(REPO)}  # the jobs import mspgt from the checkout, installed or not
SUBMITIT_TIME = re.compile(r"submitit INFO \((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\) - (.*)")


# -- helpers -----------------------------------------------------------------------------------------

def slurm(*args: str, timeout: float = 30) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr}"
    return proc.stdout


def job_ids(sweep: Path) -> list[str]:
    """Ids of the sweep's Slurm jobs (submitit writes `<id>_submitted.pkl` for each)."""
    ids = {p.name.removesuffix("_submitted.pkl") for p in sweep.glob(".submitit/*/*_submitted.pkl")}
    return sorted(ids, key=lambda job_id: [int(part) for part in job_id.split("_")])


def job_log(sweep: Path, job_id: str) -> str:
    return (sweep / ".submitit" / job_id / f"{job_id}_0_log.out").read_text()


def log_times(log: str, what: str) -> list[float]:
    """Epoch times of the submitit log lines that start with `what`."""
    return [datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            for t, msg in SUBMITIT_TIME.findall(log) if msg.startswith(what)]


def sacct_states(job_id: str, timeout: float = 60) -> list[str] | None:
    """Every attempt's state, oldest first, once the last one has ended (None: the cluster keeps no accounting).

    The sweep returns as soon as a job's result file exists; the job itself ends a moment later.
    """
    deadline = time.monotonic() + timeout
    while True:
        proc = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "JobID,State", "-j", job_id],
                              capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            return None
        states = [line.split("|")[1] for line in proc.stdout.splitlines() if line.split("|")[0] == job_id]
        if states and states[-1] not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED"):
            return states
        assert time.monotonic() < deadline, f"job {job_id} still {states} after {timeout:.0f} s"
        time.sleep(0.5)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended ({proc.returncode}) before {what}:\n{proc.stderr.read()[-4000:]}")
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.1)


def start_sweep(args: list[str], tmp: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, **ENV, "MSPGT_CACHE_DIR": str(cache), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_SILENT": "true"}
    return subprocess.Popen([sys.executable, "-m", "mspgt.run", "-m", *args], cwd=tmp, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def cancel_jobs(sweep: Path) -> None:
    for job_id in job_ids(sweep):
        subprocess.run(["scancel", job_id], capture_output=True, timeout=30)


def wandb_run_record(folder: Path) -> dict:
    """The `run` record (group, job type, tags) of the one W&B offline run under `folder/wandb`."""
    logs = list(folder.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 1, f"expected one W&B offline run under {folder}/wandb, found {logs}"
    out = subprocess.run(["wandb", "leet", "inspect", "--json", str(logs[0])], capture_output=True, text=True,
                         timeout=120).stdout
    runs = [r["run"] for r in map(json.loads, out.splitlines()) if r.get("type") == "run"]
    assert runs, f"no run record in {logs[0]}"
    return runs[0]


def assert_same_science(a: dict, b: dict) -> None:
    """Identical boundaries, CIs and peaks; signals equal up to float32 summation order across processes."""
    assert a["boundaries"] == b["boundaries"]
    assert a["peaks"] == b["peaks"]
    for k in a["signals"]:
        np.testing.assert_allclose(a["signals"][k], b["signals"][k], rtol=1e-6, atol=1e-8)


def chunk_files(cache: Path) -> dict[str, int]:
    """{chunk file name: mtime in ns} of the one statistics entry in `cache`."""
    return {p.name: p.stat().st_mtime_ns for p in cache.glob("stats/*/chunk_*.npz")}


# -- a two-model sweep -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_model_sweep(tmp_path_factory) -> Path:
    """`python -m mspgt.run -m model=tiny_llama,tiny_qwen2 experiment=boundary` on the Slurm launcher."""
    tmp = tmp_path_factory.mktemp("slurm-sweep")
    sweep = tmp / "sweep"
    try:
        run_cli(["-m", "model=tiny_llama,tiny_qwen2", *SLURM_SWEEP, f"hydra.sweep.dir={sweep}"], tmp,
                  cache=tmp / "cache", timeout=600, env_extra=ENV)
    except BaseException:
        cancel_jobs(sweep)
        raise
    return sweep


def test_sweep_runs_one_slurm_job_per_model_each_in_its_own_folder(two_model_sweep):
    sweep = two_model_sweep
    ids = job_ids(sweep)
    assert len(ids) == 2 and ids[0].split("_")[0] == ids[1].split("_")[0]  # one job array, two tasks
    for job_id, (num, model, family) in zip(ids, [(0, "tiny_llama", "llama"), (1, "tiny_qwen2", "qwen")], strict=True):
        assert f"Starting with JobEnvironment(job_id={job_id}," in job_log(sweep, job_id)
        states = sacct_states(job_id)
        assert states is None or states == ["COMPLETED"]
        folder = sweep / f"{num}-{model}"
        assert read_results(folder)["model"]["name"] == model
        run = wandb_run_record(folder)
        assert (run["run_group"], run["job_type"]) == (sweep.name, "boundary")
        assert family in run["tags"]


def test_sweep_summary_lists_both_models_and_logs_a_wandb_table(two_model_sweep):
    sweep = two_model_sweep
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert [(r["model"], r["status"]) for r in summary["jobs"]] == [("tiny_llama", "done"), ("tiny_qwen2", "done")]
    for r in summary["jobs"]:
        assert r["boundaries"] == {name: {k: b[k] for k in r["boundaries"][name]} for name, b in
                                   read_results(sweep / r["folder"])["boundaries"].items()}
    md = (sweep / "sweep_summary.md").read_text()
    assert "| 0 | tiny_llama | llama |" in md and "| 1 | tiny_qwen2 | qwen |" in md
    run = wandb_run_record(sweep)
    assert (run["run_group"], run["job_type"]) == (sweep.name, "sweep_summary")
    assert set(run["tags"]) == {"llama", "qwen"}
    tables = list(sweep.glob("wandb/offline-run-*/files/media/table/boundaries_*.table.json"))
    assert len(tables) == 1 and len(json.loads(tables[0].read_text())["data"]) == 2


# -- preemption: requeue through submitit's checkpoint, resume from the cache ------------------------

def _progress_on_disk(folder: Path) -> bool:
    """The job's W&B offline log already holds a progress record (its writer flushes every ~15 s)."""
    for run_file in folder.glob("wandb/offline-run-*/run-*.wandb"):
        if run_file.stat().st_size > 64 and any(
                "progress/sentences_done" in r["history"]["item"] for r in wandb_records(run_file)
                if r.get("type") == "history"):
            return True
    return False


def test_preempted_job_is_requeued_and_resumes_from_the_cached_chunks(two_model_sweep, tmp_path):
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    proc = start_sweep(["model=tiny_llama", *SLURM_SWEEP, "extraction.sleep_per_batch_s=8",
                        f"hydra.sweep.dir={sweep}"], tmp_path, cache)
    try:
        wait_for(lambda: any(cache.glob("stats/*/chunk_*.sha256")), 300, "cached chunk", proc)
        # W&B's offline writer puts an attempt's records on disk every ~15 s, and Slurm's SIGTERM after the
        # requeue ends it: records of the last seconds before a preemption are lost (docs/slurm.md). Preempt
        # once the first attempt's records are on disk, as a real preemption (minutes into a job) would find.
        wait_for(lambda: _progress_on_disk(sweep / "0-tiny_llama"), 120, "the first attempt's W&B progress on disk",
                 proc)
        (job_id,) = job_ids(sweep)
        before = chunk_files(cache)
        slurm("scancel", "--signal=USR2", job_id)  # what Slurm sends on preemption (submitit's USR_SIG)
        _, err = proc.communicate(timeout=420)
    except BaseException:
        proc.kill()
        cancel_jobs(sweep)
        raise
    assert proc.returncode == 0, err[-4000:]
    log = job_log(sweep, job_id)
    assert f"Requeued job {job_id}" in log
    assert log.count(f"Starting with JobEnvironment(job_id={job_id},") == 2
    states = sacct_states(job_id)
    assert states is None or states == ["REQUEUED", "COMPLETED"]
    after = chunk_files(cache)
    assert 1 <= len(before) < len(after)  # stopped part-way through extraction
    assert {name: after[name] for name in before} == before  # chunks written before the stop were reused
    assert not (sweep / "0-tiny_llama" / "error.txt").exists()
    uninterrupted = read_results(two_model_sweep / "0-tiny_llama")
    assert_same_science(read_results(sweep / "0-tiny_llama"), uninterrupted)

    # W&B: exactly one run (one id) for the requeued job, its history continued across the two attempts, from the
    # first attempt's progress to the second's per-layer curves (each attempt writes an offline-run-*-<id> folder)
    runs = wandb_runs(sweep / "0-tiny_llama")
    assert len(runs) == 1, f"one W&B run for one job, found ids {list(runs)}"
    (run_id, attempts), = runs.items()
    assert run_id.startswith(f"{sweep.name}-0-") and len(attempts) == 2
    first, second = attempts
    assert first[0]["progress/step"] == "started" and any("progress/sentences_done" in h for h in first)
    assert max(h["_step"] for h in first) < min(h["_step"] for h in second)
    assert [h["layer/block"] for h in second if "layer/block" in h] == [1, 2, 3, 4, 5, 6]
    assert not any("layer/block" in h for h in first)  # stopped during extraction


def test_a_failed_job_leaves_the_summary_and_ends_the_sweep_with_status_1(tmp_path):
    sweep = tmp_path / "sweep"
    try:
        proc = run_cli(["-m", "model=tiny_llama", *SLURM_SWEEP, "fusion.prominence=0.3,5",
                        f"hydra.sweep.dir={sweep}"], tmp_path, cache=tmp_path / "cache", timeout=600, check=False,
                       env_extra=ENV)
    except BaseException:
        cancel_jobs(sweep)
        raise
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert "1 of 2 jobs failed" in proc.stderr and "job 1 (fusion.prominence=5)" in proc.stderr
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert [(r["job"], r["status"]) for r in summary["jobs"]] == [("0", "done"), ("1", "failed")]
    assert "fusion.prominence" in summary["jobs"][1]["error"] and "fix:" in summary["jobs"][1]["error"]
    assert "| 1 | 5 | failed: " in (sweep / "sweep_summary.md").read_text()
    assert (sweep / "robustness.md").exists()


# -- two jobs that need the same statistics at once --------------------------------------------------

def test_two_jobs_needing_the_same_cache_build_it_once_and_agree(two_model_sweep, tmp_path):
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    try:  # sigma is read only by experiment=intervention: same model and data, two jobs
        run_cli(["-m", "model=tiny_llama", "sigma=0.5,0.6", *SLURM_SWEEP, "extraction.sleep_per_batch_s=0.5",
                   f"hydra.sweep.dir={sweep}"], tmp_path, cache=cache, timeout=600, env_extra=ENV)
    except BaseException:
        cancel_jobs(sweep)
        raise
    a, b = read_results(sweep / "0-tiny_llama"), read_results(sweep / "1-tiny_llama")
    assert a["boundaries"] == b["boundaries"] and a["signals"] == b["signals"]  # the very same statistics
    assert_same_science(a, read_results(two_model_sweep / "0-tiny_llama"))
    built = [r for r in (a, b) if "extract_s" in r["timings"]]
    assert len(built) == 1, "exactly one job extracts; the other loads the statistics it wrote"

    (entry,) = cache.glob("stats/*")
    manifest = json.loads((entry / "manifest.json").read_text())
    chunks = sorted(entry.glob("chunk_*.npz"))
    assert len(chunks) == manifest["n_chunks"] == len(list(entry.glob("chunk_*.sha256")))
    for chunk in chunks:
        assert hashlib.sha256(chunk.read_bytes()).hexdigest() == chunk.with_suffix(".sha256").read_text().strip()
    hidden = sorted(p.name for p in entry.iterdir() if p.name.startswith("."))
    assert hidden[0] == ".lock" and all(n.endswith(".lock") for n in hidden)  # locks only: no half-written files

    # the two jobs ran at once: the reuser started before the builder's last chunk was on disk
    reuser = 0 if "extract_s" not in a["timings"] else 1
    ids = job_ids(sweep)
    reuser_start = log_times(job_log(sweep, ids[reuser]), "Starting with")[0]
    assert reuser_start < max(p.stat().st_mtime for p in chunks)


# -- bad input and killed jobs: clear errors, bounded waits ------------------------------------------

def test_a_job_slurm_kills_ends_the_sweep_with_an_error_naming_it(tmp_path):
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    proc = start_sweep(["model=tiny_llama", *SLURM_SWEEP, "extraction.sleep_per_batch_s=8",
                        "hydra.callbacks.slurm_preflight.poll_s=2", "hydra.callbacks.slurm_preflight.grace_s=3",
                        f"hydra.sweep.dir={sweep}"], tmp_path, cache)
    try:
        wait_for(lambda: len(job_ids(sweep)) == 1, 120, "submitted job", proc)
        (job_id,) = job_ids(sweep)
        wait_for(lambda: slurm("squeue", "-h", "-j", job_id, "-o", "%T").strip() == "RUNNING", 120, "running job")
        slurm("scancel", job_id)
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
        cancel_jobs(sweep)
    assert proc.returncode == 1
    assert f"Slurm job {job_id} ended in state CANCELLED without a result" in err


def test_preflight_stops_a_sweep_before_anything_is_submitted(tmp_path):
    sweep = tmp_path / "sweep"
    for bad, message in [(["hydra.launcher.partition=no_such_partition"], "unknown Slurm partition"),
                         (["hydra.launcher.cpus_per_task=4096"], "4096 CPUs per node")]:
        proc = run_cli(["-m", "model=tiny_llama", *SLURM_SWEEP, *bad, f"hydra.sweep.dir={sweep}"], tmp_path,
                         timeout=120, check=False, env_extra=ENV)
        assert proc.returncode == 1
        assert "Slurm pre-flight check failed, nothing was submitted" in proc.stderr and message in proc.stderr
        assert "fix:" in proc.stderr
        assert job_ids(sweep) == []
    proc = run_cli(["-m", "model=tiny_llama", *SLURM_SWEEP, f"hydra.sweep.dir={sweep}"], tmp_path, timeout=120,
                     check=False, env_extra={**ENV, "SLURM_CONF": str(tmp_path / "missing.conf")})
    assert proc.returncode == 1 and "missing.conf is not a readable file" in proc.stderr
    assert job_ids(sweep) == []


def test_without_preflight_slurm_refuses_an_oversized_request_at_submission(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "model=tiny_llama", *SLURM_SWEEP, "hydra.callbacks.slurm_preflight.enabled=false",
                      "hydra.launcher.cpus_per_task=4096", f"hydra.sweep.dir={sweep}"], tmp_path, timeout=120,
                     check=False, env_extra=ENV)
    assert proc.returncode != 0
    assert "More processors requested than permitted" in proc.stderr  # EnforcePartLimits=ALL on the dev cluster


def test_watchdog_reports_a_job_that_ended_without_a_result(tmp_path):
    """The bounded wait on its own, against the real squeue: a cancelled job is reported after the grace."""
    job_id = slurm("sbatch", "--parsable", "-p", "debug", "-c", "1", "--mem=100M", "-t", "5", "-o", "/dev/null",
                   "--wrap", "sleep 120").strip()
    try:
        (tmp_path / job_id).mkdir()
        (tmp_path / job_id / f"{job_id}_submitted.pkl").write_bytes(b"")
        watchdog = SweepWatchdog(str(tmp_path / "%j"), on_failure=lambda message: None, poll_s=1, grace_s=5)
        assert watchdog.job_ids() == [job_id]
        assert watchdog.check_once(now=0.0) is None  # pending or running: fine
        slurm("scancel", job_id)
        wait_for(lambda: slurm("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T").strip() == "CANCELLED", 60,
                 "cancelled state")
        assert watchdog.check_once(now=100.0) is None  # ended: the grace period starts
        message = watchdog.check_once(now=106.0)
        assert message is not None and f"Slurm job {job_id} ended in state CANCELLED without a result" in message
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=30)


def test_dev_cluster_script_is_idempotent():
    proc = subprocess.run(["bash", str(REPO / "launch" / "slurm_dev_cluster.sh"), "start"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "already running" in proc.stderr
    assert proc.stdout == f"export SLURM_CONF={os.environ['SLURM_CONF']}\n"
    status = subprocess.run(["bash", str(REPO / "launch" / "slurm_dev_cluster.sh"), "status"], capture_output=True,
                            text=True, timeout=60)
    assert status.returncode == 0 and "debug" in status.stderr
