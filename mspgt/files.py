"""Atomic file writes shared by every step: a reader never sees a half-written file, and finished files get
the permissions a plain open() would (mkstemp makes 0600, which hides results and caches from colleagues
on a shared cluster)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from filelock import FileLock, Timeout

from mspgt.errors import MspgtError

log = logging.getLogger(__name__)

T = TypeVar("T")

# How often a job waiting for a lock says so (seconds). MSPGT_LOCK_LOG_S overrides it (tests use 1 s).
LOCK_LOG_INTERVAL_S = 60.0


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str | Path, path: Path, directory: bool = False) -> None:
    """Set the usual permissions on a finished temp file (or folder) and rename it into place."""
    os.chmod(tmp, (0o777 if directory else 0o666) & ~umask())
    os.replace(tmp, path)


def _holder(lock_path: Path) -> str:
    """Who holds a lock, as its holder wrote it beside the lock (best effort)."""
    try:
        return lock_path.with_name(lock_path.name + ".holder").read_text().strip() or "an unknown job"
    except OSError:
        return "an unknown job"


@contextmanager
def build_lock(lock_path: Path, timeout_s: float, what: str) -> Iterator[None]:
    """Hold the file lock `lock_path` while building the cache entry `what`, so that concurrent jobs (a
    Slurm array, two terminals) build it once: the others wait, then find it built. The lock is released
    on exit or when the process dies; the wait is bounded, and a waiting job logs who holds the lock and how
    long it has waited, at once and then every LOCK_LOG_INTERVAL_S."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path))
    interval = float(os.environ.get("MSPGT_LOCK_LOG_S", LOCK_LOG_INTERVAL_S))
    start = time.monotonic()
    try:
        lock.acquire(timeout=0)
    except Timeout:
        while True:
            waited = time.monotonic() - start
            log.info("waiting for %s: the lock %s is held by %s (waited %.0f s of at most %.0f s)",
                     what, lock_path, _holder(lock_path), waited, timeout_s)
            try:
                lock.acquire(timeout=max(0.0, min(interval, timeout_s - waited)), poll_interval=0.5)
                break
            except Timeout:
                if time.monotonic() - start >= timeout_s:
                    raise MspgtError(
                        f"waited {timeout_s:.0f} s for another job building {what} (held by {_holder(lock_path)})",
                        f"wait for that job, raise the lock timeout (extraction.lock_timeout_s), or delete "
                        f"{lock_path} if no job uses it",
                    ) from None
    except OSError as err:  # a folder or an unwritable (immutable, foreign) file where the lock file goes
        raise MspgtError(f"the lock file {lock_path} of {what} cannot be used: {err.strerror or err}",
                         f"{_lock_fix(lock_path, err)}, then run the same command again (finished cache "
                         "chunks are kept)") from None
    holder = lock_path.with_name(lock_path.name + ".holder")
    with contextlib.suppress(OSError):  # who holds it is a courtesy to waiting jobs, not needed for correctness
        holder.write_text(f"pid {os.getpid()} on {socket.gethostname()} since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC\n")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            holder.unlink(missing_ok=True)
        lock.release()


def _lock_fix(lock_path: Path, err: OSError) -> str:
    """How to free the place of a lock file that cannot be opened (`err`): a folder, an immutable file, a file
    of another user."""
    if lock_path.is_dir():
        return f"remove the folder where the lock file goes: `rm -rf {lock_path}` (only a lock file belongs there)"
    if err.errno == errno.EPERM:  # immutable or append-only (chattr +i/+a): even root cannot open it for writing
        return f"it is immutable (`lsattr {lock_path}` shows an i): `chattr -i {lock_path}` (as root)"
    return f"let this user write it (`chmod u+w {lock_path}`, or ask its owner) or remove it (`rm -f {lock_path}`)"


def writable_folder(path: Path) -> str | None:
    """None if `path` is (or can be made) a folder we can write into; else why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".mspgt-write-check-")
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        return "a file is in the way (it is not a folder)"
    except NotADirectoryError:
        return "a file is in the way of one of its parent folders"
    except OSError as err:
        return err.strerror or str(err)
    return None


def build_once(target: Path, load: Callable[[], T | None], build: Callable[[], T], timeout_s: float, what: str) -> T:
    """The one build-once-under-a-lock pattern of the caches: `load()` the entry `target` if it is there; else
    take its lock (`<target>.lock`, see `build_lock`), `load()` again (another job may have built it while we
    waited) and only then `build()` it."""
    if (found := load()) is not None:
        return found
    with build_lock(target.with_name(target.name + ".lock"), timeout_s, what):
        if (found := load()) is not None:
            return found
        return build()


def publish_folder(target: Path, fill: Callable[[Path], None], marker: str) -> None:
    """Fill a temp folder beside `target` (`fill(tmp)`), mark it complete (`mspgt-complete` holding `marker`)
    and rename it into place, replacing an unreadable old copy (the caller holds the entry's lock)."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        fill(tmp)
        (tmp / "mspgt-complete").write_text(marker)
    except BaseException as err:  # a full disk, Ctrl-C: no half-filled temp folder left behind
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Exception) and not isinstance(err, OSError) and NO_SPACE in str(err):
            # a library's own error without an errno (the tokenizers' Rust side: `Exception: No space left ...`)
            raise OSError(errno.ENOSPC, NO_SPACE, str(target)) from err
        _raise_naming(err, target)
    shutil.rmtree(target, ignore_errors=True)
    publish(tmp, target, directory=True)


NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"


def _raise_naming(err: BaseException, path: Path) -> NoReturn:
    """Raise `err`, or where it is an OSError that names no file (a write into an open file: a full disk), the
    same error naming `path`, so that the message says which file could not be written."""
    if isinstance(err, OSError) and err.filename is None and err.errno is not None:
        raise OSError(err.errno, err.strerror, str(path)) from err
    raise err


def write_bytes_atomic(path: Path, data: bytes | memoryview) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        publish(tmp, path)
    except BaseException as err:  # a full disk: no temp file left behind, and the message names the file
        Path(tmp).unlink(missing_ok=True)
        _raise_naming(err, path)


class _Sha256Stream(io.RawIOBase):
    """A write-only, unseekable stream into `file` that hashes what passes through (zip writers then stream
    their entries with data descriptors instead of seeking back)."""

    def __init__(self, file: io.BufferedWriter) -> None:
        self.file, self.sha256 = file, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        self.sha256.update(data)
        return self.file.write(data)


def sha256_of_stream(f: io.BufferedIOBase | io.RawIOBase, block: int = 1 << 24) -> str:
    """SHA-256 of the rest of the open binary file `f`, read in pieces of `block` bytes into one reused
    buffer (no copy of the whole content in memory)."""
    digest, buffer = hashlib.sha256(), memoryview(bytearray(block))
    while n := f.readinto(buffer):
        digest.update(buffer[:n])
    return digest.hexdigest()


def write_stream_atomic(path: Path, fill: Callable[[io.RawIOBase], None]) -> str:
    """Write a file atomically by streaming into it (`fill(stream)`), and return the SHA-256 of its bytes:
    one pass, no copy of the whole content in memory (a cache chunk is hundreds of MB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            stream = _Sha256Stream(f)
            fill(stream)
        publish(tmp, path)
    except BaseException as err:  # a full disk: no temp file left behind, and the message names the file
        Path(tmp).unlink(missing_ok=True)
        _raise_naming(err, path)
    return stream.sha256.hexdigest()


def json_safe(obj: Any) -> Any:
    """The one NaN policy of every JSON mspgt writes: NaN and +-inf become None (strict JSON, null); numpy
    scalars and arrays become Python numbers and lists, tuples lists, paths strings, dict keys strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars
        return json_safe(obj.tolist())
    return obj


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename), strict: NaN and inf as null (`json_safe`)."""
    write_bytes_atomic(path, json.dumps(json_safe(obj), indent=2, allow_nan=False).encode())
