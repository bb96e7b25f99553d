"""A steady C heap for loops that allocate and free the same large temporaries every iteration (our
measurement, in the git history of README.md, "Speed and memory").

glibc's malloc gives the free top of its heap back to the kernel (brk) once more than M_TRIM_THRESHOLD bytes
are free there, and the next allocation page-faults those pages back in, zeroed. The threshold is dynamic:
it follows the largest mmapped block freed so far, up to 64 MiB (M_MMAP_THRESHOLD up to 32 MiB), so whether a
loop churns depends on what ran before it. A probe training step frees ~110 MB of temporaries (the first
layer's bfloat16 weights and their gradient, 23 MB each, the float32 gradient parts, the hidden units): in a
process that had read the statistics back, some trainings had 2-3 M page faults and steps of 38-42 ms instead
of 29-31 ms (strace: 1,565 brk calls over three trainings, two of them slow).

`steady_heap` fixes the thresholds for the loop (M_MMAP_THRESHOLD 32 MiB, the dynamic ceiling; no trimming)
and gives the free top back once at the end (malloc_trim). glibc cannot read or restore its dynamic mode, so
on exit the thresholds stay fixed at the dynamic ceilings (32 MiB mmap, 64 MiB trim), the values the dynamic
rule reaches after any block of 32 MiB is freed. A no-op where the C library is not glibc, and where the user
tuned malloc through the environment (MALLOC_*_ variables or glibc.malloc tunables), which then wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (<malloc.h>)
MMAP_CEILING = 32 << 20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc: the dynamic mmap threshold's ceiling
TRIM_CEILING = 2 * MMAP_CEILING  # the dynamic trim threshold's ceiling (twice the mmap threshold)
NO_TRIM = (1 << 31) - 1  # the largest int mallopt takes: the heap top is not returned inside the loop
_USER_TUNING = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's glibc, or None (another C library, or not Linux)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def user_tuned_malloc() -> bool:
    """True when the environment already sets glibc's malloc thresholds (then they are left alone)."""
    return any(v in os.environ for v in _USER_TUNING) or "glibc.malloc" in os.environ.get(
        "GLIBC_TUNABLES", ""
    )


@contextmanager
def steady_heap() -> Iterator[bool]:
    """Inside: glibc keeps the heap's free top (no trim) and mmaps only blocks above 32 MiB; on exit the free
    top is returned once. Yields whether the thresholds were set (False: not glibc, or user-tuned)."""
    libc = _glibc()
    if libc is None or user_tuned_malloc():
        yield False
        return
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_CEILING) == 1 and libc.mallopt(M_TRIM_THRESHOLD, NO_TRIM) == 1
    if not ok:
        log.debug("mallopt refused the heap thresholds; running with the C library's own")
    try:
        yield ok
    finally:
        if ok:
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_CEILING)
            libc.malloc_trim(0)
