"""Which blocks get noise: explicit `scale.layers`, or the scale ranges of a stored boundary result.

The ranges themselves come from mspgt.layers (scales_from_boundaries, check_scale_blocks), the one place
scale ranges are defined; this module only picks the source and checks that a stored result belongs to
the model that is loaded.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from mspgt.errors import MspgtError, choose
from mspgt.layers import BOUNDARY_NAMES, SCALES, check_scale_blocks, scales_from_boundaries
from mspgt.model.loading import LoadedModel
from mspgt.results import BoundaryResult

SCALE_CHOICES = ("none", *SCALES)


def check_scale_name(scale_cfg: DictConfig) -> str:
    choose("scale", scale_cfg.name, SCALE_CHOICES, "scale")
    if scale_cfg.name == "none" and scale_cfg.get("layers") is not None:
        raise MspgtError(
            "scale=none (the clean baseline) takes no layers",
            "drop scale.layers, or pick a scale: scale=local|intermediate|global",
        )
    return str(scale_cfg.name)


def explicit_blocks(scale: str, layers: Any, n_blocks: int) -> list[int]:
    """Blocks first..last (1-based, inclusive) of `scale.layers=[first,last]`."""
    try:
        first, last = (int(v) for v in layers)
    except (TypeError, ValueError):
        raise MspgtError(
            f"scale.layers={layers!r} is not [first, last]",
            "give two block numbers (1-based, inclusive): scale.layers=[3,10]",
        ) from None
    if first > last:
        raise MspgtError(
            f"scale.layers=[{first},{last}] has first > last", f"write scale.layers=[{last},{first}]"
        )
    return check_scale_blocks(scale, list(range(first, last + 1)), n_blocks)


def check_boundary_belongs(boundary: BoundaryResult, loaded: LoadedModel) -> None:
    """A stored boundary result must come from these exact weights and block count."""
    model = boundary.model
    mismatches = [
        f"{key}: stored {model.get(key)!r}, loaded {value!r}"
        for key, value in (
            ("name", loaded.name),
            ("weights_id", loaded.weights_id),
            ("n_blocks", loaded.n_blocks),
        )
        if model.get(key) != value
    ]
    if mismatches:
        raise MspgtError(
            "the stored boundary result was computed on another model (" + "; ".join(mismatches) + ")",
            f"re-run `python -m mspgt.run experiment=boundary model={loaded.name}` with the same data settings, "
            "or set scale.layers=[first,last]",
        )


def boundary_blocks(scale: str, boundary: BoundaryResult, n_blocks: int) -> list[int]:
    """The blocks of `scale` from the boundaries L-I and I-G of a stored result."""
    b_li, b_ig = (boundary.layer(k) for k in BOUNDARY_NAMES)
    if b_li is None or b_ig is None:
        raise MspgtError(
            "the stored boundary result has no two boundaries (fewer than two peaks), so no scales",
            "set explicit blocks: scale.layers=[first,last], or re-run the boundary experiment with other "
            "fusion settings (e.g. a lower fusion prominence)",
        )
    ranges = scales_from_boundaries(int(b_li), int(b_ig), n_blocks)
    return check_scale_blocks(scale, ranges.blocks(scale), n_blocks)


def noise_blocks(scale_cfg: DictConfig, loaded: LoadedModel,
                 boundary: BoundaryResult | None) -> tuple[list[int], str]:
    """(blocks to noise, where they came from). scale=none: no blocks."""
    scale = check_scale_name(scale_cfg)
    if scale == "none":
        return [], "none (clean baseline)"
    if scale_cfg.get("layers") is not None:
        return explicit_blocks(scale, scale_cfg.layers, loaded.n_blocks), "explicit scale.layers"
    if boundary is None:
        raise MspgtError(
            f"scale={scale} needs a boundary result or explicit layers",
            "set scale.layers=[first,last] or run the boundary experiment first",
        )
    check_boundary_belongs(boundary, loaded)
    return boundary_blocks(scale, boundary, loaded.n_blocks), "stored boundary result"
