"""Hydra callbacks that hook the cluster tools into `python -m mspgt.run -m ...` (Hydra 1.3 Callback API).

- `SlurmPreflight` (in conf/hydra/launcher/slurm_*.yaml): before a Slurm sweep submits anything, checks the
  launcher config against the cluster (preflight.py); then watches the jobs so the wait is bounded
  (watchdog.py). Hydra turns an exception raised by a callback into a warning and carries on, so a failed
  check ends the sweep with SystemExit (exit status 1 and the message), which Hydra does not swallow.
- `OutputFolderCheck` (in conf/config.yaml): before Hydra creates the run (or sweep) folder, checks that it
  can be written; otherwise one message naming the fix and exit status 2 (not Hydra's mkdir traceback).
- `SweepSummary` (in conf/config.yaml): at the end of any sweep, the side-by-side table (summary.py), failed
  jobs included (each with its one-line error); then, if a job failed, exit status 1 naming them. A failed job
  returns its failure instead of raising (mspgt/run.py), else Hydra's sweeper would stop at it and skip
  on_multirun_end; a sweep the watchdog stops writes the summary too. By hand:
  `python -m mspgt.cluster.summary <sweep dir>`.
"""

from __future__ import annotations

import _thread
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mspgt.cluster.preflight import check_slurm_launcher
from mspgt.cluster.summary import failed_jobs, write_sweep_summary
from mspgt.cluster.watchdog import SweepWatchdog
from mspgt.errors import MspgtError

log = logging.getLogger(__name__)


def is_slurm_launcher(config: DictConfig) -> bool:
    target = OmegaConf.select(config, "hydra.launcher._target_", default="") or ""
    return str(target).endswith("SlurmLauncher")


def _ensure_hydra_config(config: DictConfig) -> None:
    """Let `${hydra:...}` interpolations resolve in a callback that runs before Hydra sets its config."""
    if not HydraConfig.initialized():
        HydraConfig.instance().set_config(config)


class OutputFolderCheck(Callback):
    """The run folder (hydra.run.dir) or sweep folder (hydra.sweep.dir) can be written, before Hydra makes it."""

    def _check(self, config: DictConfig, key: str) -> None:
        from mspgt.files import writable_folder

        _ensure_hydra_config(config)
        try:
            folder = Path(str(OmegaConf.select(config, key)))
        except Exception:  # an interpolation Hydra resolves later: its own error will say
            return
        why = writable_folder(folder)
        if why is not None:
            err = MspgtError(f"{key}={folder} cannot be written: {why}",
                             f"point {key} (or paths.outputs) at a writable folder, e.g. `{key}=/tmp/mspgt-run`")
            print(f"[mspgt][ERROR] - {err}", file=sys.stderr)
            raise SystemExit(2)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")


class SlurmPreflight(Callback):
    """Pre-flight checks and a bounded wait for sweeps on the Slurm launcher; does nothing for other launchers."""

    def __init__(self, enabled: bool = True, timeout_s: float = 30.0, watchdog: bool = True, poll_s: float = 15.0,
                 grace_s: float = 60.0, controller_timeout_s: float = 600.0) -> None:
        self.enabled = enabled
        self.timeout_s = timeout_s
        self.use_watchdog = watchdog
        self.poll_s = poll_s
        self.grace_s = grace_s
        self.controller_timeout_s = controller_timeout_s
        self._watchdog: SweepWatchdog | None = None
        self._failure: str | None = None
        self._sweep_dir: Path | None = None
        self._tracking: DictConfig | None = None
        self._previous_sigint: Any = None

    def __getstate__(self) -> dict[str, Any]:
        """The launcher pickles Hydra's callbacks into every job: leave the thread and signal handler behind."""
        return {**self.__dict__, "_watchdog": None, "_previous_sigint": None, "_failure": None, "_tracking": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled or not is_slurm_launcher(config):
            return
        _ensure_hydra_config(config)
        launcher = OmegaConf.to_container(config.hydra.launcher, resolve=True)
        assert isinstance(launcher, dict)
        try:
            log.info("%s", check_slurm_launcher(launcher, self.timeout_s))
        except MspgtError as err:  # Python prints the message and exits with status 1
            raise SystemExit(f"[mspgt] Slurm pre-flight check failed, nothing was submitted:\n{err}") from err
        self._sweep_dir, self._tracking = Path(str(config.hydra.sweep.dir)), config.get("tracking")
        if self.use_watchdog:
            self._start_watchdog(str(launcher["submitit_folder"]))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
            signal.signal(signal.SIGINT, self._previous_sigint)

    # -- bounded wait --------------------------------------------------------------------------------
    def _start_watchdog(self, folder_pattern: str) -> None:
        self._previous_sigint = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._on_sigint)
        self._watchdog = SweepWatchdog(folder_pattern, self._stop_sweep, poll_s=self.poll_s, grace_s=self.grace_s,
                                       controller_timeout_s=self.controller_timeout_s, command_timeout_s=self.timeout_s)
        self._watchdog.start()

    def _stop_sweep(self, message: str) -> None:
        """Called from the watchdog thread: interrupt the launcher's wait in the main thread."""
        self._failure = message
        _thread.interrupt_main(signal.SIGINT)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._failure is not None:
            if self._sweep_dir is not None:  # the jobs that did finish, and the failure, in the summary
                try:
                    end_of_sweep(self._sweep_dir, self._tracking, raise_on_failure=False)
                except Exception as err:  # the stop message below matters more
                    log.warning("the sweep summary could not be written: %s", err)
            raise SystemExit(f"[mspgt] sweep stopped: {self._failure}")
        if callable(self._previous_sigint):
            self._previous_sigint(signum, frame)
        else:
            raise KeyboardInterrupt


class SweepSummary(Callback):
    """Writes sweep_summary.{md,json} in the sweep folder and its W&B table when a sweep ends; exit status 1
    (naming each failed job and its error) if a job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _ensure_hydra_config(config)
        end_of_sweep(Path(str(config.hydra.sweep.dir)), config.get("tracking"))


def end_of_sweep(sweep_dir: Path, tracking: DictConfig | None, raise_on_failure: bool = True) -> None:
    """The sweep's summary and reports; then SystemExit(1) listing the failed jobs, if any."""
    summary = write_sweep_summary(sweep_dir, tracking)
    from mspgt.reports.intervention_report import write_intervention_summary

    table = write_intervention_summary([sweep_dir], sweep_dir)
    if table is not None:
        log.info("intervention summary: %s", table)
    failed = failed_jobs(summary) if summary is not None else []
    if failed and raise_on_failure:
        raise SystemExit(f"[mspgt] {len(failed)} of {len(summary['jobs'])} jobs failed (the summary lists them: "
                         f"{sweep_dir / 'sweep_summary.md'}):\n  " + "\n  ".join(failed))
