"""Atomic file writes shared by every step: a reader never sees a half-written file, and finished files get
the permissions a plain open() would (mkstemp makes 0600, which hides results and caches from colleagues
on a shared cluster)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str | Path, path: Path, directory: bool = False) -> None:
    """Set the usual permissions on a finished temp file (or folder) and rename it into place."""
    os.chmod(tmp, (0o777 if directory else 0o666) & ~umask())
    os.replace(tmp, path)


def write_bytes_atomic(path: Path, data: bytes) -> None:
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
