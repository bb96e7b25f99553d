"""Entry point: `python -m mspgt.run [group=choice ...]`, or `-m` for a sweep (local or Slurm launcher).

Composes conf/, runs the experiment the config names in the run's own output folder, and returns its
summary metrics (what a Hydra sweep collects). A failing job leaves `error.txt` beside its logs.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mspgt.errors import MspgtError, choose

log = logging.getLogger("mspgt")

EXPERIMENTS = ("boundary", "intervention", "fisher")


def run_dir() -> Path:
    """This job's output folder (each job of a sweep has its own)."""
    return Path(HydraConfig.get().runtime.output_dir)


def sweep_name() -> str | None:
    """The sweep's folder name for a multirun (used as the W&B group), else None."""
    hc = HydraConfig.get()
    if hc.mode is not None and hc.mode.name == "MULTIRUN":
        return Path(hc.sweep.dir).name
    return None


def run_experiment(cfg: DictConfig) -> dict[str, Any]:
    """Run the experiment `cfg.experiment.name` and return its summary."""
    choose("experiment", cfg.experiment.name, EXPERIMENTS, "experiment")
    out = run_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / "error.txt").unlink(missing_ok=True)  # a stale error from an earlier attempt (requeue, rerun)
    try:
        if cfg.experiment.name == "boundary":
            from mspgt.experiments.boundary import run_boundary

            return run_boundary(cfg, out)
        if cfg.experiment.name == "fisher":
            from mspgt.experiments.fisher import run_fisher

            return run_fisher(cfg, out)
        from mspgt.experiments.intervention import run_intervention

        return run_intervention(cfg, out)
    except MspgtError as err:
        (out / "error.txt").write_text(f"{err}\n")
        log.error("%s", err)
        raise
    except BaseException:
        (out / "error.txt").write_text(traceback.format_exc())
        raise


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    try:
        return run_experiment(cfg)
    except MspgtError:
        if HydraConfig.get().mode == RunMode.RUN:  # a single run: the message (logged above), no traceback
            sys.exit(2)
        raise  # a sweep job: the launcher reports the failed job


if __name__ == "__main__":
    main()
