"""Rival accounts of layer structure, computed beside the three MSPGT signals in the same pass (issue: "Evidence
that a boundary means something"): block influence (signals/block_influence.py), the logit lens
(signals/logit_lens.py) and the intrinsic dimension of the states (signals/intrinsic_dimension.py). Their
transitions and their agreement with the MSPGT boundaries: fusion/rival_transitions.py. Settings: conf/rivals/."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mspgt.errors import MspgtError


@dataclass(frozen=True)
class RivalSettings:
    """`rivals.*`, checked. The first three change what the pass stores (they are in the cache key)."""

    block_influence: bool = True
    logit_lens: bool = True
    logit_lens_tokens: int = 2  # sampled tokens per group read through the unembedding (evenly spread)
    intrinsic_dimension: bool = True
    gride_range_max: int = 8  # GRIDE's largest neighbour rank n2 (the estimate at n1 = n2 / 2 is used)
    id_points: int = 128  # the first this many distinct sampled words of each group (a seeded order)
    id_min_points: int = 32  # a group with fewer distinct sampled words gives no ID (left out of the mean)
    id_reference: str = "gaussian"  # calibrate each estimate against Gaussians of its size; none: dadapy's raw
    agreement_max_width: int = 5  # "coincides" needs a distance CI narrower than this (the paper's acceptance)

    def __post_init__(self) -> None:
        if self.logit_lens_tokens < 1:
            raise MspgtError(f"rivals.logit_lens_tokens={self.logit_lens_tokens}", "use at least 1 token per group")
        if self.gride_range_max < 2 or self.gride_range_max & (self.gride_range_max - 1):
            raise MspgtError(f"rivals.gride_range_max={self.gride_range_max}", "use a power of two >= 2 (e.g. 8)")
        if self.id_min_points < max(3, self.gride_range_max + 1):
            raise MspgtError(f"rivals.id_min_points={self.id_min_points}",
                             f"use at least gride_range_max + 1 = {self.gride_range_max + 1}")
        if not self.id_min_points <= self.id_points <= 512:
            raise MspgtError(f"rivals.id_points={self.id_points}",
                             f"use id_min_points ({self.id_min_points}) .. 512 (the Gaussian reference's range)")
        if self.id_reference not in ("gaussian", "none"):
            raise MspgtError(f"rivals.id_reference={self.id_reference}", "use gaussian or none")
        if self.id_reference == "gaussian" and self.id_min_points < 32:
            raise MspgtError(f"rivals.id_min_points={self.id_min_points} with rivals.id_reference=gaussian",
                             "use at least 32 (the Gaussian reference's smallest sample), or id_reference=none")
        if self.agreement_max_width < 1:
            raise MspgtError(f"rivals.agreement_max_width={self.agreement_max_width}", "use at least 1")

    @classmethod
    def from_config(cls, rivals: Any) -> RivalSettings | None:
        """cfg.rivals -> settings (None: the group is absent or every rival is off)."""
        if rivals is None:
            return None
        s = cls(**{k: rivals[k] for k in cls.__dataclass_fields__ if k in rivals})
        return s if (s.block_influence or s.logit_lens or s.intrinsic_dimension) else None

    def pass_key(self) -> dict[str, Any]:
        """What the pass stores for the rivals (part of the statistics cache key)."""
        return {"block_influence": self.block_influence, "logit_lens": self.logit_lens,
                "logit_lens_tokens": self.logit_lens_tokens if self.logit_lens else None}

    def id_key(self) -> dict[str, Any]:
        """What the per-group ID artifact depends on beyond the stored statistics (its cache key)."""
        from mspgt.signals.intrinsic_dimension import ID_RULE_VERSION

        return {"rule": ID_RULE_VERSION, "gride_range_max": self.gride_range_max, "id_points": self.id_points,
                "id_min_points": self.id_min_points, "id_reference": self.id_reference}
