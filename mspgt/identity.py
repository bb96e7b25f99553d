"""Content identity of input files: what a cache or a store is keyed by instead of a path (our definition).

`file_sha256(path)` is the SHA-256 of the file's bytes. A full read of a large file (model weights) on every
run would be slow, so the digest is remembered beside the cache, keyed by the file's stat signature: its
resolved path, size, mtime, ctime and inode. Editing a file in place, copying another over it, or restoring
an old mtime (`cp -p`, `touch -d`) all change the ctime, which no user tool can set back, so a remembered
digest is used only for the very bytes it was computed from; on any change the file is hashed again.
Without a memo folder (or where it cannot be written) the file is simply hashed every time. The one
place for a file's identity: corpus files (mspgt/reports/store.py) and model weights, GGUF files and
checkpoint folders (mspgt/model/identity.py, memo under `<paths.cache_dir>/identity/`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from mspgt.files import sha256_of_stream, write_bytes_atomic

log = logging.getLogger(__name__)

_CHUNK = 1 << 22  # 4 MiB reads
_memo: dict[tuple, str] = {}  # stat signature -> sha256, within one process


def _signature(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def sha256_of(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in full (no memo)."""
    with open(path, "rb") as f:
        return sha256_of_stream(f, _CHUNK)


def _hash(path: Path) -> str:
    size = path.stat().st_size
    if size > 1 << 28:
        log.info("hashing %s (%.1f GB; once, while the file stays unchanged)", path, size / 1e9)
    return sha256_of(path)


def file_sha256(path: str | Path, memo_dir: str | Path | None = None) -> str:
    """The SHA-256 of the file's contents; remembered per stat signature in this process and, given
    `memo_dir`, across runs (one small JSON per file under `memo_dir`)."""
    path = Path(path)
    sig = _signature(path)
    if sig in _memo:
        return _memo[sig]
    memo_file = None
    if memo_dir is not None:
        memo_file = Path(memo_dir) / f"{hashlib.sha256(sig[0].encode()).hexdigest()[:24]}.json"
        try:
            found = json.loads(memo_file.read_text())
            if tuple(found["signature"]) == sig:
                _memo[sig] = found["sha256"]
                return found["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    digest = _hash(path)
    if _signature(path) != sig:  # changed while we read it: remember nothing
        return _hash(path)
    _memo[sig] = digest
    if memo_file is not None:
        try:
            write_bytes_atomic(memo_file, json.dumps({"signature": list(sig), "sha256": digest}).encode())
        except OSError as err:  # a read-only cache: the digest is still right, only not remembered
            log.debug("cannot remember the digest of %s in %s: %s", path, memo_dir, err)
    return digest


def files_sha256(paths: list[Path], memo_dir: str | Path | None = None) -> str:
    """One digest for an ordered list of files (a folder of corpus files): names and contents."""
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{Path(p).name}\0{file_sha256(p, memo_dir)}\n".encode())
    return h.hexdigest()


def memo_dir_for(cache_dir: str | Path | None) -> Path | None:
    """Where digests are remembered: `<paths.cache_dir>/identity` (None: not remembered)."""
    return None if cache_dir is None else Path(cache_dir) / "identity"


__all__ = ["file_sha256", "files_sha256", "memo_dir_for", "sha256_of"]
