"""A study: several sweeps that depend on each other, run in order as one multirun, resumable.

The paper's study is not one cartesian product: the boundary jobs (with their controls) must finish before the
intervention and Fisher jobs read the stored boundaries, and the scales and sigmas of an intervention mean
nothing to a boundary job. A study preset (conf/study/*.yaml) lists *stages*, each a sweep of its own
(`params`, the same syntax as `hydra.sweeper.params`), and Hydra's sweeper `study` (hydra_plugins/
mspgt_study_sweeper) launches them one after the other through whichever launcher is configured (local, or
`hydra/launcher=slurm_dev|slurm_a100`), then the sweep ends as any sweep does: its summary, `robustness.*`
and `controls.*` over every job (mspgt/cluster/callbacks.py).

- Command-line overrides apply to every stage and replace a stage's own values of the same key
  (`model=tiny_llama,tiny_qwen2` runs the whole study on those models).
- Every job has a fixed number within the study (stages in order, then the cartesian order of the stage's
  params) and its folder is `<study.job>-<experiment>-<model>` in the study's fixed folder
  (`hydra.sweep.dir`, no date in it), so a second run of the same command finds the jobs of the first.
- Resume: a job whose folder already holds its finished result (results.json, intervention.json or fisher.json
  for its experiment, no error.txt) for exactly the same overrides is not launched again; only the missing,
  failed or killed jobs run (and a killed boundary job resumes from its cache chunks). `hydra.sweeper.resume=
  false` reruns everything.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

RESULT_OF = {"boundary": "results.json", "intervention": "intervention.json", "fisher": "fisher.json"}
JOB_KEY = "study.job"  # the job's fixed number in the study (its folder's prefix)


@dataclass(frozen=True)
class StudyJob:
    """One job of a study: its stage, its fixed number and its overrides (without the job number)."""

    stage: str
    number: int
    overrides: tuple[str, ...]

    @property
    def launch_overrides(self) -> list[str]:
        return [*self.overrides, f"{JOB_KEY}={self.number}"]


def expand_stages(stages: Sequence[Any], arguments: Sequence[str], parse: Any, split: Any) -> list[StudyJob]:
    """Every job of the study in order. `parse` turns override strings into Hydra overrides (an OverridesParser's
    parse_overrides); `split` is BasicSweeper.split_arguments (the cartesian product, in Hydra's order). A key on
    the command line replaces the stage's value of that key."""
    if not stages:
        raise ValueError("the study has no stages: hydra.sweeper.stages is empty (use a preset: +study=paper_mini)")
    jobs: list[StudyJob] = []
    for i, stage in enumerate(stages):
        name = str(stage.get("name") or f"stage{i}")
        params = [f"{k}={v}" for k, v in (stage.get("params") or {}).items()]
        (combos,) = split(parse([*params, *arguments]), None)
        jobs += [StudyJob(name, len(jobs) + k, tuple(c)) for k, c in enumerate(combos)]
    return jobs


def saved_overrides(folder: Path) -> list[str] | None:
    saved = folder / ".hydra" / "overrides.yaml"
    if not saved.exists():
        return None
    try:
        return [str(o) for o in OmegaConf.load(saved)]
    except Exception:
        return None


def job_is_finished(folder: Path, experiment: str, overrides: Sequence[str]) -> bool:
    """The job's folder holds its finished result for exactly these overrides (the same command)."""
    result = RESULT_OF.get(experiment)
    if result is None or not (folder / result).is_file() or (folder / "error.txt").exists():
        return False
    return saved_overrides(folder) == list(overrides)


def job_folder(job_config: DictConfig) -> Path:
    """Where Hydra puts this job: hydra.sweep.dir / hydra.sweep.subdir, resolved for the job's own config."""
    return Path(str(job_config.hydra.sweep.dir)) / str(job_config.hydra.sweep.subdir)


def describe(jobs: Sequence[StudyJob], finished: set[int]) -> str:
    by_stage: dict[str, list[int]] = {}
    for j in jobs:
        by_stage.setdefault(j.stage, []).append(j.number)
    parts = [f"{s}: {len(n)} jobs ({sum(k in finished for k in n)} already finished)" for s, n in by_stage.items()]
    return "; ".join(parts)
