"""On-disk cache of extraction statistics: per-chunk files, atomic writes, checksums, one builder at a time.

Layout of one entry (`<cache_dir>/stats/<key>/`):
- `manifest.json`: everything the key was made from (model weights id, data identity, settings, version);
- `chunk_00000.npz` ...: the statistics of consecutive groups, each written to a temp file and renamed;
- `chunk_00000.sha256` ...: the checksum of each chunk, written after it;
- `.lock`: a file lock held while building, so two jobs needing the same entry never both write it;
- `probes-<key>.pkl` (+ `.sha256`, `.probes-<key>.lock`): probes trained on these statistics, under their lock.
A complete entry on a read-only mount is read without any lock (nothing is written then).
A run killed mid-extraction leaves whole chunks behind and resumes after the last one. A chunk whose
checksum does not match, or that does not load, is deleted and recomputed: never silently used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pickle
import zipfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any

import numpy as np

from mspgt.files import build_lock, sha256_of_stream, write_bytes_atomic, write_stream_atomic

log = logging.getLogger(__name__)


def key_of(material: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:20]


class StatisticsCache:
    """One cache entry, identified by the hash of `material`."""

    def __init__(self, root: str | Path, material: dict[str, Any]) -> None:
        self.material = material
        self.key = key_of(material)
        self.dir = Path(root) / "stats" / self.key
        self.n_chunks: int | None = None

    # -- locking -----------------------------------------------------------------------------------
    def lock(self, timeout_s: float) -> AbstractContextManager[None]:
        """Hold the entry's build lock (released on exit or if the process dies). The wait is bounded
        (extraction.lock_timeout_s)."""
        return build_lock(self.dir / ".lock", timeout_s, f"the statistics cache {self.dir}")

    # -- manifest ----------------------------------------------------------------------------------
    def _read_manifest(self) -> dict | None:
        try:
            return json.loads((self.dir / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def is_complete(self) -> bool:
        """Every chunk the manifest announces is there (checksums are verified when loaded)."""
        found = self._read_manifest()
        if not found or found.get("material") != json.loads(json.dumps(self.material, default=str)):
            return False
        self.n_chunks = int(found["n_chunks"])
        return len(self.done_chunks()) == self.n_chunks

    def info(self) -> dict[str, Any]:
        """What the builder recorded beside the chunks (label names, number of blocks, ...)."""
        return (self._read_manifest() or {}).get("info", {})

    def check_manifest(self, n_chunks: int, info: dict[str, Any]) -> None:
        """Write the manifest, or make sure the one there describes the same statistics."""
        self.n_chunks = n_chunks
        for stale in self.dir.glob(".chunk_*"):  # temp files of a builder that was killed mid-write
            stale.unlink(missing_ok=True)
        path = self.dir / "manifest.json"
        wanted = {"material": self.material, "n_chunks": self.n_chunks, "info": info}
        if path.exists():
            try:
                found = json.loads(path.read_text())
            except json.JSONDecodeError:
                found = None
            if found == json.loads(json.dumps(wanted, default=str)):
                return
            log.warning("cache %s has a mismatched or corrupt manifest: clearing it", self.dir)
            # the chunks and everything derived from them (trained probes): never reused for new statistics
            for f in [*self.dir.glob("chunk_*"), *self.dir.glob("*.pkl"), *self.dir.glob("*.sha256")]:
                f.unlink(missing_ok=True)
        write_bytes_atomic(path, json.dumps(wanted, indent=2, default=str).encode())

    # -- chunks ------------------------------------------------------------------------------------
    def chunk_path(self, i: int) -> Path:
        return self.dir / f"chunk_{i:05d}.npz"

    def load_chunk(self, i: int, into: dict[str, np.ndarray] | None = None,
                   groups: tuple[int, int] | None = None) -> dict[str, np.ndarray] | None:
        """A verified chunk, or None (missing; or corrupt, or holding other groups than `groups` = (lo, hi):
        then deleted so it is rebuilt).

        `into`: arrays (by name) to read those members straight into, e.g. slices of the assembled corpus
        arrays (assemble.py), so the largest members are copied once, not parsed and then concatenated;
        a member whose shape or dtype differs from its destination makes the chunk corrupt."""
        path, digest = self.chunk_path(i), self.chunk_path(i).with_suffix(".sha256")
        if not path.exists() or not digest.exists():
            return None
        try:
            with path.open("rb") as f:  # hashed, then parsed, through one open file: the bytes that were checked
                if sha256_of_stream(f, _READ_BYTES) != digest.read_text().strip():
                    raise ValueError("checksum mismatch")
                f.seek(0)
                chunk = read_npz(f, into or {})
            if groups is not None and (problem := chunk_range_problem(chunk, *groups)):
                raise ValueError(problem)
            return chunk
        except Exception as err:
            self._discard(path, err)
            return None

    def chunk_headers(self, i: int, names: list[str]) -> dict[str, tuple[tuple[int, ...], np.dtype]] | None:
        """(shape, dtype) of the named members of chunk i, from their headers only (nothing else is read;
        the chunk is verified when loaded); None when the chunk is missing, or unreadable (then deleted)."""
        path = self.chunk_path(i)
        if not path.exists():
            return None
        try:
            with zipfile.ZipFile(path) as z:
                headers = {}
                for name in names:
                    with z.open(f"{name}.npy") as f:
                        shape, _, dtype = _npy_header(f)
                        headers[name] = (shape, dtype)
                return headers
        except Exception as err:
            self._discard(path, err)
            return None

    def discard_chunk(self, i: int, err: Exception) -> None:
        """Delete chunk i (found corrupt for `err`), so it is rebuilt."""
        self._discard(self.chunk_path(i), err)

    def _discard(self, path: Path, err: Exception) -> None:
        log.warning("cache chunk %s is corrupt (%s): it will be recomputed", path, err)
        with contextlib.suppress(OSError):  # a read-only cache: not used, and a clear error follows
            path.unlink(missing_ok=True)
            path.with_suffix(".sha256").unlink(missing_ok=True)

    def save_chunk(self, i: int, arrays: dict[str, np.ndarray]) -> None:
        """Write a chunk atomically, then its checksum (a chunk without one is not finished). Streamed to the
        file and hashed on the way: no in-memory copy, no second read (a chunk is up to hundreds of MB, most
        of it the probe sample; the copy cost the pass ~0.3-1.5 s of a core per chunk)."""
        path = self.chunk_path(i)
        digest = write_stream_atomic(path, lambda stream: savez_stream(stream, arrays))
        write_bytes_atomic(path.with_suffix(".sha256"), digest.encode())

    # -- derived artifacts (trained probes): keyed by their own settings, checksummed like chunks ---------
    def artifact_path(self, name: str, settings: dict[str, Any]) -> Path:
        return self.dir / f"{name}-{key_of(settings)}.pkl"

    def load_artifact(self, name: str, settings: dict[str, Any]) -> Any | None:
        """A verified artifact this cache entry holds for these settings, or None (missing or corrupt)."""
        path = self.artifact_path(name, settings)
        digest = path.with_suffix(".sha256")
        if not path.exists() or not digest.exists():
            return None
        try:
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != digest.read_text().strip():
                raise ValueError("checksum mismatch")
            return pickle.loads(data)  # our own file, checksummed: never a foreign pickle
        except Exception as err:
            log.warning("cached %s %s is corrupt (%s): recomputing it", name, path, err)
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
                digest.unlink(missing_ok=True)
            return None

    def artifact_lock(self, name: str, settings: dict[str, Any], timeout_s: float) -> AbstractContextManager[None]:
        """The build lock of one artifact: two jobs needing the same probes train them once."""
        path = self.artifact_path(name, settings)
        return build_lock(path.with_name(f".{path.stem}.lock"), timeout_s, f"the {name} {path}")

    def save_artifact(self, name: str, settings: dict[str, Any], obj: Any) -> None:
        path = self.artifact_path(name, settings)
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        write_bytes_atomic(path, data)
        write_bytes_atomic(path.with_suffix(".sha256"), hashlib.sha256(data).hexdigest().encode())

    def done_chunks(self) -> list[int]:
        n = self.n_chunks or 0
        return [i for i in range(n) if self.chunk_path(i).with_suffix(".sha256").exists()]


def chunk_range_problem(chunk: dict[str, np.ndarray], lo: int, hi: int) -> str | None:
    """Why `chunk` does not hold groups lo..hi-1 (a chunk moved with its checksum), or None. Read from its
    `group_range` member, and from the group numbers of its probe words (chunks written before the member)."""
    if "group_range" in chunk and [int(x) for x in chunk["group_range"]] != [lo, hi]:
        return f"holds groups {chunk['group_range'].tolist()}, expected [{lo}, {hi}]"
    for name, values in chunk.items():
        if name.endswith("_group") and values.size and not (lo <= int(values.min()) and int(values.max()) < hi):
            return f"{name} holds groups {int(values.min())}..{int(values.max())}, expected {lo}..{hi - 1}"
    for name in ("info_ntok", "bi_count", "lens_count"):
        if name in chunk and len(chunk[name]) != hi - lo:
            return f"{name} has {len(chunk[name])} groups, expected {hi - lo}"
    return None


def _npy_header(f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy stream `f`, which is left at the start of the data."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f".npy format version {version} is not one np.savez writes")


_READ_BYTES = 1 << 24  # files are read in pieces of 16 MiB: no temporary of a whole chunk or member


def read_npz(file: IO[bytes], into: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays of the .npz `file` (seekable; never pickles); members named in `into` are read straight
    into those arrays (C-contiguous, the member's shape and dtype) and returned as them."""
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(file) as z:
        for member in z.namelist():
            name = member.removesuffix(".npy")
            with z.open(member) as f:
                shape, fortran, dtype = _npy_header(f)
                if dtype.hasobject:
                    raise ValueError(f"member {name} holds Python objects, which a cache chunk never does")
                dest = into.get(name)
                if dest is None:
                    dest = np.empty(shape[::-1] if fortran else shape, dtype)
                elif dest.shape != tuple(shape) or dest.dtype != dtype or fortran or not dest.flags.c_contiguous:
                    raise ValueError(f"member {name} is {dtype}{list(shape)}, its destination "
                                     f"{dest.dtype}{list(dest.shape)}")
                view = memoryview(dest.reshape(-1).view(np.uint8))  # dest's own bytes
                at = 0
                while at < len(view):
                    n = f.readinto(view[at : at + _READ_BYTES])
                    if not n:
                        raise ValueError(f"member {name} ends after {at} of {len(view)} bytes")
                    at += n
                out[name] = dest.T if fortran else dest
    return out


def savez_stream(stream: Any, arrays: dict[str, np.ndarray]) -> None:
    """np.savez(stream, **arrays), byte for byte (stored, not compressed; `<key>.npy` members, zip64), except
    that a failed write (a full disk) leaves no open ZipFile behind: numpy's leaves one whose finaliser writes
    to the closed file at exit and prints a traceback under our one-line message."""
    zf = zipfile.ZipFile(stream, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True)
    try:
        for key, value in arrays.items():
            with zf.open(key + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
        zf.close()
    except BaseException:
        zf.fp = None  # nothing more to write: the caller removes the partial file
        raise
