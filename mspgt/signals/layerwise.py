"""The three layer-wise signals (paper eqs. 3-5), recomputed from stored statistics for any group weights.

`weights` is None for the point estimate, or [B, G] bootstrap counts: every signal is a weighted statistic
of per-group terms, so a resample never touches the model (docs/method.md "Data unit").
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mspgt.errors import MspgtError
from mspgt.signals.attention_drift import attention_drift
from mspgt.signals.cka import minibatch_cka, representation_change
from mspgt.signals.probes import ProbeResult, probe_f1, probe_jump
from mspgt.statistics import CorpusStatistics


def layer_signals(
    stats: CorpusStatistics,
    probes: ProbeResult | None,
    enabled: Mapping[str, bool],
    cka_variant: str,
    js_variant: str,
    first_block: str,
    weights: np.ndarray | None = None,
    f1_average: str = "macro",
) -> dict[str, np.ndarray]:
    """Enabled signals, each [L] (weights None or [G]) or [B, L] (weights [B, G]), over blocks l = 1..L.
    `enabled`: signal name -> on (fusion.signals); `cka_variant`, `js_variant`: the stored variants to read
    (mspgt/statistics.py `variant_keys`); `first_block`: S_attn(1) (fusion.attention.first_block);
    `f1_average`: probes.f1_average, the F1 average of the probe signal."""
    missing = [k for k, have in ((cka_variant, stats.hsic), (js_variant, stats.js_sum)) if k not in have]
    if missing:
        raise MspgtError(f"the cached statistics hold no {missing} variant (extraction.variants=selected)",
                         "re-run with these fusion settings (a new pass), or extraction.variants=all")
    out: dict[str, np.ndarray] = {}
    if enabled.get("representation_change"):
        cka = minibatch_cka(stats.hsic[cka_variant], weights)  # ([B,] L+1, L+1)
        out["representation_change"] = representation_change(cka)
    if enabled.get("probe_jump"):
        if probes is None:
            raise MspgtError("probe_jump is enabled but no probe result was given",
                             "train probes first, or set fusion.signals.probe_jump=false")
        f = probe_f1(probes, np.ones(stats.n_groups) if weights is None else weights, stats.n_groups, f1_average)
        out["probe_jump"] = probe_jump(f)
    if enabled.get("attention_drift"):
        v = js_variant
        out["attention_drift"] = attention_drift(
            stats.js_sum[v],
            stats.js_first_uniform[v],
            stats.js_count[v],
            weights,
            first_block,
        )
    return out
