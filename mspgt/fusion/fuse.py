"""Fusion of the layer-wise signals into one evidence curve (paper eq. 6): E(l) = sum_k w_k minmax(S_k)(l).

The paper's weight values are unreadable in our copy: weights come from the config (`fusion.weights`,
equal by default) and the weights of the enabled signals are normalised to sum 1 (our definition), so
E lies in [0, 1] and the peak prominence threshold (0.3, the paper) keeps its meaning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mspgt.errors import MspgtError
from mspgt.fusion.peaks import check_prominence

SIGNAL_NAMES = ("representation_change", "probe_jump", "attention_drift")


def minmax_normalise(s: np.ndarray) -> np.ndarray:
    """Min-max normalise over the last axis (layers) to [0, 1]. A constant curve becomes all zeros
    (our definition: a signal that does not vary over layers carries no evidence for any layer)."""
    s = np.asarray(s, dtype=np.float64)
    lo = s.min(axis=-1, keepdims=True)  # [..., 1]
    span = s.max(axis=-1, keepdims=True) - lo  # [..., 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(span > 0, (s - lo) / np.where(span > 0, span, 1.0), 0.0)  # [..., L]


def _check_names(where: str, names: Mapping[str, object]) -> None:
    unknown = sorted(set(names) - set(SIGNAL_NAMES))
    if unknown:
        raise MspgtError(
            f"unknown signal name(s) {unknown} in {where}",
            f"use only {list(SIGNAL_NAMES)}",
        )


def normalised_weights(weights: Mapping[str, float], enabled: Mapping[str, bool]) -> dict[str, float]:
    """The weights of the enabled signals, divided by their sum (validated; see `validate_fusion`)."""
    _check_names("fusion.weights", weights)
    _check_names("fusion.signals", enabled)
    active = [name for name in SIGNAL_NAMES if enabled.get(name, False)]
    if not active:
        raise MspgtError(
            "no signal is enabled for fusion",
            "enable at least one, e.g. fusion.signals.representation_change=true",
        )
    for name in active:
        if name not in weights:
            raise MspgtError(f"enabled signal {name!r} has no weight", f"set fusion.weights.{name}=1.0")
    values = {name: float(weights[name]) for name in active}
    for name, value in values.items():
        if not math.isfinite(value) or value < 0:
            raise MspgtError(
                f"fusion weight of {name!r} is {value}; weights must be finite and non-negative",
                f"set fusion.weights.{name} to a number >= 0",
            )
    total = sum(values.values())
    if total <= 0:
        raise MspgtError(
            f"the weights of the enabled signals {active} are all zero",
            "give at least one enabled signal a positive weight, e.g. fusion.weights.representation_change=1.0",
        )
    return {name: value / total for name, value in values.items()}


def validate_fusion(weights: Mapping[str, float], enabled: Mapping[str, bool], prominence: float) -> None:
    """Check the fusion settings without any data, before long work starts."""
    normalised_weights(weights, enabled)
    check_prominence(prominence)


def fuse(
    signals: Mapping[str, np.ndarray], weights: Mapping[str, float], enabled: Mapping[str, bool]
) -> np.ndarray:
    """E = sum_k w_k minmax(S_k) over the enabled signals (paper eq. 6), weights normalised to sum 1.

    Each signal is [L] or [B, L] (blocks 1..L at index 0..L-1); disabled signals may be absent.
    Returns E with the broadcast shape of the enabled signals, in [0, 1].
    """
    _check_names("the signal arrays", signals)
    w = normalised_weights(weights, enabled)
    missing = [name for name in w if name not in signals]
    if missing:
        raise MspgtError(
            f"enabled signal(s) {missing} have no values",
            "compute them, or disable them: " + " ".join(f"fusion.signals.{n}=false" for n in missing),
        )
    arrays = {name: np.asarray(signals[name], dtype=np.float64) for name in w}
    try:
        shape = np.broadcast_shapes(*(a.shape for a in arrays.values()))
    except ValueError:
        shape = None
    if shape is None or len(shape) == 0 or any(a.shape[-1:] != shape[-1:] for a in arrays.values()):
        raise MspgtError(
            f"signal shapes do not match: { {n: a.shape for n, a in arrays.items()} }",
            "give every signal the same layers (L values, or [B, L])",
        )
    return sum(w[name] * minmax_normalise(arrays[name]) for name in w)  # [..., L]
