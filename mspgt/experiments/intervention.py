"""Experiment 2 (paper 4.2): noise in one scale, generated text scored, paired tests.

`python -m mspgt.run experiment=intervention scale=intermediate sigma=0.5`. One run makes both
conditions: clean sampling and sampling with noise in the scale's blocks, from the same prompts with the
same sampling seeds (paired design). scale=none is the clean baseline: it samples the clean condition
twice, which must replay identically (checks the pairing) and so gives zero change. Every bad setting
fails before generation starts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from mspgt.controls import control_of
from mspgt.data.corpus import Sentence, load_sentences
from mspgt.data.shuffle import controlled_sentences
from mspgt.errors import MspgtError
from mspgt.experiments.boundary import run_boundary
from mspgt.interventions.activation_scale import measure_activation_std
from mspgt.interventions.clean_condition import CleanCondition, clean_key, clean_path, load_clean, store_clean
from mspgt.interventions.generation import Generated, check_generation_settings, sample_continuations
from mspgt.interventions.grammar import GrammarChecker, make_grammar_checker
from mspgt.interventions.noise import ScaleNoise, check_sigma, forward_hook_count
from mspgt.interventions.paired_stats import (
    BRITTLENESS_DEFINITION,
    PairedComparison,
    brittleness,
    brittleness_null,
    compare_paired,
    per_prompt_record,
)
from mspgt.interventions.power import power_record
from mspgt.interventions.scale_layers import check_scale_name, noise_blocks
from mspgt.interventions.text_metrics import METRIC_INFO, METRICS, load_sbert, score_prompts
from mspgt.model.identity import model_identity
from mspgt.model.loading import LoadedModel, load_model
from mspgt.reports.intervention_report import write_intervention_report
from mspgt.reports.store import boundary_path, data_identity, data_key, load_boundary
from mspgt.reports.tracking import Tracker
from mspgt.results import BoundaryResult, InterventionResult

log = logging.getLogger(__name__)

def check_brittleness_metrics(names: Any) -> list[str]:
    names = list(names or [])
    unknown = [m for m in names if m not in METRICS]
    if not names or unknown:
        raise MspgtError(
            f"metrics.brittleness.metrics={names} is empty or names unknown metrics {unknown}",
            f"choose from {list(METRICS)}",
        )
    return names


def choose_prompts(sentences: list[Sentence], n_prompts: int, prompt_words: int) -> list[str]:
    """The first `prompt_words` words of `n_prompts` corpus sentences longer than that, spread evenly."""
    long_enough = [s.text.split() for s in sentences if len(s.text.split()) > prompt_words]
    if len(long_enough) < n_prompts:
        raise MspgtError(
            f"the corpus has {len(long_enough)} sentences longer than {prompt_words} words; "
            f"generation.n_prompts={n_prompts} asks for more",
            "lower generation.n_prompts or generation.prompt_words (changing data.* also changes which "
            "boundary result applies)",
        )
    picks = np.linspace(0, len(long_enough) - 1, n_prompts).round().astype(int)
    return [" ".join(long_enough[i][:prompt_words]) for i in picks]


def stored_boundary(cfg: DictConfig, out_dir: Path) -> BoundaryResult:
    """The stored boundary result for this model and data; runs the boundary experiment first if allowed."""
    control = control_of(cfg)  # a control's scales come from the control's own boundary result
    weights_id = model_identity(cfg.model, cfg.paths.cache_dir, control)  # the stored result must be for these weights
    if cfg.experiment.run_boundary_first and not boundary_path(cfg.paths.store_dir, cfg.model.name, weights_id,
                                                               cfg.data, control).exists():
        boundary_cfg = cfg.copy()
        with open_dict(boundary_cfg):
            boundary_cfg.experiment = OmegaConf.create({"name": "boundary"})  # all conf/experiment/boundary.yaml sets
        log.info("no stored boundary result: running the boundary experiment first (%s)", out_dir / "boundary")
        (out_dir / "boundary").mkdir(parents=True, exist_ok=True)
        run_boundary(boundary_cfg, out_dir / "boundary")
    return load_boundary(cfg.paths.store_dir, cfg.model.name, weights_id, cfg.data, control)  # a clear error if none


@dataclass
class Measured:
    """What one intervention run measured, before it is written up."""

    loaded: LoadedModel
    blocks: list[int]
    blocks_source: str
    boundary: BoundaryResult | None
    prompts: list[str]
    activation_std: list[float]  # s_0..s_L
    n_std_sentences: int
    clean: Generated
    treated: Generated  # noised (or, for scale=none, the clean replay)
    noise: ScaleNoise | None
    comparisons: dict[str, PairedComparison]
    brittleness: float
    brittleness_null: dict[str, Any]  # the sign-flip permutation null of the brittleness (paired_stats.py)
    scores: dict[str, dict[str, np.ndarray]]  # "clean" / "noised" -> metric -> [n_prompts]
    grammar: dict[str, Any]
    sbert_source: str
    timing: dict[str, float]


def run_intervention(cfg: DictConfig, out_dir: Path, sweep: str | None = None) -> dict[str, Any]:
    """Run one scale intervention; write results JSON, Table 2 markdown, figure, samples, W&B run (its group:
    `sweep`, the sweep's name from mspgt/run.py, or None)."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    # everything that can be checked without the model comes first
    check_sigma(cfg.sigma)
    check_scale_name(cfg.scale)
    check_generation_settings(cfg.generation)
    check_brittleness_metrics(cfg.metrics.brittleness.metrics)
    checker = make_grammar_checker(cfg.metrics.grammar)  # a LanguageTool server has answered by now
    try:
        measured = measure(cfg, out_dir, checker)
    finally:
        checker.close()
    measured.timing["total_s"] = time.perf_counter() - started
    result = result_record(cfg, measured)
    samples = [
        {"prompt": p, "clean": c, "noised": t}
        for p, c, t in zip(
            measured.prompts, measured.clean.continuations, measured.treated.continuations, strict=True
        )
    ]
    files = write_intervention_report(result, samples, out_dir)
    log.info("\n%s", files["markdown"].read_text())
    summary = summary_metrics(result)
    _track(cfg, out_dir, result, summary, files, measured.loaded, sweep)
    return summary


def measure(cfg: DictConfig, out_dir: Path, checker: GrammarChecker) -> Measured:
    """Resolve the blocks, measure s_l, sample both conditions, score them, compare them pairwise."""
    scale, gen, std_cfg = cfg.scale.name, cfg.generation, cfg.experiment.activation_std
    needs_boundary = scale != "none" and cfg.scale.get("layers") is None
    boundary = stored_boundary(cfg, out_dir) if needs_boundary else None
    sentences = controlled_sentences(load_sentences(cfg.data), control_of(cfg))  # before the model: its errors first
    prompts = choose_prompts(sentences, int(gen.n_prompts), int(gen.prompt_words))
    loaded = load_model(cfg.model, cfg.paths.cache_dir, need_attentions=False, control=control_of(cfg))
    blocks, blocks_source = noise_blocks(cfg.scale, loaded, boundary)
    sbert = load_sbert(str(cfg.metrics.sbert), device="cuda" if loaded.device.type == "cuda" else "cpu")
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    std_texts = [s.text for s in sentences[: int(std_cfg.n_sentences)]]
    activation_std = measure_activation_std(
        loaded,
        std_texts,
        max_tokens=int(cfg.data.max_tokens),
        batch_size=int(std_cfg.batch_size),
        kind=std_cfg.kind,
        exclude_first_token=bool(std_cfg.exclude_first_token),
    )
    timing["activation_std_s"] = time.perf_counter() - t0
    clean = clean_condition(cfg, loaded, prompts, sbert, checker)
    timing["clean_reused"] = float(clean.reused)  # 1: the clean condition came from the cache (clean_condition.py)
    treated, noise = sample_treated(cfg, loaded, prompts, blocks, activation_std)
    timing["generation_clean_s"], timing["generation_noised_s"] = clean.generated.seconds, treated.seconds

    t0 = time.perf_counter()
    clean_scores = clean.scores
    treated_scores = score_prompts(prompts, treated.continuations, sbert, checker)
    timing["metrics_s"] = time.perf_counter() - t0 + clean.metrics_s
    comparisons = {m: compare_paired(clean_scores[m], treated_scores[m]) for m in METRICS}
    britt_metrics = list(cfg.metrics.brittleness.metrics)
    return Measured(
        loaded=loaded,
        blocks=blocks,
        blocks_source=blocks_source,
        boundary=boundary,
        prompts=prompts,
        activation_std=activation_std,
        n_std_sentences=len(std_texts),
        clean=clean.generated,
        treated=treated,
        noise=noise,
        comparisons=comparisons,
        brittleness=brittleness(comparisons, britt_metrics),
        brittleness_null=brittleness_null(clean_scores, treated_scores, britt_metrics,
                                          int(cfg.metrics.brittleness.null_permutations),
                                          int(cfg.metrics.brittleness.null_seed)),
        scores={"clean": clean_scores, "noised": treated_scores},
        grammar={
            "backend": checker.name,
            "detail": checker.detail,
            "ignore_kinds": list(cfg.metrics.grammar.get("ignore_kinds") or []),
            # samples (either condition) the checker could not read (harper's panics), left out of grammar_errors
            "unreadable_samples": int(getattr(checker, "unreadable", 0)),
        },
        sbert_source=sbert.source,
        timing=timing,
    )


def clean_condition(cfg: DictConfig, loaded: LoadedModel, prompts: list[str], sbert: Any,
                    checker: GrammarChecker) -> CleanCondition:
    """The clean condition and its scores: from the cache where this model, these prompts and settings made it
    before (every scale and sigma of a study shares it), else sampled and scored here and stored."""
    gen = cfg.generation
    reuse = bool(gen.get("reuse_clean", True))
    path = clean_path(cfg.paths.cache_dir, clean_key(loaded, prompts, gen, cfg.metrics))
    if reuse and (stored := load_clean(path, len(prompts), int(gen.samples_per_prompt))) is not None:
        log.info("clean condition: reused from %s (the same prompts, settings and seeds)", path)
        return stored
    log.info("sampling %d prompts x %d, clean", len(prompts), gen.samples_per_prompt)
    generated = sample_continuations(loaded, prompts, gen, progress="sampling clean" if cfg.extraction.progress else None)
    t0 = time.perf_counter()
    scores = score_prompts(prompts, generated.continuations, sbert, checker)
    clean = CleanCondition(generated, scores, reused=False, metrics_s=time.perf_counter() - t0)
    if reuse:
        store_clean(path, clean)
    return clean


def sample_treated(cfg: DictConfig, loaded: LoadedModel, prompts: list[str], blocks: list[int],
                   activation_std: list[float]) -> tuple[Generated, ScaleNoise | None]:
    """The treated condition: noise in `blocks`, the same prompts, batch layout and sampling seeds as the clean
    one (scale=none: the clean condition sampled again, a replay check). Returns (treated, the noise or None)."""
    scale, sigma, gen = cfg.scale.name, float(cfg.sigma), cfg.generation
    hooks_before = forward_hook_count(loaded.blocks)
    bar = "sampling clean again" if scale == "none" else "sampling noised"
    progress = bar if cfg.extraction.progress else None
    noise = None
    if scale == "none":
        log.info("scale=none: sampling the clean condition again (replay check)")
        treated = sample_continuations(loaded, prompts, gen, progress=progress)
    else:
        layer_std = {layer: activation_std[layer] for layer in blocks}  # s_l of block l's output h_l
        noise = ScaleNoise(loaded.blocks, layer_std, sigma, seed=int(gen.noise_seed))
        log.info("sampling with noise sigma=%g in %s blocks %s", sigma, scale, _span(blocks))
        treated = sample_continuations(loaded, prompts, gen, noise=noise, progress=progress)
    if forward_hook_count(loaded.blocks) != hooks_before:
        raise RuntimeError("a noise hook was left on the model")  # ScaleNoise removes them in __exit__
    return treated, noise


def result_record(cfg: DictConfig, m: Measured) -> dict[str, Any]:
    """The results JSON (an InterventionResult): every number, every setting, the layer ranges and where they
    came from."""
    scale, sigma = cfg.scale.name, float(cfg.sigma)
    loaded, britt_metrics = m.loaded, list(cfg.metrics.brittleness.metrics)
    record = InterventionResult(
        model={"name": loaded.name, "family": loaded.family, "n_blocks": loaded.n_blocks,
               "weights_id": loaded.weights_id},
        control=control_of(cfg).record(),
        data={"key": data_key(cfg.data), **data_identity(cfg.data)},
        scale=_scale_record(cfg, m),
        sigma=sigma if scale != "none" else None,
        sigma_setting=sigma,
        noise=_noise_record(sigma, m, int(cfg.generation.noise_seed)),
        activation_std=_activation_std_record(cfg.experiment.activation_std, m),
        generation={
            **OmegaConf.to_container(cfg.generation, resolve=True),
            "n_rows": len(m.prompts) * int(cfg.generation.samples_per_prompt),
            "new_tokens": {"clean": m.clean.new_tokens, "noised": m.treated.new_tokens},
        },
        pairing={
            "unit": "prompt (each metric is one value per prompt over its samples)",
            "replay_identical": (m.clean.continuations == m.treated.continuations) if scale == "none" else None,
        },
        metrics={name: {**c.as_dict(), "column": METRIC_INFO[name].column, "meaning": METRIC_INFO[name].meaning}
                 for name, c in m.comparisons.items()},
        alpha=float(cfg.experiment.alpha),
        test="paired t-test over prompts (scipy.stats.ttest_rel); effect size Cohen's d_z; 95% CI of the "
        "relative change from the t interval of the mean difference over |clean mean| (approximate)",
        power=power_record(len(m.prompts), float(cfg.experiment.alpha)),
        grammar=m.grammar,
        sbert={"model": m.sbert_source, "compared": "prompt vs its continuation (generated text only)"},
        brittleness={"value": m.brittleness, "metrics": britt_metrics,
                     "definition": BRITTLENESS_DEFINITION.format(metrics=britt_metrics),
                     "null": m.brittleness_null},
        per_prompt=per_prompt_record(m.prompts, m.scores),
        timing=_timing_record(m.timing),
        device=str(loaded.device),
        torch_threads=torch.get_num_threads(),
        settings=OmegaConf.to_container(cfg, resolve=True),
    )
    return record.to_json()


def _scale_record(cfg: DictConfig, m: Measured) -> dict[str, Any]:
    """The noised blocks, where they came from and (from a stored result) the boundaries behind them."""
    blocks = m.blocks
    boundary = None
    if m.boundary is not None:
        boundary = {
            "path": str(boundary_path(cfg.paths.store_dir, cfg.model.name, m.loaded.weights_id, cfg.data,
                                      control_of(cfg))),
            "boundaries": m.boundary.to_json()["boundaries"],
            "scales": m.boundary.scales,
        }
    return {"name": cfg.scale.name, "blocks": blocks, "first_last": [blocks[0], blocks[-1]] if blocks else None,
            "source": m.blocks_source, "boundary": boundary}


def _noise_record(sigma: float, m: Measured, seed: int) -> dict[str, Any]:
    s, blocks = m.activation_std, m.blocks
    return {
        "formula": "h_l <- h_l + e, e ~ N(0, (sigma * s_l)^2 I) at the output of every block l of the "
        "scale, every position, every generation step",
        "layer_std": {str(b): s[b] for b in blocks},
        "requested_std": {str(b): sigma * s[b] for b in blocks},
        "realised_std": {str(b): v for b, v in (m.noise.realised_std() if m.noise else {}).items()},
        "seed": seed,
    }


def _activation_std_record(std_cfg: DictConfig, m: Measured) -> dict[str, Any]:
    return {
        "values": m.activation_std,  # s_0..s_L
        "kind": std_cfg.kind,
        "exclude_first_token": bool(std_cfg.exclude_first_token),
        "n_sentences": m.n_std_sentences,
        "stored_boundary_values": None if m.boundary is None else m.boundary.activation_std_all_tokens,
        "definition": "pooled: std of all entries of h_l over tokens and dimensions; per_dimension: "
        "sqrt(mean over dimensions of the per-dimension variance); padding excluded (our definition)",
    }


def _timing_record(t: dict[str, float]) -> dict[str, Any]:
    gen_s = t["generation_clean_s"] + t["generation_noised_s"]
    return {
        **t,
        "noised_over_clean": t["generation_noised_s"] / t["generation_clean_s"] if t["generation_clean_s"] > 0
        else None,
        "metrics_share_of_generation_plus_metrics": t["metrics_s"] / (t["metrics_s"] + gen_s),
    }


def _span(blocks: list[int]) -> str:
    return f"{blocks[0]}-{blocks[-1]}" if blocks else "none"


def summary_metrics(result: dict) -> dict[str, Any]:
    """Flat numbers a Hydra sweep collects (and W&B summarises)."""
    out: dict[str, Any] = {"brittleness": result["brittleness"]["value"],
                           "control": result.get("control", {}).get("key", "none")}
    for m, c in result["metrics"].items():
        out[f"{m}/relative_change_pct"] = c["relative_change_pct"]
        out[f"{m}/p"] = c["p"]
        out[f"{m}/t"] = c["t"]
        out[f"{m}/cohens_dz"] = c["cohens_dz"]
    out["metrics_share"] = result["timing"]["metrics_share_of_generation_plus_metrics"]
    return out


def _track(
    cfg: DictConfig, out_dir: Path, result: dict, summary: dict, files: dict, loaded: LoadedModel,
    sweep: str | None = None,
) -> None:
    scale = result["scale"]["name"]
    tracker = Tracker(
        cfg.tracking,
        out_dir,
        job_type="intervention",
        name=f"{loaded.name}-{scale}-sigma{result['sigma_setting']:g}",
        group=sweep,
        tags=[loaded.family, "intervention", f"scale:{scale}"],
        config=result["settings"],
    )
    try:
        tracker.summary(summary)
        rows = [
            [
                m,
                c["clean_mean"],
                c["noised_mean"],
                c["relative_change_pct"],
                c["t"],
                c["p"],
                c["cohens_dz"],
                c["n"],
            ]
            for m, c in result["metrics"].items()
        ]
        tracker.table(
            "intervention/metrics", ["metric", "clean", "noised", "change_pct", "t", "p", "d_z", "n"], rows
        )
        tracker.image("intervention/figure", files["figure"])
    finally:
        tracker.finish()
