"""Experiment 1 (paper 4.1): boundary detection by multi-signal fusion with bootstrap confidence intervals.

data -> model -> one extraction pass (cached) -> probes -> three signals -> fusion -> peaks -> bootstrap
-> results.json, figure, summary.md, W&B run, and the boundary store read by experiment=intervention.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mspgt.config_schema import BootstrapSettings, FusionSettings, settings
from mspgt.controls import SHUFFLED_WORDS, control_of
from mspgt.data.alignment import encode_sentences
from mspgt.data.corpus import load_sentences
from mspgt.data.labels import SRL_NOTE, TASKS, label_sentences
from mspgt.data.shuffle import shuffle_labeled
from mspgt.errors import MspgtError
from mspgt.extraction.assemble import load_statistics
from mspgt.extraction.cache import StatisticsCache
from mspgt.extraction.extract import build_statistics, cache_material
from mspgt.extraction.groups import prepare_corpus
from mspgt.files import writable_folder
from mspgt.fusion.bootstrap import bootstrap_boundaries, check_bootstrap_settings, resample_counts
from mspgt.fusion.edge_check import edge_check
from mspgt.fusion.fuse import fuse, validate_fusion
from mspgt.fusion.peaks import MATCHING_RULE, BoundaryPick, detect_boundaries
from mspgt.fusion.rival_transitions import rival_result
from mspgt.layers import relative_position, scales_from_boundaries
from mspgt.model.loading import load_model, resolve_device
from mspgt.progress import report
from mspgt.reports.boundary_report import boundary_figure, boundary_markdown, log_boundary_to_wandb
from mspgt.reports.information_report import information_figure, information_markdown, information_result
from mspgt.reports.rivals_report import rivals_markdown
from mspgt.reports.store import data_identity, data_key, save_boundary, write_json_atomic
from mspgt.results import BoundaryCI, BoundaryResult
from mspgt.signals.cka import CKA_ESTIMANDS, ESTIMATOR
from mspgt.signals.intrinsic_dimension import group_intrinsic_dimension
from mspgt.signals.layerwise import layer_signals
from mspgt.signals.probes import (
    ProbeResult,
    ProbeSeeds,
    probe_f1,
    probe_note,
    resolve_precision,
    train_probes,
)
from mspgt.signals.rivals import RivalSettings
from mspgt.statistics import CorpusStatistics, variant_keys

log = logging.getLogger(__name__)

MIN_GROUPS = 10  # fewer groups make a bootstrap over groups meaningless (our choice)


def validate_boundary_config(cfg: DictConfig) -> None:
    """Every check that needs no data or model, so bad settings fail before any long work."""
    validate_fusion(dict(cfg.fusion.weights), dict(cfg.fusion.signals), cfg.fusion.prominence)
    b = cfg.bootstrap
    check_bootstrap_settings(b.n_resamples, b.ci_level, b.acceptance_width, b.max_missing_fraction, b.group_size)
    unknown = [t for t in cfg.probes.tasks if t not in TASKS]
    if unknown:
        raise MspgtError(f"unknown probe tasks {unknown}", f"probes.tasks is a subset of {list(TASKS)}")
    if cfg.fusion.signals.probe_jump and not cfg.probes.tasks:
        raise MspgtError("probe_jump is on but probes.tasks is empty", "name tasks, or fusion.signals.probe_jump=false")
    if not 0 < cfg.probes.eval_fraction < 1:
        raise MspgtError(f"probes.eval_fraction={cfg.probes.eval_fraction}", "use a fraction in (0, 1), e.g. 0.3")
    if cfg.data.labels == "gold" and cfg.data.source != "conllu":
        raise MspgtError(f"data.labels=gold needs gold annotations, and data={cfg.data.name} has none",
                         "use data=conllu for gold labels, or data.labels=silver")


def minimum_sentences(cfg: DictConfig) -> int:
    """Enough sentences for MIN_GROUPS groups and at least two groups on each side of the probe split."""
    f = cfg.probes.eval_fraction
    groups = max(MIN_GROUPS, math.ceil(2 / f), math.ceil(2 / (1 - f)))
    return groups * cfg.bootstrap.group_size


def obtain_statistics(cfg: DictConfig) -> tuple[CorpusStatistics, StatisticsCache, dict[str, float]]:
    """The corpus statistics from the cache, or one extraction pass that fills it (resuming if killed)."""
    timings: dict[str, float] = {}
    cache = StatisticsCache(cfg.paths.cache_dir, cache_material(cfg, data_identity(cfg.data)))
    why = writable_folder(cache.dir)
    if why is not None:  # a read-only cache (a shared mount): a complete entry is read without a lock
        t = time.perf_counter()
        stats = load_statistics(cache) if cfg.extraction.cache else None
        timings["read_s"] = time.perf_counter() - t
        if stats is None:
            raise MspgtError(f"the statistics cache {cache.dir} cannot be written ({why}) and holds no complete "
                             "entry for these settings",
                             "point paths.cache_dir (or MSPGT_CACHE_DIR) at a writable folder")
        log.info("statistics loaded from the read-only cache %s (no model needed)", cache.dir)
        return stats, cache, timings
    with cache.lock(cfg.extraction.lock_timeout_s):
        t = time.perf_counter()
        stats = load_statistics(cache) if cfg.extraction.cache else None
        if stats is not None:
            timings["read_s"] = time.perf_counter() - t
            log.info("statistics loaded from the cache %s (no model needed)", cache.dir)
            return stats, cache, timings
        entry = cache
        if not cfg.extraction.cache:  # recompute into a scratch entry: the finished one is neither read nor deleted
            entry = StatisticsCache(Path(cfg.paths.cache_dir) / "recompute" / f"{cache.key}-{os.getpid()}",
                                    cache.material)
            log.info("extraction.cache=false: recomputing in %s (the cache entry %s is kept)", entry.dir, cache.dir)
        t = time.perf_counter()
        sentences = load_sentences(cfg.data, minimum=minimum_sentences(cfg))
        control = control_of(cfg)
        loaded = load_model(cfg.model, cfg.paths.cache_dir, need_attentions=True, probe_tokens=cfg.data.max_tokens,
                            control=control)
        timings["load_s"] = time.perf_counter() - t
        t = time.perf_counter()
        labeled = label_sentences(sentences, cfg.data.labels, tasks=list(cfg.probes.tasks))
        if control.name == SHUFFLED_WORDS:  # labels of the real sentence, then the words move with them
            labeled = [shuffle_labeled(s, control.seed) for s in labeled]
        encoded = encode_sentences(loaded.tokenizer, labeled, cfg.data.max_tokens)
        corpus = prepare_corpus(labeled, encoded, list(cfg.probes.tasks), cfg.bootstrap.group_size, cfg.probes,
                            cfg.bootstrap.grouping, cfg.bootstrap.grouping_seed)
        timings["label_s"] = time.perf_counter() - t
        log.info("%d sentences in %d groups of %d; %s, %d blocks", len(sentences), corpus.n_groups,
                 cfg.bootstrap.group_size, loaded.name, loaded.n_blocks)
        t = time.perf_counter()
        build_statistics(loaded, corpus, entry, cfg)
        timings["extract_s"] = time.perf_counter() - t
        del loaded
        t = time.perf_counter()
        stats = load_statistics(entry)
        timings["read_s"] = time.perf_counter() - t
        gone = [] if stats is not None else [  # before a scratch entry is removed below
            entry.chunk_path(i).name for i in range(entry.n_chunks or 0) if not entry.chunk_path(i).exists()]
        if entry is not cache:
            shutil.rmtree(entry.dir.parent.parent, ignore_errors=True)
        if stats is None:
            if gone:  # deleted (or found corrupt and dropped) after they were written
                raise MspgtError(f"{len(gone)} chunk(s) of {entry.dir} disappeared while this run built it "
                                 f"({', '.join(gone[:4])}): deleted by something else, or found corrupt",
                                 "run the same command again: only the missing chunks are recomputed"
                                 if entry is cache else "run the same command again (extraction.cache=false "
                                 "recomputes them all)")
            raise MspgtError(f"the statistics cache {cache.dir} could not be read back after writing it",
                             "check the disk (space, permissions) under paths.cache_dir, then re-run")
    return stats, cache, timings


def obtain_probes(cfg: DictConfig, stats: CorpusStatistics, cache: StatisticsCache
                  ) -> tuple[ProbeResult | ProbeSeeds, bool]:
    """Probes trained once per statistics, probe settings and training seed, kept beside the statistics (so
    changing fusion or bootstrap settings never retrains them), trained under their own lock: of two jobs
    needing them, one trains and the other waits and reuses them. probes.n_seeds > 1: the training seeds
    probes.train_seed, +1, ... (each kept on its own), combined as ProbeSeeds. Returns the result and
    whether every seed came from the cache."""
    p = cfg.probes
    device = str(resolve_device(p.device))
    runs, all_cached = [], True
    for train_seed in range(p.train_seed, p.train_seed + p.n_seeds):
        settings = {k: p[k] for k in ("hidden", "epochs", "batch_size", "lr", "weight_decay", "schedule",
                                      "control_task")}
        settings["seed"] = train_seed  # the training seed (init, order, control labels); probes.seed: the split
        settings["device"] = device.split(":")[0]
        settings["precision"] = resolve_precision(str(p.precision), device)  # what ran (auto: hardware-dependent)
        result, cached = _trained_probes(cfg, stats, cache, settings, device)
        runs.append(result)
        all_cached &= cached
    return (runs[0] if len(runs) == 1 else ProbeSeeds(runs)), all_cached


def _trained_probes(cfg: DictConfig, stats: CorpusStatistics, cache: StatisticsCache, settings: dict[str, Any],
                    device: str) -> tuple[ProbeResult, bool]:
    """One training seed's probes, from the cache or trained (obtain_probes)."""
    p = cfg.probes
    writable = writable_folder(cache.dir) is None
    lock = cache.artifact_lock("probes", settings, cfg.extraction.lock_timeout_s) if writable else nullcontext()
    with lock:
        cached = cache.load_artifact("probes", settings) if cfg.extraction.cache else None
        if cached is not None:
            log.info("probes loaded from the cache %s", cache.artifact_path("probes", settings))
            return cached, True
        result = train_probes(
            stats.probe_train, stats.probe_eval, {k: len(v) for k, v in stats.label_names.items()},
            hidden=p.hidden, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, weight_decay=p.weight_decay,
            schedule=p.schedule, precision=settings["precision"], seed=settings["seed"],
            control_task=p.control_task, device=device, progress=cfg.extraction.progress,
            steady_malloc=bool(p.get("steady_malloc", True)),
        )
        log.info("probes (training seed %d) trained in %.1f s", settings["seed"], result.seconds)
        if writable:
            cache.save_artifact("probes", settings, result)
        else:
            log.warning("the cache %s is read-only: the trained probes are not kept", cache.dir)
    return result, False


def run_boundary(cfg: DictConfig, out_dir: Path, sweep: str | None = None) -> dict[str, Any]:
    """Experiment 1 on `cfg`, written to `out_dir`; `sweep`: the sweep's name (the W&B group) or None."""
    validate_boundary_config(cfg)
    t_all = time.perf_counter()
    stats, cache, timings = obtain_statistics(cfg)
    probes: ProbeResult | ProbeSeeds | None = None
    if cfg.fusion.signals.probe_jump:
        report("probes")  # the current step, to the job's W&B run
        t = time.perf_counter()
        probes, from_cache = obtain_probes(cfg, stats, cache)
        timings["probes_cached_s" if from_cache else "probes_s"] = time.perf_counter() - t
    fusion, bootstrap = settings(cfg.fusion, FusionSettings), settings(cfg.bootstrap, BootstrapSettings)
    report("bootstrap", n_resamples=bootstrap.n_resamples)
    found = detect_with_bootstrap(fusion, bootstrap, str(cfg.probes.f1_average), stats, probes, timings)
    report("information")
    t = time.perf_counter()
    information = information_result(stats, probes, {name: ci.layer for name, ci in found.cis.items()}, cfg)
    timings["information_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rivals = rivals_record(cfg, stats, found, cache, timings)
    timings["rivals_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_all
    record = boundary_record(cfg, stats, probes, found, information, timings)
    record.rivals = rivals
    report("outputs")
    write_boundary_outputs(cfg, out_dir, record, sweep)
    return record.flat_summary()


def rivals_record(cfg: DictConfig, stats: CorpusStatistics, found: Found, cache: StatisticsCache | None = None,
                  timings: dict[str, float] | None = None) -> dict[str, Any] | None:
    """The rival layer curves over the boundary bootstrap's own resamples (fusion/rival_transitions.py): the
    pass's block-influence and logit-lens sums, and the intrinsic dimension per group of the probe sample."""
    settings = RivalSettings.from_config(cfg.get("rivals"))
    if settings is None:
        return None
    ids = None
    if settings.intrinsic_dimension:
        t = time.perf_counter()
        ids, cached = obtain_intrinsic_dimension(cfg, stats, settings, cache)
        if timings is not None:
            timings["intrinsic_dimension_cached_s" if cached else "intrinsic_dimension_s"] = time.perf_counter() - t
    if not stats.rivals and ids is None:
        return None
    b = cfg.bootstrap
    counts = resample_counts(stats.n_groups, int(b.n_resamples), np.random.default_rng(b.seed))  # as the CIs
    boundaries = {name: (ci.layer, ci.chosen) for name, ci in found.cis.items()}
    return rival_result(stats.rivals, ids, counts, boundaries, settings, float(b.ci_level)).to_json()


def obtain_intrinsic_dimension(cfg: DictConfig, stats: CorpusStatistics, settings: RivalSettings,
                               cache: StatisticsCache | None) -> tuple[np.ndarray | None, bool]:
    """Per-group ID [2, G, L+1] of the stored probe sample (None without one), and whether it came from the
    cache: an artifact beside the statistics, keyed by RivalSettings.id_key()."""
    key = settings.id_key()
    use = cache is not None and bool(cfg.extraction.cache)
    if use and (cached := cache.load_artifact("intrinsic_dimension", key)) is not None:  # type: ignore[union-attr]
        return cached, True
    sample = [s for s in (stats.probe_train, stats.probe_eval) if s.group.size]
    if not sample:
        return None, False
    ids = group_intrinsic_dimension(np.concatenate([s.features for s in sample]),
                                    np.concatenate([s.group for s in sample]), stats.n_groups,
                                    settings.gride_range_max, settings.id_min_points, settings.id_points,
                                    settings.id_reference)
    if use and writable_folder(cache.dir) is None:  # type: ignore[union-attr]
        cache.save_artifact("intrinsic_dimension", key, ids)  # type: ignore[union-attr]
    return ids, False


@dataclass
class Found:
    """The signals, the fused evidence, the point estimate and the bootstrap CIs of one run."""

    signals: dict[str, np.ndarray]  # signal -> [L]
    evidence: np.ndarray  # [L]
    pick: BoundaryPick
    cis: dict[str, BoundaryCI]
    cka_variant: str
    js_variant: str
    edge_check: dict[str, Any] | None = None  # the interior detection where a boundary is at an edge


def detect_with_bootstrap(fusion: FusionSettings, bootstrap: BootstrapSettings, f1_average: str,
                          stats: CorpusStatistics, probes: ProbeResult | ProbeSeeds | None, timings: dict[str, float]) -> Found:
    """Signals (paper eqs. 3-5), fusion (eq. 6), peaks, and the bootstrap over groups of all three."""
    weights, enabled = asdict(fusion.weights), asdict(fusion.signals)
    cka_v, js_v = variant_keys(fusion)
    first_block = fusion.attention.first_block
    signals = layer_signals(stats, probes, enabled, cka_v, js_v, first_block, f1_average=f1_average)
    evidence = fuse(signals, weights, enabled)
    replicated_first = fusion.signals.attention_drift and first_block == "replicate"
    pick = detect_boundaries(evidence, fusion.prominence, replicated_first, fusion.edges)

    def evidence_fn(counts: np.ndarray, seed_counts: np.ndarray | None = None
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        drawn = probes if seed_counts is None else probes.resampled(seed_counts)  # type: ignore[union-attr]
        resampled = layer_signals(stats, drawn, enabled, cka_v, js_v, first_block, counts, f1_average)
        return fuse(resampled, weights, enabled), resampled

    def run_bootstrap(point: BoundaryPick, edges: str) -> dict[str, BoundaryCI]:
        b = bootstrap
        cis = bootstrap_boundaries(
            evidence_fn, stats.n_groups, stats.n_blocks, point, n_resamples=b.n_resamples, seed=b.seed,
            ci_level=b.ci_level, acceptance_width=b.acceptance_width, max_missing_fraction=b.max_missing_fraction,
            prominence=fusion.prominence, replicated_first=replicated_first,
            n_probe_seeds=len(probes.runs) if isinstance(probes, ProbeSeeds) else 1, edges=edges,
        )
        for ci in cis.values():
            ci.relative = relative_position(ci.layer, stats.n_blocks) if ci.layer else None
        return cis

    t = time.perf_counter()
    cis = run_bootstrap(pick, fusion.edges)
    checked = edge_check(evidence, pick, fusion.prominence, replicated_first, run_bootstrap, signals)
    timings["bootstrap_s"] = time.perf_counter() - t
    return Found(signals, evidence, pick, cis, cka_v, js_v, checked)


def boundary_record(cfg: DictConfig, stats: CorpusStatistics, probes: ProbeResult | ProbeSeeds | None, found: Found,
                    information: dict[str, Any] | None, timings: dict[str, float]) -> BoundaryResult:
    """The typed result (mspgt/results.py) of one boundary run."""
    L, pick = stats.n_blocks, found.pick
    scales = None
    if pick.li is not None and pick.ig is not None:
        scales = scales_from_boundaries(pick.li, pick.ig, L).as_dict()
    average = str(cfg.probes.f1_average)
    f_point = probe_f1(probes, np.ones(stats.n_groups), stats.n_groups, average) if probes is not None else None
    return BoundaryResult(
        model={"name": cfg.model.name, "family": cfg.model.family, "n_blocks": L,
               "weights_id": stats.meta.get("weights_id")},
        control=control_of(cfg).record(),
        data={"name": cfg.data.name, "key": data_key(cfg.data), **data_identity(cfg.data),
              "n_sentences": stats.meta.get("n_sentences"), "n_groups": stats.n_groups,
              "group_size": cfg.bootstrap.group_size, "grouping": cfg.bootstrap.grouping,
              "grouping_seed": cfg.bootstrap.grouping_seed},
        probe_sample=probe_sample_record(stats),
        boundaries=dict(found.cis),
        found_two_peaks=pick.li is not None,
        peaks={"layers": pick.peaks, "prominences": pick.prominences},
        edge_check=found.edge_check,
        scales=scales,
        layers=list(range(1, L + 1)),
        signals={k: v.tolist() for k, v in found.signals.items()},
        evidence=found.evidence.tolist(),
        probe_f1_by_state=None if f_point is None else f_point.tolist(),  # F(l) for h_0..h_L
        probe_selectivity_pos=None if probes is None else np.asarray(probes.selectivity).tolist(),
        probe_tasks=list(cfg.probes.tasks),
        notes={**boundary_notes(cfg, found.cka_variant, found.js_variant),
               **({} if probes is None else {"probes": probe_note(probes, cfg.probes.seed)})},
        information=information,  # curves with bootstrap bands, the eq. 28 test (None: not stored)
        activation_std_all_tokens=stats.activation_std().tolist(),  # h_0..h_L, position 0 included
        timings=timings,
        cache_dir=stats.meta.get("cache_dir"),
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def boundary_notes(cfg: DictConfig, cka_variant: str, js_variant: str) -> dict[str, str]:
    """What each output names: estimators, variants and our definitions."""
    b = cfg.bootstrap
    return {
        "srl": SRL_NOTE,
        "cka_estimator": f"{ESTIMATOR}; variant={cka_variant}",
        "cka_estimand": CKA_ESTIMANDS[cfg.bootstrap.grouping],
        "peak_matching": MATCHING_RULE,
        "edges": cfg.fusion.edges + (" (E padded with a zero at each end: block 1 and block L may be peaks)"
                                     if cfg.fusion.edges == "padded" else " (peaks at blocks 2..L-1 only)"),
        "attention_variant": js_variant,
        "attention_first_block": cfg.fusion.attention.first_block + (
            " (S_attn(1) = S_attn(2); a plateau this makes at blocks 1-2 is centred from block 2 on)"
            if cfg.fusion.attention.first_block == "replicate" else ""),
        "f1_average": cfg.probes.f1_average,
        "fusion_weights": "normalised to sum 1 over enabled signals (paper's values unreadable: ours)",
        "acceptance": f"CI width < {b.acceptance_width} layers and at most {b.max_missing_fraction:.0%} of "
                      "resamples without the peak (the second condition is our definition)",
    }


def write_boundary_outputs(cfg: DictConfig, out_dir: Path, record: BoundaryResult, sweep: str | None) -> None:
    """Figures, summary.md, the boundary store, results.json (last: it means the job finished), W&B."""
    result = record.to_json()  # the file's content (NaN kept here; the file gets null)
    fig = boundary_figure(record, out_dir / "boundaries.png")
    if record.information is not None:
        information_figure(result, out_dir / "information.png")
    (out_dir / "summary.md").write_text(boundary_markdown(record) + information_markdown(result)
                                        + rivals_markdown(result))
    store_path = save_boundary(cfg.paths.store_dir, cfg.model.name, cfg.data, record, control_of(cfg))
    write_json_atomic(out_dir / "results.json", result)
    log.info("\n%s", boundary_markdown(record) + information_markdown(result) + rivals_markdown(result))
    log.info("results: %s (stored for interventions at %s)", out_dir / "results.json", store_path)
    log_boundary_to_wandb(cfg, out_dir, record, fig, sweep)


def probe_sample_record(stats: CorpusStatistics) -> dict[str, Any]:
    """How many words and groups the probes were trained and evaluated on (each side of the split)."""
    n_eval_groups = int(stats.group_is_eval.sum())
    out: dict[str, Any] = {"rule": "a fixed number of words per group, spread over every group of its side, "
                                   "seeded (extraction.groups.spread_word_sample)"}
    for name, sample, side in (("train", stats.probe_train, stats.n_groups - n_eval_groups),
                               ("eval", stats.probe_eval, n_eval_groups)):
        per_group = np.bincount(sample.group) if sample.group.size else np.zeros(1, dtype=np.int64)  # [G]
        out[name] = {"words": int(sample.group.size), "groups": int(np.count_nonzero(per_group)),
                     "groups_on_side": side, "max_words_per_group": int(per_group.max())}
    return out


__all__ = ["run_boundary", "validate_boundary_config"]
