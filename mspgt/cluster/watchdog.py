"""A bounded wait on a sweep's Slurm jobs (our design).

hydra-submitit-launcher waits on each job until submitit sees its result file or learns from `sacct` that
the job ended. Two cases make that wait endless: a job Slurm can never start (pending with a reason such
as PartitionTimeLimit, on clusters without EnforcePartLimits), and a job Slurm killed (time limit, scancel,
node failure, out of memory) on a cluster without accounting, where `sacct` says nothing. The watchdog
polls `squeue` (with a timeout) in a daemon thread and reports such a job, so the sweep ends with an error
naming it: it cancels a job that can never start; it reports a job that ended without a result after
`grace_s` (time for a shared file system to show a result file written at the last moment).
A requeued job (preemption, timeout with requeue) is pending or running again, so it is never reported.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from submitit.core.utils import JobPaths

from mspgt.cluster.slurm import slurm_command
from mspgt.errors import MspgtError

log = logging.getLogger(__name__)

# Pending reasons that no amount of waiting resolves: the job asks for more than its partition, account
# or QoS allows (Slurm's job_reason codes).
HOPELESS_REASONS = frozenset({
    "BadConstraints", "PartitionNodeLimit", "PartitionTimeLimit", "InvalidAccount", "InvalidQOS",
    "DependencyNeverSatisfied", "QOSMaxCpuPerJobLimit", "QOSMaxGRESPerJob", "QOSMaxMemoryPerJob",
    "QOSMaxNodePerJobLimit", "QOSMaxWallDurationPerJobLimit", "QOSMinGRES", "QOSMinCpuNotSatisfied",
    "AssocMaxCpuPerJobLimit", "AssocMaxGRESPerJob", "AssocMaxMemPerJob", "AssocMaxNodePerJobLimit",
    "AssocMaxWallDurationPerJobLimit",
})
# States of a job that will not run again (squeue -t all shows them for MinJobAge seconds).
ENDED_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
    "PREEMPTED", "SPECIAL_EXIT", "REVOKED",
})
SQUEUE_FORMAT = "%i|%T|%r"
JOB_ID = re.compile(r"^(\d+(?:_\d+)?)_submitted\.pkl$")


def classify(state: str | None, reason: str, has_result: bool) -> str:
    """'ok', 'hopeless' (pending forever) or 'ended' (gone without a result) for one job.

    `state` None: squeue no longer lists the job.
    """
    if has_result:
        return "ok"
    if state is None or state.split()[0] in ENDED_STATES:
        return "ended"
    if state == "PENDING" and reason in HOPELESS_REASONS:
        return "hopeless"
    return "ok"


def parse_squeue(text: str) -> dict[str, tuple[str, str]]:
    """`squeue -h -r -o SQUEUE_FORMAT` lines into {job id: (state, reason)}."""
    table: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            table[parts[0]] = (parts[1], parts[2])
    return table


def submitit_root(folder_pattern: str) -> Path:
    """The folder holding every job's submitit files: the pattern's part before the job id (`%j`)."""
    if "%j" not in folder_pattern:
        return Path(folder_pattern)
    head = folder_pattern.split("%j")[0]
    return Path(head) if head.endswith("/") else Path(head).parent


class SweepWatchdog:
    """Polls the sweep's jobs in a daemon thread; calls `on_failure(message)` once for a job that cannot end."""

    def __init__(
        self,
        folder_pattern: str,
        on_failure: Callable[[str], None],
        poll_s: float = 15.0,
        grace_s: float = 60.0,
        controller_timeout_s: float = 600.0,
        command_timeout_s: float = 30.0,
    ) -> None:
        if poll_s <= 0 or grace_s < 0 or controller_timeout_s <= 0 or command_timeout_s <= 0:
            raise MspgtError(f"watchdog settings out of range: poll_s={poll_s}, grace_s={grace_s}, "
                             f"controller_timeout_s={controller_timeout_s}, command_timeout_s={command_timeout_s}",
                             "use poll_s > 0, grace_s >= 0, controller_timeout_s > 0, command_timeout_s > 0")
        self.folder_pattern = folder_pattern
        self.root = submitit_root(folder_pattern)
        self.on_failure = on_failure
        self.poll_s = poll_s
        self.grace_s = grace_s
        self.controller_timeout_s = controller_timeout_s
        self.command_timeout_s = command_timeout_s
        self._ended_since: dict[str, float] = {}
        self._controller_lost_since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one poll (tested directly) ----------------------------------------------------------------
    def job_ids(self) -> list[str]:
        """Ids of the jobs submitted so far (submitit writes `<id>_submitted.pkl` for each)."""
        if not self.root.is_dir():
            return []
        return sorted({m.group(1) for p in self.root.rglob("*_submitted.pkl") if (m := JOB_ID.match(p.name))})

    def paths(self, job_id: str) -> JobPaths:
        return JobPaths(self.folder_pattern, job_id=job_id, task_id=0)

    def check_once(self, now: float | None = None) -> str | None:
        """One poll: a failure message for the first job that cannot end, else None."""
        now = time.time() if now is None else now
        waiting = [j for j in self.job_ids() if not self.paths(j).result_pickle.exists()]
        if not waiting:
            return None
        try:
            proc = slurm_command(["squeue", "-h", "-r", "-t", "all", "-u", str(os.getuid()), "-o", SQUEUE_FORMAT],
                                 self.command_timeout_s)
            ok = proc.returncode == 0
        except MspgtError:
            ok = False
        if not ok:
            self._controller_lost_since = self._controller_lost_since or now
            if now - self._controller_lost_since >= self.controller_timeout_s:
                return (f"the Slurm controller has not answered `squeue` for {now - self._controller_lost_since:.0f} s "
                        f"while {len(waiting)} job(s) of the sweep had no result (jobs: {', '.join(waiting)})")
            return None
        self._controller_lost_since = None
        table = parse_squeue(proc.stdout)
        for job_id in waiting:
            state, reason = table.get(job_id, (None, ""))
            verdict = classify(state, reason, self.paths(job_id).result_pickle.exists())
            if verdict == "hopeless":
                slurm_command(["scancel", job_id], self.command_timeout_s)
                return (f"Slurm job {job_id} can never start (pending, reason {reason}): it asks for more than its "
                        "partition, account or QoS allows; it was cancelled")
            if verdict == "ended":
                since = self._ended_since.setdefault(job_id, now)
                if now - since >= self.grace_s:
                    return self._ended_message(job_id, state)
            else:
                self._ended_since.pop(job_id, None)
        return None

    def _ended_message(self, job_id: str, state: str | None) -> str:
        paths = self.paths(job_id)
        tail = ""
        for log_file in (paths.stderr, paths.stdout):
            if log_file.exists():
                lines = log_file.read_text(errors="replace").splitlines()[-15:]
                tail = f"\nlast lines of {log_file}:\n" + "\n".join(lines)
                break
        what = f"in state {state}" if state else "(no longer listed by squeue)"
        return (f"Slurm job {job_id} ended {what} without a result: Slurm stopped it (time limit, scancel, node "
                f"failure or out of memory) and did not requeue it. Logs: {paths.stdout.parent}{tail}")

    # -- thread ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                message = self.check_once()
            except Exception as err:  # a bug here must not kill the sweep: the wait just loses its bound
                log.warning("Slurm watchdog stopped after an error: %s", err)
                return
            if message is not None:
                log.error("%s", message)
                self.on_failure(message)
                return

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="mspgt-slurm-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.command_timeout_s + 5)
