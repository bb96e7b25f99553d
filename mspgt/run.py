"""Entry point: `python -m mspgt.run [group=choice ...]`, or `-m` for a sweep (local or Slurm launcher).

Composes conf/, runs the experiment the config names in the run's own output folder, and returns its
summary metrics (what a Hydra sweep collects). Every setting is validated first (mspgt/config_validation.py),
before any data or model is touched. A failing job leaves `error.txt` beside its logs; a bad input or a
full or read-only disk is one message naming the fix (exit 2), Ctrl-C one line (exit 130).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mspgt.config_validation import EXPERIMENTS, validate_config
from mspgt.errors import MspgtError

log = logging.getLogger("mspgt")

__all__ = ["EXPERIMENTS", "main", "run_dir", "run_experiment", "sweep_name"]

# File-system failures a user fixes (space, permissions), not bugs: told as one message naming the fix.
DISK_ERRORS = {errno.ENOSPC: "free space there", errno.EDQUOT: "free space there (disk quota)",
               errno.EROFS: "use a writable folder", errno.EACCES: "fix its permissions or use another folder"}


def run_dir() -> Path:
    """This job's output folder (each job of a sweep has its own)."""
    return Path(HydraConfig.get().runtime.output_dir)


def sweep_name() -> str | None:
    """The sweep's folder name for a multirun (used as the W&B group), else None."""
    hc = HydraConfig.get()
    if hc.mode is not None and hc.mode.name == "MULTIRUN":
        return Path(hc.sweep.dir).name
    return None


def run_experiment(cfg: DictConfig, out: Path | None = None, sweep: str | None = None) -> dict[str, Any]:
    """Run the experiment `cfg.experiment.name` in `out` (default: Hydra's run folder) and return its summary.
    `sweep` names the W&B group (default: the multirun folder's name, None for a single run)."""
    if out is None:
        out, sweep = run_dir(), sweep_name()
    out.mkdir(parents=True, exist_ok=True)
    (out / "error.txt").unlink(missing_ok=True)  # a stale error from an earlier attempt (requeue, rerun)
    try:
        validate_config(cfg, out)  # every setting and folder, before any data or model
        if cfg.experiment.name == "boundary":
            from mspgt.experiments.boundary import run_boundary

            return run_boundary(cfg, out, sweep=sweep)
        if cfg.experiment.name == "fisher":
            from mspgt.experiments.fisher import run_fisher

            return run_fisher(cfg, out, sweep=sweep)
        from mspgt.experiments.intervention import run_intervention

        return run_intervention(cfg, out, sweep=sweep)
    except OSError as err:
        if err.errno not in DISK_ERRORS:
            (out / "error.txt").write_text(traceback.format_exc())
            raise
        clear = MspgtError(f"{err.filename or 'a file'}: {err.strerror}",
                           f"{DISK_ERRORS[err.errno]}, then run the same command again (a finished cache entry "
                           "or chunk is reused)")
        _record(out, clear)
        raise clear from None
    except MspgtError as err:
        _record(out, err)
        raise
    except KeyboardInterrupt:
        raise
    except BaseException:
        (out / "error.txt").write_text(traceback.format_exc())
        raise


def _record(out: Path, err: MspgtError) -> None:
    with contextlib.suppress(OSError):  # the run folder cannot be written: the log line still says it
        (out / "error.txt").write_text(f"{err}\n")
    log.error("%s", err)


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    try:
        return run_experiment(cfg)
    except MspgtError:
        if HydraConfig.get().mode == RunMode.RUN:  # a single run: the message (logged above), no traceback
            sys.exit(2)
        raise  # a sweep job: the launcher reports the failed job
    except KeyboardInterrupt:
        # Ctrl-C: one line, the shell's exit code for SIGINT; finished cache chunks are kept for a re-run
        log.error("interrupted (Ctrl-C): finished cache chunks are kept; run the same command to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
