"""`python -m mspgt.run -m +study=paper_mini`: the paper's study as one command (mspgt/cluster/study.py,
hydra_plugins/mspgt_study_sweeper): stages in order, a fixed folder per job, resumed after a kill (only the
missing jobs run), ending with robustness.md where every prediction that two families can test has a verdict;
locally and through the dev Slurm cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from mspgt.cluster.study import expand_stages, job_is_finished
from tests.conftest import run_cli
from tests.test_cluster_config import dev_cluster, needs_dev_cluster  # noqa: F401 (dev_cluster: a fixture)

REPO = Path(__file__).resolve().parents[1]
# Two tiny random-weight families whose 10-block boundaries leave three non-empty scales; one sigma, 6 prompts.
TINY_STUDY = ["-m", "+study=paper_mini", "model=tiny_llama,tiny_qwen2", "debug=fast",
              "model.tiny.num_hidden_layers=10", "sigma=1.0", "study.n_prompts=6"]
N_JOBS = 2 + 4 + 2 + 6  # boundaries (2 models), controls (2 x 2), Fisher (2), interventions (2 x 3 scales)


def test_stages_expand_in_order_with_fixed_numbers_and_the_command_line_replacing_a_stage_value():
    stages = [{"name": "a", "params": {"model": "m1,m2", "experiment": "boundary", "control": "none,random_init"}},
              {"name": "b", "params": {"model": "m1,m2", "experiment": "fisher"}}]
    parse = OverridesParser.create().parse_overrides
    jobs = expand_stages(stages, [], parse, BasicSweeper.split_arguments)
    assert [(j.stage, j.number) for j in jobs] == [("a", 0), ("a", 1), ("a", 2), ("a", 3), ("b", 4), ("b", 5)]
    assert jobs[1].overrides == ("model=m1", "experiment=boundary", "control=random_init")
    assert jobs[5].launch_overrides[-1] == "study.job=5"
    narrowed = expand_stages(stages, ["model=m3", "seed=1"], parse, BasicSweeper.split_arguments)
    assert len(narrowed) == 3 and all("model=m3" in j.overrides and "seed=1" in j.overrides for j in narrowed)
    with pytest.raises(ValueError, match="no stages"):
        expand_stages([], [], parse, BasicSweeper.split_arguments)


def test_a_job_counts_as_finished_only_with_its_result_no_error_and_the_same_overrides(tmp_path):
    job = tmp_path / "3-intervention-m"
    (job / ".hydra").mkdir(parents=True)
    overrides = ["model=m", "experiment=intervention", "study.job=3"]
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    assert not job_is_finished(job, "intervention", overrides)  # no result yet (killed)
    (job / "intervention.json").write_text("{}")
    assert job_is_finished(job, "intervention", overrides)
    assert not job_is_finished(job, "intervention", [*overrides[:2], "study.job=3", "sigma=2"])  # another command
    assert not job_is_finished(job, "boundary", overrides)  # a boundary job's result is results.json
    (job / "error.txt").write_text("failed")
    assert not job_is_finished(job, "intervention", overrides)


def _mtimes(study: Path, pattern: str) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in study.glob(pattern)}


def _check_the_study(study: Path) -> None:
    """Every job finished; the controls compared; a verdict for each prediction two families can test."""
    summary = json.loads((study / "sweep_summary.json").read_text())
    assert [r["status"] for r in summary["jobs"]] == ["done"] * N_JOBS, summary["jobs"]
    assert len(list(study.glob("*-boundary-*/results.json"))) == 6
    assert len(list(study.glob("*-intervention-*/intervention.json"))) == 6
    assert len(list(study.glob("*-fisher-*/fisher.json"))) == 2
    controls = json.loads((study / "controls.json").read_text())
    assert len(controls["comparisons"]) == 2  # one per model: none against random_init and shuffled_words
    record = json.loads((study / "robustness.json").read_text())
    verdicts = {v["id"]: v for v in record["predictions"]}
    assert {m["family"] for m in record["models"]} == {"llama", "qwen"}
    for pid in ("local_brittleness_ratio", "fisher_trace"):  # inconclusive: tested, within the null
        assert verdicts[pid]["verdict"] in ("supported", "refuted", "mixed", "inconclusive"), verdicts[pid]
    # eq. 28 ran on each model (at L-I = block 2 of 10 its windows are too short on these tiny models: a verdict
    # per curve, "untestable here" included, is what the tiny study can show)
    for m in record["models"]:
        result = json.loads(Path(m["source"]).read_text())
        assert result["information"]["eq28"]["tests"], m["model"]
    # Tier 2 is judged per model and sigma (or said to be inconclusive where no scale changed structure)
    assert len(verdicts["intermediate_structure"]["evidence"]) == 2
    across = verdicts["fisher_trace"]["evidence"]["local brittleness across families"]
    assert across["predicted_ratio"] > 0 and across["measured_brittleness_ratio"]["sigma=1"]["ratio"] > 0
    assert across["measured_brittleness_ratio"]["sigma=1"]["beyond_null"] is not None  # every run has its null
    text = (study / "robustness.md").read_text()
    assert "Local brittleness across families: llama / qwen, predicted ratio (Fisher" in text
    assert "sigma=1: " in text


@pytest.mark.slow
def test_the_study_runs_in_stages_and_a_killed_study_reruns_only_its_missing_jobs(tmp_path):
    study = tmp_path / "outputs" / "study" / "paper_mini"
    env = {**os.environ, "MSPGT_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO)}
    # 1. killed (SIGKILL: no cleanup at all) once the interventions stage has begun
    proc = subprocess.Popen([sys.executable, "-m", "mspgt.run", *TINY_STUDY], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not list(study.glob("*-intervention-*/intervention.json")):
            assert proc.poll() is None, "the study ended before it could be killed"
            assert time.monotonic() < deadline, "the interventions stage never began"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    boundaries = _mtimes(study, "*-boundary-*/results.json")
    first_interventions = _mtimes(study, "*-intervention-*/intervention.json")
    assert len(boundaries) == 6 and 1 <= len(first_interventions) < 6  # boundaries and controls, then the rest
    fisher = _mtimes(study, "*-fisher-*/fisher.json")
    assert len(fisher) == 2  # the Fisher stage runs before the interventions

    # 2. the same command again: only the missing jobs run
    done = run_cli(TINY_STUDY, tmp_path, cache=tmp_path / "cache", timeout=900, env_extra={"PYTHONPATH": str(REPO)})
    log = done.stdout + done.stderr
    assert f"interventions: 6 jobs ({len(first_interventions)} already finished)" in log
    assert "stage boundaries: every job already finished (resume), nothing to run" in log
    assert "stage controls: every job already finished (resume), nothing to run" in log
    assert _mtimes(study, "*-boundary-*/results.json") == boundaries  # finished work untouched
    assert _mtimes(study, "*-fisher-*/fisher.json") == fisher
    assert "stage fisher: every job already finished (resume), nothing to run" in log
    again = _mtimes(study, "*-intervention-*/intervention.json")
    assert {k: again[k] for k in first_interventions} == first_interventions
    _check_the_study(study)

    # 3. once more: nothing left to run
    rerun = run_cli(TINY_STUDY, tmp_path, cache=tmp_path / "cache", timeout=300, env_extra={"PYTHONPATH": str(REPO)})
    log = rerun.stdout + rerun.stderr
    for stage in ("boundaries", "controls", "fisher", "interventions"):
        assert f"stage {stage}: every job already finished (resume), nothing to run" in log


@pytest.mark.slurm
def test_the_study_runs_as_slurm_jobs_on_the_dev_cluster(tmp_path, dev_cluster):  # noqa: F811
    study = tmp_path / "outputs" / "study" / "paper_mini"
    run_cli([*TINY_STUDY, "hydra/launcher=slurm_dev"], tmp_path, cache=tmp_path / "cache", timeout=1500,
            env_extra={"PYTHONPATH": str(REPO)})
    _check_the_study(study)
    assert len(list(study.glob(".submitit/*/*_log.out"))) >= N_JOBS  # each job ran as a Slurm job
