"""Atomic file writes shared by every step: a reader never sees a half-written file, and finished files get
the permissions a plain open() would (mkstemp makes 0600, which hides results and caches from colleagues
on a shared cluster)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from mspgt.errors import MspgtError


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str | Path, path: Path, directory: bool = False) -> None:
    """Set the usual permissions on a finished temp file (or folder) and rename it into place."""
    os.chmod(tmp, (0o777 if directory else 0o666) & ~umask())
    os.replace(tmp, path)


@contextmanager
def build_lock(lock_path: Path, timeout_s: float, what: str) -> Iterator[None]:
    """Hold the file lock `lock_path` while building the cache entry `what`, so that concurrent jobs (a
    Slurm array, two terminals) build it once: the others wait, then find it built. The lock is released
    on exit or when the process dies; the wait is bounded."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=timeout_s, poll_interval=0.5)
    except Timeout:
        raise MspgtError(
            f"waited {timeout_s:.0f} s for another job building {what}",
            f"wait for that job, raise the lock timeout, or delete {lock_path} if no job uses it",
        ) from None
    try:
        yield
    finally:
        lock.release()


def write_bytes_atomic(path: Path, data: bytes | memoryview) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    publish(tmp, path)


def _jsonable(x: Any) -> Any:
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    write_bytes_atomic(path, json.dumps(obj, indent=2, default=_jsonable).encode())
