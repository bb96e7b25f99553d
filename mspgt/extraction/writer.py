"""The background writer of the pass: a finished chunk is serialised, checksummed and written (cache.py)
while the next chunk's forward passes run."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from mspgt.extraction.cache import StatisticsCache


class BackgroundWrites:
    """Chunk writes (serialise, checksum, write) overlap the next chunk's forward passes. At most one write
    is in flight, so at most two chunks are in memory (extract.FeatureBuffers relies on it: two buffers, used
    by turns); a failed write is raised at the next submit or close."""

    def __init__(self, cache: StatisticsCache) -> None:
        self.cache = cache
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mspgt-chunk-write")
        self.pending: Future | None = None

    def submit(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        self.wait()
        self.pending = self.pool.submit(self.cache.save_chunk, index, arrays)

    def wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.pool.shutdown(wait=True)
