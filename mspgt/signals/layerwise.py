"""The three layer-wise signals (paper eqs. 3-5), recomputed from stored statistics for any group weights.

`weights` is None for the point estimate, or [B, G] bootstrap counts: every signal is a weighted statistic
of per-group terms, so a resample never touches the model (docs/method.md "Data unit").
"""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from mspgt.errors import MspgtError
from mspgt.extraction.statistics import CorpusStatistics, cka_variant
from mspgt.signals.attention_drift import attention_drift
from mspgt.signals.cka import minibatch_cka, representation_change
from mspgt.signals.probes import ProbeResult, probe_f1, probe_jump


def cka_key(fusion: DictConfig) -> str:
    return cka_variant(bool(fusion.cka.standardise), bool(fusion.cka.exclude_first_position))


def js_key(fusion: DictConfig) -> str:
    return "nosink" if fusion.attention.drop_sink else "full"


def layer_signals(
    stats: CorpusStatistics,
    probes: ProbeResult | None,
    fusion: DictConfig,
    weights: np.ndarray | None = None,
    f1_average: str = "macro",
) -> dict[str, np.ndarray]:
    """Enabled signals, each [L] (weights None or [G]) or [B, L] (weights [B, G]), over blocks l = 1..L.
    `f1_average`: probes.f1_average, the F1 average of the probe signal."""
    missing = [k for k, have in ((cka_key(fusion), stats.hsic), (js_key(fusion), stats.js_sum)) if k not in have]
    if missing:
        raise MspgtError(f"the cached statistics hold no {missing} variant (extraction.variants=selected)",
                         "re-run with these fusion settings (a new pass), or extraction.variants=all")
    out: dict[str, np.ndarray] = {}
    if fusion.signals.representation_change:
        cka = minibatch_cka(stats.hsic[cka_key(fusion)], weights)  # ([B,] L+1, L+1)
        out["representation_change"] = representation_change(cka)
    if fusion.signals.probe_jump:
        if probes is None:
            raise MspgtError("probe_jump is enabled but no probe result was given",
                             "train probes first, or set fusion.signals.probe_jump=false")
        f = probe_f1(probes, np.ones(stats.n_groups) if weights is None else weights, stats.n_groups, f1_average)
        out["probe_jump"] = probe_jump(f)
    if fusion.signals.attention_drift:
        v = js_key(fusion)
        out["attention_drift"] = attention_drift(
            stats.js_sum[v],
            stats.js_first_uniform[v],
            stats.js_count[v],
            weights,
            fusion.attention.first_block,
        )
    return out
