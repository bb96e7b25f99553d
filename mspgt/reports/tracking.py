"""Weights & Biases tracking that never fails a job: every W&B call is guarded, results live on disk anyway.

Offline by default: the run files are written under the run's output folder (`<run dir>/wandb/`) and can be
uploaded later with `wandb sync <run dir>/wandb/offline-run-*`.

A job's W&B run is a dashboard, open while the job works (`job_run`, entered by mspgt/run.py when the job
starts): system metrics from the start, progress as it goes (mspgt/progress.py: sentences done, rate, the
current step), and at the end the summary, tables and figures the experiment logs through `Tracker`, which
joins the open run instead of starting a second one. The run's id is derived from the job (the sweep, the job
number and the resolved config: `job_run_id`) and it is opened with `resume="allow"`, so a requeued or re-run
job continues its run. Steps continue across attempts: the last step is kept in `<run dir>/wandb/mspgt-step.json`
(an offline run cannot read back its own history: each attempt writes an `offline-run-*-<id>` folder of the one
run, and `wandb sync` uploads them into it in order).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mspgt.progress import report, set_sink

log = logging.getLogger(__name__)

STEP_FILE = "mspgt-step.json"  # under <run dir>/wandb: the last step logged, so a resumed run continues it


class _JobRun:
    """The W&B run of the job in progress (one per process at a time): Trackers of this run folder join it."""

    def __init__(self, run: Any, run_dir: Path, step: int) -> None:
        self.run, self.run_dir, self.step = run, run_dir, step

    def next_step(self) -> int:
        self.step += 1
        with contextlib.suppress(OSError):
            (self.run_dir / "wandb" / STEP_FILE).write_text(json.dumps({"id": self.run.id, "step": self.step}))
        return self.step


_JOB: _JobRun | None = None


def job_run_id(cfg: DictConfig, sweep: str | None, job_num: int | None) -> str:
    """The W&B run id of a job: the sweep's name, the job number and a hash of the resolved config (without
    `hydra` and `tracking`), so the same job (requeued, or run again) has the same id and nothing else does."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that resolves only inside Hydra: the config as written
        config = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(config, dict)
    config = {k: v for k, v in config.items() if k not in ("hydra", "tracking")}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    head = "run" if sweep is None else f"{sweep}-{job_num if job_num is not None else 0}"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in f"{head}-{digest}")[:96]


@contextlib.contextmanager
def job_run(cfg: DictConfig, run_dir: Path, run_id: str, group: str | None) -> Iterator[None]:
    """Open this job's W&B run for the job's whole life (resume="allow" with `run_id`); on the way out, finish it
    (exit code 0, or 1 when the job raised). Does nothing when tracking is disabled; never fails the job."""
    global _JOB
    tracking = cfg.get("tracking")
    if tracking is None or tracking.mode == "disabled":
        yield
        return
    experiment = str(OmegaConf.select(cfg, "experiment.name", default="run"))
    model = OmegaConf.select(cfg, "model", default={}) or {}
    tags = [str(t) for t in (model.get("family"), model.get("name")) if t]
    tags.append(f"control:{OmegaConf.select(cfg, 'control.name', default='none')}")
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:
        config = OmegaConf.to_container(cfg, resolve=False)
    tracker = Tracker(tracking, run_dir, job_type=experiment, name=f"{experiment}-{model.get('name')}-{run_dir.name}",
                      group=group or f"{experiment}-{run_dir.name}", tags=tags, config=config, run_id=run_id)
    if tracker.run is None:
        yield
        return
    _JOB = _JobRun(tracker.run, run_dir, _saved_step(run_dir, tracker.run))
    set_sink(_job_log)
    exit_code = 1
    try:
        report("started")
        yield
        exit_code = 0
    finally:
        set_sink(None)
        _JOB = None
        tracker._guard("finish", lambda: tracker.run.finish(exit_code=exit_code))


def _saved_step(run_dir: Path, run: Any) -> int:
    """The last step this run logged in an earlier attempt (-1 for a new run)."""
    step = -1
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads((run_dir / "wandb" / STEP_FILE).read_text())
        if saved["id"] == run.id:
            step = int(saved["step"])
    with contextlib.suppress(Exception):  # online, resumed: W&B knows where the run stopped
        step = max(step, int(run.step) - 1)
    return step


def _job_log(values: dict[str, Any]) -> None:
    """Log `values` at the next step of the open job run (nothing without one)."""
    job = _JOB
    if job is None:
        return
    try:
        job.run.log(values, step=job.next_step())
    except Exception as err:
        log.warning("W&B log failed (%s); results are on disk", err)


class Tracker:
    """A W&B run, or nothing (mode=disabled, or W&B failed). Methods never raise."""

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: str | Path,
        job_type: str,
        name: str,
        group: str | None,
        tags: list[str],
        config: dict[str, Any],
        run_id: str | None = None,
    ) -> None:
        """A new W&B run; or, where this run folder's job run is open (job_run), that run (its config and tags
        extended, finish() leaves it open)."""
        self.run = None
        self.mode = cfg.mode
        self.run_dir = Path(run_dir)
        self.joined = False
        if cfg.mode == "disabled":
            return
        job = _JOB
        if job is not None and job.run_dir.resolve() == self.run_dir.resolve():
            self.run, self.joined = job.run, True
            self._guard("config", lambda: job.run.config.update(config, allow_val_change=True))
            self._guard("tags", lambda: setattr(job.run, "tags", tuple(dict.fromkeys([*job.run.tags, *tags]))))
            return
        try:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                group=cfg.group or group,
                job_type=job_type,
                name=name,
                tags=list(cfg.tags or []) + list(tags),
                config=config,
                dir=str(self.run_dir),
                mode=cfg.mode,
                id=run_id,
                resume="allow" if run_id else None,
                reinit="create_new" if _JOB is not None else "finish_previous",
                settings=wandb.Settings(init_timeout=60, silent=True),
            )
        except Exception as err:  # no network, bad key, ...: the results are on disk regardless
            log.warning("W&B init failed (%s); continuing without W&B, results are on disk", err)
            self.run = None

    @property
    def active(self) -> bool:
        return self.run is not None

    @property
    def run_path(self) -> str | None:
        try:
            return str(Path(self.run.dir).parent) if self.run is not None else None
        except Exception:
            return None

    def _guard(self, what: str, fn, *args, **kwargs) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:
            log.warning("W&B %s failed (%s); results are on disk", what, err)

    def summary(self, values: dict[str, Any]) -> None:
        def _set() -> None:
            for k, v in values.items():
                self.run.summary[k] = v

        self._guard("summary", _set)

    def _log(self, values: dict[str, Any]) -> None:
        """One W&B history point; in the job run at its next step (continuing across attempts)."""
        if self.joined and _JOB is not None:
            self.run.log(values, step=_JOB.next_step())
        else:
            self.run.log(values)

    def log(self, values: dict[str, Any]) -> None:
        self._guard("log", lambda: self._log(values))

    def series(self, x: str, rows: list[dict[str, Any]]) -> None:
        """Curves over `x` (e.g. the block): one history point per row, plotted against `x` by W&B's default
        workspace (define_metric), so the runs of a sweep overlay without custom panels."""
        def _s() -> None:
            prefix = x.rsplit("/", 1)[0]
            self.run.define_metric(x)
            self.run.define_metric(f"{prefix}/*", step_metric=x)
            for row in rows:
                self._log(row)

        self._guard("series", _s)

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        def _t() -> None:
            import wandb

            self._log({key: wandb.Table(columns=columns, data=rows)})

        self._guard("table", _t)

    def image(self, key: str, path: str | Path) -> None:
        def _i() -> None:
            import wandb

            self._log({key: wandb.Image(str(path))})

        self._guard("image", _i)

    def finish(self) -> None:
        """End the run (a joined job run stays open: job_run ends it when the job ends)."""
        if not self.joined:
            self._guard("finish", lambda: self.run.finish())
        self.run = None
