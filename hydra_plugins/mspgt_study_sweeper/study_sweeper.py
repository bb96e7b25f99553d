"""Hydra's sweeper `study` (`override hydra/sweeper: study`): the stages of a study, in order, resumable.

Hydra finds sweepers only inside the `hydra_plugins` namespace package, so the class lives here; what it does
is in mspgt/cluster/study.py (docs/study.md). (No `from __future__ import annotations` here: Hydra executes
plugin modules without registering them in sys.modules, where a dataclass cannot resolve string annotations.)
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from mspgt.cluster.study import describe, expand_stages, job_folder, job_is_finished

log = logging.getLogger("mspgt.study")


@dataclass
class StudySweeperConf:
    _target_: str = "hydra_plugins.mspgt_study_sweeper.study_sweeper.StudySweeper"
    stages: list[Any] = field(default_factory=list)  # [{name: ..., params: {key: "a,b"}}, ...]
    resume: bool = True  # skip the jobs whose folder holds their finished result for the same overrides


ConfigStore.instance().store(group="hydra/sweeper", name="study", node=StudySweeperConf, provider="mspgt")


class StudySweeper(Sweeper):
    """Runs each stage's sweep through the configured launcher, stage after stage; skips finished jobs."""

    def __init__(self, stages: list[Any], resume: bool = True) -> None:
        self.stages = stages
        self.resume = resume
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs = expand_stages(self.stages, arguments, parser.parse_overrides, BasicSweeper.split_arguments)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        finished: set[int] = set()
        for job in jobs:  # compose each job as the launcher will, to know its folder and experiment
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, job.launch_overrides)
            with open_dict(cfg):
                cfg.hydra.job.num = job.number
            if self.resume and job_is_finished(job_folder(cfg), str(cfg.experiment.name),
                                               OmegaConf.to_container(cfg.hydra.overrides.task)):
                finished.add(job.number)
        log.info("[mspgt] study in %s: %s", sweep_dir, describe(jobs, finished))

        returns: list[list[JobReturn]] = []
        for stage in dict.fromkeys(j.stage for j in jobs):
            todo = [j for j in jobs if j.stage == stage and j.number not in finished]
            if not todo:
                log.info("[mspgt] stage %s: every job already finished (resume), nothing to run", stage)
                continue
            log.info("[mspgt] stage %s: launching %d jobs (%s)", stage, len(todo),
                     ", ".join(str(j.number) for j in todo))
            batch = [j.launch_overrides for j in todo]
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=todo[0].number)
            for r in results:
                _ = r.return_value  # a job that raised (not a failed mspgt job: those return) ends the study here
            returns.append(list(results))
        return returns
