"""Rival layer curves in the boundary outputs: a panel under the fused curve in boundaries.png, the
transition and agreement tables in summary.md, W&B (fusion/rival_transitions.py holds the rules)."""

from __future__ import annotations

from typing import Any

import numpy as np

CURVE_LABELS = {
    "block_influence": "block influence 1 - cos(h_{l-1}, h_l)",
    "lens_kl": "logit lens KL(final || h_l) (bits)",
    "lens_entropy": "logit-lens read-out entropy (bits)",
    "id_twonn": "intrinsic dimension, TwoNN",
    "id_gride": "intrinsic dimension, GRIDE",
}


def curve_label(name: str, settings: dict[str, Any] | None = None) -> str:
    """A curve's label; the ID curves say whether they are calibrated (rivals.id_reference, docs/method.md)."""
    label = CURVE_LABELS.get(name, name)
    if name.startswith("id_") and settings is not None:
        reference = settings.get("id_reference", "none")
        label += " (dadapy raw)" if reference == "none" else f" (calibrated: {reference} reference)"
    return label


def id_settings_line(settings: dict[str, Any] | None) -> str:
    """What the ID curves are, from the run's rivals settings (empty where the run recorded none)."""
    if not settings or not settings.get("intrinsic_dimension"):
        return ""
    reference = settings.get("id_reference", "none")
    how = ("calibrated against Gaussians of the same number of points (id_reference=gaussian)" if reference == "gaussian"
           else "dadapy's raw estimates (id_reference=none)")
    return (f"Intrinsic dimension: dadapy TwoNN and GRIDE (ranks {settings.get('gride_range_max', 8) // 2}, "
            f"{settings.get('gride_range_max', 8)}) on up to {settings.get('id_points', '?')} distinct words per "
            f"group, {how}; the logit lens on {settings.get('logit_lens_tokens', '?')} tokens per group.")


def rivals_panel(ax: Any, rivals: dict[str, Any], boundaries: dict[str, Any], colours: dict[str, str],
                 settings: dict[str, Any] | None = None) -> None:
    """Each rival curve min-max normalised over its finite points, on the block axis (a state h_l is drawn at
    block l, the block whose output it is), bands normalised alike; the boundaries as in the panel above.
    `settings`: the run's rivals settings (its config), for the curves' labels."""
    for name, c in rivals["curves"].items():
        v = np.asarray(c["value"], dtype=float)
        lo = np.asarray([np.nan if x is None else x for x in c["ci_low"]], dtype=float)
        hi = np.asarray([np.nan if x is None else x for x in c["ci_high"]], dtype=float)
        x = np.arange(1, len(v) + 1) if c["index"] == "block" else np.arange(len(v))
        finite = np.isfinite(v)
        if not finite.any():
            continue
        vmin, span = np.nanmin(v), np.nanmax(v) - np.nanmin(v)
        span = span if span > 0 else 1.0
        line = ax.plot(x, (v - vmin) / span, marker=".", ms=3, lw=1.1, label=curve_label(name, settings))[0]
        ax.fill_between(x, (lo - vmin) / span, (hi - vmin) / span, color=line.get_color(), alpha=0.15)
    for name, b in boundaries.items():
        if b.layer is not None:
            ax.axvline(b.layer, color=colours[name], ls="--", lw=1.4)
    for t in rivals["transitions"]:
        if t["block"] is not None:
            ax.annotate(t["name"], (t["block"], 1.02), fontsize=6, rotation=90, ha="center", va="bottom")
    ax.set_ylabel("normalised rival curve")
    ax.set_xlabel("block l (state h_l drawn at l)")
    ax.legend(fontsize=6, loc="lower right")


def _f(x: Any, spec: str = "+.0f") -> str:
    return "-" if x is None else format(x, spec)


def rivals_markdown(result: dict[str, Any]) -> str:
    rivals = result.get("rivals")
    if not rivals:
        return ""
    lines = ["", "## Rival layer curves: transitions and agreement with the boundaries", "",
             "| transition | rule | block | 95% CI | most selected |", "|---|---|---|---|---|"]
    for t in rivals["transitions"]:
        freq = t["selection_frequency"]
        total = sum(freq.values()) or 1
        top = ", ".join(f"{k}: {v / total:.0%}" for k, v in sorted(freq.items(), key=lambda kv: -kv[1])[:3])
        lines.append(f"| {t['name']} | {t['rule']} | {_f(t['block'], 'd')} | [{_f(t['ci_low'], '.0f')}, "
                     f"{_f(t['ci_high'], '.0f')}] | {top} |")
    settings = (result.get("config") or {}).get("rivals")
    if id_settings_line(settings):
        lines += ["", id_settings_line(settings)]
    lines += ["", f"Agreement rule: {rivals['rule']}.", "",
              "| transition | boundary | distance (blocks) | 95% CI | resamples | coincides |", "|---|---|---|---|---|---|"]
    for a in rivals["agreement"]:
        verdict = "untestable" if a["coincides"] is None else "yes" if a["coincides"] else "no"
        lines.append(f"| {a['transition']} | {a['boundary']} | {_f(a['distance'])} | [{_f(a['ci_low'])}, "
                     f"{_f(a['ci_high'])}] | {a['n_resamples']} | {verdict} |")
    return "\n".join(lines) + "\n"
