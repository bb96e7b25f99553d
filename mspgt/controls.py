"""Controls (docs/controls.md): one setting, `control=none|random_init|shuffled_words`, that composes with every
model and experiment and asks whether a boundary is learnt (`random_init`) and whether it needs word order
(`shuffled_words`).

- `random_init`: the same architecture, config and tokenizer, weights drawn by the architecture's own
  initialiser under `torch.manual_seed(control.seed)` (mspgt/model/random_init.py).
- `shuffled_words`: each sentence's words permuted with a seeded permutation before tokenisation, every word
  keeping its own labels (mspgt/data/shuffle.py).

A control is part of what a result depends on: it enters the weights id (`random_init`), the statistics
cache key, the boundary store's file name and every output (`Control.record()`), so a control never reuses
the real model's statistics or stored boundaries. This module imports nothing from mspgt but the errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mspgt.errors import MspgtError

NONE, RANDOM_INIT, SHUFFLED_WORDS = "none", "random_init", "shuffled_words"
CONTROLS = (NONE, RANDOM_INIT, SHUFFLED_WORDS)


@dataclass(frozen=True)
class Control:
    """Which control a run applies (`name`) and its seed (unused by `none`)."""

    name: str = NONE
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in CONTROLS:
            raise MspgtError(f"control={self.name!r} is not one of {list(CONTROLS)}",
                             f"use control={NONE}, control={RANDOM_INIT} or control={SHUFFLED_WORDS}")

    @property
    def active(self) -> bool:
        return self.name != NONE

    @property
    def key(self) -> str:
        """`none`, or `<name>-seed<seed>`: the cache and store key and the label in every report."""
        return NONE if not self.active else f"{self.name}-seed{self.seed}"

    def record(self) -> dict[str, Any]:
        """What results.json, intervention.json and fisher.json say (`control`)."""
        return {"name": self.name, "seed": self.seed if self.active else None, "key": self.key}


def control_of(cfg: Any) -> Control:
    """The control of a composed config (`cfg.control`); a config without the group (an old one) is `none`."""
    c = cfg.get("control") if hasattr(cfg, "get") else None
    if c is None:
        return Control()
    return Control(str(c.get("name", NONE)), int(c.get("seed", 0)))


def control_from_record(record: dict[str, Any] | None) -> Control:
    """The control a result file names (`control` key; absent in files written before controls: `none`)."""
    if not record:
        return Control()
    return Control(str(record.get("name", NONE)), int(record.get("seed") or 0))


__all__ = ["CONTROLS", "NONE", "RANDOM_INIT", "SHUFFLED_WORDS", "Control", "control_from_record", "control_of"]
