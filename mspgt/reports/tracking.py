"""Weights & Biases tracking that never fails a job: every W&B call is guarded, results live on disk anyway.

Offline by default: the run files are written under the run's output folder (`<run dir>/wandb/`) and can be
uploaded later with `wandb sync <run dir>/wandb/offline-run-*`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger(__name__)


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
    ) -> None:
        self.run = None
        self.mode = cfg.mode
        self.run_dir = Path(run_dir)
        if cfg.mode == "disabled":
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
                reinit="finish_previous",
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

    def log(self, values: dict[str, Any]) -> None:
        self._guard("log", lambda: self.run.log(values))

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        def _t() -> None:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows)})

        self._guard("table", _t)

    def image(self, key: str, path: str | Path) -> None:
        def _i() -> None:
            import wandb

            self.run.log({key: wandb.Image(str(path))})

        self._guard("image", _i)

    def finish(self) -> None:
        self._guard("finish", lambda: self.run.finish())
        self.run = None
