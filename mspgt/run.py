"""Entry point: `python -m mspgt.run [group=choice ...]`, or `-m` for a sweep (local or Slurm launcher).

Composes conf/, runs the experiment the config names in the run's own output folder, and returns its
summary metrics (what a Hydra sweep collects). Every setting is validated first (mspgt/config_validation.py),
before any data or model is touched. A failing job leaves `error.txt` beside its logs; a bad input or a
full or read-only disk is one message naming the fix (exit 2), Ctrl-C one line (exit 130), SIGTERM (`kill`,
`scancel` and a time limit outside submitit) the same line (exit 143).

In a sweep, a failed job is recorded (error.txt, the log) and returned as failed instead of raised: Hydra's
sweeper would stop at the first failed job and skip the end of the sweep, so the sweep always ends with its
summary (sweep_summary.md lists each failed job with its one-line error) and then exits 1
(mspgt/cluster/callbacks.py SweepSummary). One place decides what a failed job leaves behind, as
lightning-hydra-template's task_wrapper does.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mspgt.config_validation import EXPERIMENTS, validate_config
from mspgt.errors import MspgtError
from mspgt.reports.tracking import job_run, job_run_id

log = logging.getLogger("mspgt")

__all__ = ["EXPERIMENTS", "FAILED", "main", "run_dir", "run_experiment", "sweep_name"]

# File-system failures a user fixes (space, permissions), not bugs: told as one message naming the fix.
DISK_ERRORS = {errno.ENOSPC: "free space there", errno.EDQUOT: "free space there (disk quota)",
               errno.EROFS: "use a writable folder", errno.EACCES: "fix its permissions or use another folder"}


FAILED = "failed"  # the key of a failed sweep job's return value: {"failed": its one-line error}
INTERRUPTED = "interrupted ({}): finished cache chunks are kept; run the same command to resume"


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
        with job_run(cfg, out, job_run_id(cfg, sweep, _job_number(sweep)), sweep):  # W&B, live from here on
            return _experiment(cfg, out, sweep)
    except OSError as err:
        if err.errno not in DISK_ERRORS:
            (out / "error.txt").write_text(traceback.format_exc())
            raise
        clear = disk_error(err.errno, err.strerror, err.filename, cfg, out)
        _record(out, clear)
        raise clear from None
    except MspgtError as err:
        _record(out, err)
        raise
    except KeyboardInterrupt:
        raise
    except Exception as err:
        if "No space left on device" in str(err):  # a library's own error (the tokenizers' Rust side): no errno
            clear = disk_error(errno.ENOSPC, "No space left on device", None, cfg, out)
            _record(out, clear)
            raise clear from None
        (out / "error.txt").write_text(traceback.format_exc())
        raise
    except BaseException:
        (out / "error.txt").write_text(traceback.format_exc())
        raise


def disk_error(code: int, strerror: str | None, filename: str | None, cfg: DictConfig, out: Path) -> MspgtError:
    """A full or read-only disk as one message: the file, or (where the error has none) the folders written."""
    where = filename or (f"writing under the cache {OmegaConf.select(cfg, 'paths.cache_dir')} or the run folder "
                         f"{out}")
    return MspgtError(f"{where}: {strerror}", f"{DISK_ERRORS[code]}, then run the same command again (a finished "
                      "cache entry or chunk is reused)")


def _experiment(cfg: DictConfig, out: Path, sweep: str | None) -> dict[str, Any]:
    if cfg.experiment.name == "boundary":
        from mspgt.experiments.boundary import run_boundary

        return run_boundary(cfg, out, sweep=sweep)
    if cfg.experiment.name == "fisher":
        from mspgt.experiments.fisher import run_fisher

        return run_fisher(cfg, out, sweep=sweep)
    from mspgt.experiments.intervention import run_intervention

    return run_intervention(cfg, out, sweep=sweep)


def _job_number(sweep: str | None) -> int | None:
    """This job's number in its sweep (Hydra's hydra.job.num), None outside a sweep."""
    if sweep is None or not HydraConfig.initialized():
        return None
    return OmegaConf.select(HydraConfig.get(), "job.num", default=None)


def _record(out: Path, err: MspgtError) -> None:
    with contextlib.suppress(OSError):  # the run folder cannot be written: the log line still says it
        (out / "error.txt").write_text(f"{err}\n")
    log.error("%s", err)


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    single = HydraConfig.get().mode == RunMode.RUN
    try:
        with _sigterm_as_interrupt():
            return run_experiment(cfg)
    except MspgtError as err:
        if single:  # a single run: the message (logged above), no traceback
            sys.exit(2)
        return _failed_job(err)
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: one line, the shell's exit code for the signal; finished cache chunks are kept
        signum = _TERMINATED[-1] if _TERMINATED else signal.SIGINT
        log.error(INTERRUPTED.format("Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name))
        sys.exit(128 + signum)
    except SystemExit:
        raise
    except BaseException as err:  # an Exception, or a library's panic (pyo3's PanicException is a BaseException)
        if single:
            raise
        log.exception("job failed (its traceback is in error.txt)")
        return _failed_job(err)


def _failed_job(err: BaseException) -> dict[str, Any]:
    """A sweep job's failure as its return value: the sweep goes on and ends with its summary (which reads
    error.txt), then exits 1 (SweepSummary)."""
    return {FAILED: one_line(err)}


def one_line(err: BaseException) -> str:
    """An error as one line: an MspgtError's problem and fix, else `Type: message`."""
    if isinstance(err, MspgtError):
        return f"{err.problem} (fix: {err.fix})"
    return f"{type(err).__name__}: {err}".splitlines()[0]


_TERMINATED: list[int] = []  # the SIGTERM received, if any (told apart from Ctrl-C by its exit code)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt while the job runs: the same cleanup and line as Ctrl-C, exit 143. Not inside a submitit job: there
    submitit owns the signals (SIGTERM is bypassed so that its USR2 handler can checkpoint and requeue)."""
    if "SUBMITIT_EXECUTOR" in os.environ:
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        _TERMINATED.append(signum)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave the signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# Hydra's flags that take the next word as their value (python -m mspgt.run --help lists them)
_FLAGS_WITH_VALUE = {"-c", "--cfg", "-p", "--package", "-cp", "--config-path", "-cn", "--config-name", "-cd",
                     "--config-dir", "--experimental-rerun", "-i", "--info"}


def unquoted_value(argv: list[str]) -> str | None:
    """A word that is not `key=value` right after an override: a value with spaces that was not quoted
    (`data.path=/my corpus.txt`). Hydra would stop at it with its lexer's error and no hint."""
    for before, word in zip(argv, argv[1:], strict=False):
        if "=" not in word and not word.startswith("-") and "=" in before and before not in _FLAGS_WITH_VALUE:
            return f"{before} {word}"
    return None


if __name__ == "__main__":
    if (glued := unquoted_value(sys.argv[1:])) is not None:
        key, _, value = glued.partition("=")
        print(f"[mspgt][ERROR] - `{glued}`: a value with spaces must be quoted\n  fix: quote it for the shell and "
              f"for Hydra, e.g. '{key}=\"{value}\"'", file=sys.stderr)
        sys.exit(2)
    main()
