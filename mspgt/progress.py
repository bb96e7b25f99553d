"""Where a long step says how far it is: one sink (the job's open W&B run, mspgt/reports/tracking.py job_run)
that every step may report to without knowing about W&B. Nothing is sent while no sink is set."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

EVERY_S = 10.0  # at most one point per 10 s from a bar (and its first and last update)

_SINK: list[Callable[[dict[str, Any]], None]] = []  # at most one: the open job run's logger


def set_sink(sink: Callable[[dict[str, Any]], None] | None) -> None:
    """Send progress to `sink` (None: nowhere)."""
    _SINK.clear()
    if sink is not None:
        _SINK.append(sink)


def report(step: str, **values: Any) -> None:
    """The current step of the job (`extraction`, `probes`, ...) and any numbers, as `progress/<name>`."""
    if _SINK:
        _SINK[0]({"progress/step": step, **{f"progress/{k}": v for k, v in values.items()}})


class LiveProgress(tqdm):
    """A tqdm bar (shown or not, as `disable` says) that also reports: sentences done, the fraction, the rate
    (sentences/s) and the step, at most every EVERY_S seconds, the first and the last update always."""

    def __init__(self, *args: Any, step: str = "extraction", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._step, self._done, self._total = step, int(kwargs.get("initial") or 0), kwargs.get("total")
        self._t0, self._start, self._last = time.monotonic(), self._done, None

    def update(self, n: float | None = 1) -> bool | None:
        shown = super().update(n)
        self._done += int(n or 0)
        now = time.monotonic()
        if self._last is None or now - self._last >= EVERY_S or self._done == self._total:
            self._last = now
            rate = (self._done - self._start) / max(now - self._t0, 1e-9)
            report(self._step, sentences_done=self._done, sentences_total=self._total,
                   fraction=self._done / self._total if self._total else None, sentences_per_s=rate)
        return shown
