"""Appendix A.5: brittleness predicted from the Fisher information, measured with the intervention's noise.

`python -m mspgt.run experiment=fisher`. One run: s_l on clean activations; Tr F_l per block on held-out
sentences (mspgt.interventions.fisher); per scale the second-order prediction (sigma^2 / 2) sum s_l^2 Tr F_l
against the teacher-forced KL(p || p_e) under the noise hooks of experiment=intervention, at every sigma of
`experiment.sigmas` with `experiment.draws` noise draws; the change of the data NLL; slope and R^2 of the KL
against sigma^2; a verdict per model with the pre-registered band `experiment.band`.

Its own experiment, not part of experiment=intervention: the Fisher traces are per block, so one estimate
serves every scale and sigma, and the teacher-forced KL needs no generation or text metrics (minutes, where a
sweep of intervention jobs would re-estimate them per job). It is an ordinary Hydra job: multiruns over
models run it locally or on Slurm like the other experiments.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from tqdm.auto import tqdm

from mspgt.controls import control_of
from mspgt.data.corpus import load_sentences
from mspgt.data.shuffle import controlled_sentences
from mspgt.errors import MspgtError
from mspgt.experiments.intervention import stored_boundary
from mspgt.files import json_safe
from mspgt.interventions.activation_scale import measure_activation_std
from mspgt.interventions.fisher import (
    PerSentence,
    encoded_batches,
    estimate_fisher_traces,
    fit_against_sigma_squared,
    noised_divergences,
    predicted_kl,
)
from mspgt.interventions.scale_layers import (
    boundary_blocks,
    check_boundary_belongs,
    explicit_blocks,
    noise_blocks,
)
from mspgt.layers import SCALES
from mspgt.model.loading import LoadedModel, load_model
from mspgt.reports.fisher_report import fisher_figure, fisher_markdown
from mspgt.reports.store import data_identity, data_key, write_json_atomic
from mspgt.reports.tracking import Tracker
from mspgt.results import BoundaryResult, FisherResult

log = logging.getLogger(__name__)

SUPPORTED, REFUTED, MIXED = "supported", "refuted", "mixed"

DEFINITIONS = {
    "fisher_trace": "Tr F_l = sum over predicted positions u of E_{y ~ p(.|x_<=u)} ||grad_{h_l} log p(y|x_<=u)||^2, "
                    "the gradient over the block output at every position; per predicted token (ratio of sums over "
                    "sentences); estimated with y drawn from the model at every position, one backward pass per "
                    "draw (unbiased by the score identity); our estimator of the paper's Fisher information",
    "prediction": "E_e[KL(p || p_e)] ~ (sigma^2 / 2) sum_{l in S} s_l^2 Tr F_l per predicted token (appendix A.5, "
                  "eq. 30, our reading: the equation is unreadable in our copy)",
    "measured": "teacher-forced KL(p_u || p_u^e) summed over predicted positions, per predicted token, mean over "
                "noise draws; noise e ~ N(0, (sigma s_l)^2 I) at the output of every block of the scale, every "
                "position (the hooks of experiment=intervention)",
    "dnll": "change of the data NLL -log p(x_{u+1} | x_<=u), noised - clean, per predicted token (the paper's "
            "task loss)",
    "standard_errors": "over sentences (ratio estimator, linearised); ratio SE combines the relative SEs of "
                       "measured and predicted as if independent (approximate)",
    "predicted_positions": "real tokens with a next token in their sentence",
}


def check_fisher_settings(e: DictConfig) -> None:
    """Every check that needs no model, before any long work (mspgt/config_validation.py runs it first)."""
    for key in ("samples_per_position", "n_sentences", "kl_sentences", "draws", "batch_size"):
        v = e.get(key)
        if not isinstance(v, int) or isinstance(v, bool):
            raise MspgtError(f"experiment.{key}={v!r} is not an integer", f"set experiment.{key} to an integer, "
                             f"e.g. `experiment.{key}={FISHER_EXAMPLES[key]}`")
    sigmas = list(e.sigmas or []) if isinstance(e.sigmas, ListConfig | list) else None
    band = list(e.band) if isinstance(e.band, ListConfig | list) else None
    numbers = band is not None and all(isinstance(x, int | float) and not isinstance(x, bool) for x in band)
    problems = [
        (sigmas and all(isinstance(s, int | float) and 0 < s < math.inf for s in sigmas),
         f"experiment.sigmas={e.sigmas}", "give positive sigmas, e.g. experiment.sigmas=[0.005,0.01,0.02]"),
        (e.samples_per_position >= 1, f"experiment.samples_per_position={e.samples_per_position}",
         "draw at least one y per position"),
        (e.n_sentences >= 2, f"experiment.n_sentences={e.n_sentences}", "use at least 2 held-out sentences"),
        (2 <= e.kl_sentences <= e.n_sentences, f"experiment.kl_sentences={e.kl_sentences}",
         "use 2 <= kl_sentences <= n_sentences"),
        (e.draws >= 1, f"experiment.draws={e.draws}", "draw the noise at least once"),
        (e.batch_size >= 1, f"experiment.batch_size={e.batch_size}", "use batch_size >= 1"),
        (numbers and len(band) == 2 and 0 < float(band[0]) <= 1 <= float(band[1]), f"experiment.band={e.band}",
         "give [low, high] with 0 < low <= 1 <= high, e.g. `experiment.band=[0.75,1.3333]`"),
    ]
    for ok, problem, fix in problems:
        if not ok:
            raise MspgtError(problem, fix)


FISHER_EXAMPLES = {"samples_per_position": 2, "n_sentences": 200, "kl_sentences": 100, "draws": 2, "batch_size": 8}


def resolve_scales(cfg: DictConfig, loaded: LoadedModel, boundary: BoundaryResult | None) -> dict[str, tuple[list[int], str]]:
    """scale -> (blocks, source): explicit `experiment.scale_layers`, one `scale=`, or the stored boundaries."""
    explicit = cfg.experiment.get("scale_layers")
    if explicit:
        unknown = [s for s in explicit if s not in SCALES]
        if unknown:
            raise MspgtError(f"experiment.scale_layers names unknown scales {unknown}", f"use {list(SCALES)}")
        return {s: (explicit_blocks(s, explicit[s], loaded.n_blocks), "explicit experiment.scale_layers")
                for s in SCALES if s in explicit}
    if cfg.scale.name != "none":
        return {cfg.scale.name: noise_blocks(cfg.scale, loaded, boundary)}
    assert boundary is not None
    check_boundary_belongs(boundary, loaded)
    return {s: (boundary_blocks(s, boundary, loaded.n_blocks), "stored boundary result") for s in SCALES}


def heldout_sentences(cfg: DictConfig) -> tuple[list[str], int]:
    """The experiment.n_sentences corpus sentences after the first data.n_sentences (those of the boundary
    pass), and the index of the first one."""
    first, n = int(cfg.data.n_sentences), int(cfg.experiment.n_sentences)
    data = cfg.data.copy()
    with open_dict(data):
        data.n_sentences = first + n
    sentences = controlled_sentences(load_sentences(data), control_of(cfg))
    if len(sentences) < first + n:
        raise MspgtError(
            f"the corpus has {len(sentences)} sentences; the Fisher test holds out {n} after the first {first}",
            "lower experiment.n_sentences or data.n_sentences, or use a larger corpus",
        )
    return [s.text for s in sentences[first:]], first


def _ratio_se(a: float, a_se: float, b: float, b_se: float) -> float:
    if a == 0 or b == 0:
        return float("nan")
    return abs(a / b) * math.sqrt((a_se / a) ** 2 + (b_se / b) ** 2)


def scale_record(blocks: list[int], source: str, fisher: PerSentence, s: list[float], sigmas: list[float],
                 kl: PerSentence, dnll: PerSentence, columns: range, band: tuple[float, float]) -> dict[str, Any]:
    """Prediction and measurement of one scale over the sigmas (kl, dnll values [S, conditions, draws];
    `columns` picks this scale's conditions, one per sigma)."""
    coef = PerSentence(predicted_kl(fisher.values, s, blocks, sigma=1.0), fisher.n_positions)  # KL / sigma^2, [S]
    c, c_se = float(coef.per_token()), float(coef.per_token_se())
    per_sigma = []
    kl_tok = kl.values[:, columns].sum(0) / kl.n_positions.sum()  # [sigmas, draws]
    nll_tok = dnll.values[:, columns].sum(0) / dnll.n_positions.sum()  # [sigmas, draws]
    kl_mean = PerSentence(kl.values[:, columns].mean(2), kl.n_positions)  # [S, sigmas]
    nll_mean = PerSentence(dnll.values[:, columns].mean(2), dnll.n_positions)
    for i, sigma in enumerate(sigmas):
        pred = c * sigma**2
        m, m_se = float(kl_mean.per_token()[i]), float(kl_mean.per_token_se()[i])
        d, d_se = float(nll_mean.per_token()[i]), float(nll_mean.per_token_se()[i])
        per_sigma.append({
            "sigma": sigma, "predicted_kl": pred, "predicted_kl_se": c_se * sigma**2,
            "measured_kl": m, "measured_kl_se": m_se, "ratio": m / pred if pred > 0 else float("nan"),
            "ratio_se": _ratio_se(m, m_se, pred, c_se * sigma**2),
            "dnll": d, "dnll_se": d_se, "dnll_over_predicted": d / pred if pred > 0 else float("nan"),
            "measured_kl_draws": kl_tok[i].tolist(),
        })
    fit = fit_against_sigma_squared(sigmas, kl_tok)
    fit["slope_over_predicted"] = fit["slope"] / c if c > 0 else float("nan")
    fit_nll = fit_against_sigma_squared(sigmas, nll_tok)
    fit_nll["slope_over_predicted"] = fit_nll["slope"] / c if c > 0 else float("nan")
    smallest = per_sigma[int(np.argmin(sigmas))]
    return {
        "blocks": blocks, "first_last": [blocks[0], blocks[-1]], "source": source,
        "predicted_coefficient": c, "predicted_coefficient_se": c_se,
        "sum_s2_trace": 2 * c,
        "per_sigma": per_sigma, "fit_kl": fit, "fit_dnll": fit_nll,
        "ratio_at_smallest_sigma": smallest["ratio"],
        "holds": bool(band[0] <= smallest["ratio"] <= band[1]),
    }


def verdict(scales: dict[str, dict], band: tuple[float, float], smallest: float) -> dict[str, Any]:
    holds = [r["holds"] for r in scales.values()]
    value = SUPPORTED if all(holds) else REFUTED if not any(holds) else MIXED
    return {
        "value": value, "band": list(band), "sigma": smallest,
        "rule": f"holds for a scale where measured / predicted KL at the smallest sigma ({smallest:g}) lies in "
                f"[{band[0]:g}, {band[1]:g}] (pre-registered, ours); supported for the model when it holds for "
                "every scale, refuted when for none, mixed otherwise",
        "per_scale": {s: r["holds"] for s, r in scales.items()},
    }


def run_fisher(cfg: DictConfig, out_dir: Path, sweep: str | None = None) -> dict[str, Any]:
    """Run the A.5 test; write fisher.json, fisher.md, fisher.png and a W&B run (group `sweep`); return
    summary metrics."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    e = cfg.experiment
    check_fisher_settings(e)
    sigmas = [float(x) for x in e.sigmas]
    band = (float(e.band[0]), float(e.band[1]))
    needs_boundary = not e.get("scale_layers") and (cfg.scale.name == "none" or cfg.scale.get("layers") is None)
    boundary = stored_boundary(cfg, out_dir) if needs_boundary else None
    texts, first = heldout_sentences(cfg)
    loaded = load_model(cfg.model, cfg.paths.cache_dir, need_attentions=False, control=control_of(cfg))
    scales = resolve_scales(cfg, loaded, boundary)
    timing: dict[str, float] = {}

    t = time.perf_counter()
    std_cfg = e.activation_std
    std_texts = [x.text for x in controlled_sentences(load_sentences(cfg.data), control_of(cfg))[: int(std_cfg.n_sentences)]]
    s = measure_activation_std(loaded, std_texts, max_tokens=int(cfg.data.max_tokens),
                               batch_size=int(std_cfg.batch_size), kind=std_cfg.kind,
                               exclude_first_token=bool(std_cfg.exclude_first_token))
    timing["activation_std_s"] = time.perf_counter() - t

    batches = encoded_batches(loaded, texts, int(cfg.data.max_tokens), int(e.batch_size))
    t = time.perf_counter()
    with tqdm(total=len(texts), desc="Fisher traces", unit="sent", disable=not cfg.extraction.progress) as bar:
        fisher = estimate_fisher_traces(loaded, batches, int(e.samples_per_position), int(e.seed), progress=bar)
    timing["fisher_s"] = time.perf_counter() - t
    log.info("Fisher traces of %d blocks on %d held-out sentences (%d positions, %d draws each): %.1f s",
             loaded.n_blocks, len(texts), int(fisher.n_positions.sum()), int(e.samples_per_position),
             timing["fisher_s"])

    conditions = [({b: s[b] for b in blocks}, sigma) for blocks, _ in scales.values() for sigma in sigmas]
    kl_batches = encoded_batches(loaded, texts[: int(e.kl_sentences)], int(cfg.data.max_tokens), int(e.batch_size))
    t = time.perf_counter()
    with tqdm(total=int(e.kl_sentences), desc="noised KL", unit="sent", disable=not cfg.extraction.progress) as bar:
        kl, dnll = noised_divergences(loaded, kl_batches, conditions, int(e.draws), int(e.noise_seed), progress=bar)
    timing["kl_s"] = time.perf_counter() - t
    log.info("noised KL: %d conditions x %d draws on %d sentences: %.1f s", len(conditions), int(e.draws),
             int(e.kl_sentences), timing["kl_s"])

    records = {}
    for i, (name, (blocks, source)) in enumerate(scales.items()):
        cols = range(i * len(sigmas), (i + 1) * len(sigmas))
        records[name] = scale_record(blocks, source, fisher, s, sigmas, kl, dnll, cols, band)
    timing["total_s"] = time.perf_counter() - started
    result = json_safe(FisherResult(
        model={"name": loaded.name, "family": loaded.family, "n_blocks": loaded.n_blocks,
               "weights_id": loaded.weights_id},
        control=control_of(cfg).record(),
        data={"key": data_key(cfg.data), **data_identity(cfg.data)},
        heldout={"first_sentence": first, "n_sentences": len(texts), "kl_sentences": int(e.kl_sentences),
                 "n_positions": int(fisher.n_positions.sum()), "kl_positions": int(kl.n_positions.sum())},
        fisher={"per_token": fisher.per_token().tolist(), "se": fisher.per_token_se().tolist(),
                "states": "h_0..h_L (index = block; h_0 the embeddings)",
                "samples_per_position": int(e.samples_per_position)},
        activation_std={"values": s, "kind": std_cfg.kind, "exclude_first_token": bool(std_cfg.exclude_first_token),
                        "n_sentences": len(std_texts)},
        sigmas=sigmas, draws=int(e.draws),
        scales=records,
        verdict=verdict(records, band, min(sigmas)),
        boundary=None if boundary is None else {"boundaries": boundary.to_json()["boundaries"]},
        definitions=DEFINITIONS,
        timing=timing, device=str(loaded.device), torch_threads=torch.get_num_threads(),
        settings=OmegaConf.to_container(cfg, resolve=True),
    ).to_json())
    write_json_atomic(out_dir / "fisher.json", result)
    (out_dir / "fisher.md").write_text(fisher_markdown(result))
    figure = fisher_figure(result, out_dir / "fisher.png")
    log.info("\n%s", fisher_markdown(result))
    summary = summary_metrics(result)
    _track(cfg, out_dir, result, summary, figure, sweep)
    return summary


def summary_metrics(result: dict) -> dict[str, Any]:
    out: dict[str, Any] = {"verdict": result["verdict"]["value"], "fisher_s": result["timing"]["fisher_s"],
                           "control": result.get("control", {}).get("key", "none")}
    for name, r in result["scales"].items():
        out[f"{name}/ratio_smallest_sigma"] = r["ratio_at_smallest_sigma"]
        out[f"{name}/slope_over_predicted"] = r["fit_kl"]["slope_over_predicted"]
        out[f"{name}/r2"] = r["fit_kl"]["r2"]
        out[f"{name}/predicted_coefficient"] = r["predicted_coefficient"]
    return out


def _track(cfg: DictConfig, out_dir: Path, result: dict, summary: dict, figure: Path, sweep: str | None) -> None:
    tracker = Tracker(cfg.tracking, out_dir, job_type="fisher", name=f"{result['model']['name']}-fisher",
                      group=sweep, tags=[result["model"]["family"], "fisher"], config=result["settings"])
    try:
        tracker.summary(summary)
        rows = [[name, r["first_last"][0], r["first_last"][1], p["sigma"], p["predicted_kl"], p["measured_kl"],
                 p["ratio"], p["dnll"]] for name, r in result["scales"].items() for p in r["per_sigma"]]
        tracker.table("fisher/kl", ["scale", "first", "last", "sigma", "predicted_kl", "measured_kl", "ratio",
                                    "dnll"], rows)
        f = result["fisher"]
        tracker.table("fisher/trace", ["state", "trace_per_token", "se", "activation_std"],
                      [[i, v, se, sd] for i, (v, se, sd) in
                       enumerate(zip(f["per_token"], f["se"], result["activation_std"]["values"], strict=True))])
        tracker.image("fisher/figure", figure)
    finally:
        tracker.finish()
