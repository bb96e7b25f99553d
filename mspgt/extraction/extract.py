"""The one pass over the corpus (paper 4.1.1; docs/method.md "Data unit"): hooks on the real blocks, and per
sentence group only what the three signals need. Memory does not grow with the number of sentences.
Corpus preparation: corpus.py; the background chunk writer: writer.py; cache assembly: assemble.py.

Per group: the unbiased HSIC matrix between all states h_0..h_L for each CKA variant; the summed JS
divergences between adjacent blocks' attention; and, for a bounded sample of words, the states at the
word's last sub-word token with its labels. Results go to a resumable on-disk cache (cache.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from mspgt.controls import control_of
from mspgt.data.alignment import EncodedSentence
from mspgt.errors import MspgtError
from mspgt.extraction.cache import StatisticsCache
from mspgt.extraction.groups import PreparedCorpus
from mspgt.extraction.hooks import residual_stream
from mspgt.extraction.writer import BackgroundWrites
from mspgt.model.identity import model_identity
from mspgt.model.loading import LoadedModel
from mspgt.model.sizing import auto_batch_size, auto_call_overhead_tokens
from mspgt.progress import LiveProgress
from mspgt.signals.attention_drift import attention_js_sums_variants
from mspgt.signals.block_influence import group_block_influence
from mspgt.signals.cka import group_hsic_variants
from mspgt.signals.information import CURVES, InformationSettings, group_information_tensor, null_permutation
from mspgt.signals.logit_lens import lens_reader, logit_lens_sums
from mspgt.signals.rivals import RivalSettings
from mspgt.statistics import CKA_VARIANTS, JS_VARIANTS, variant_keys

log = logging.getLogger(__name__)

# Bump when what is stored changes: old cache entries are then never used. 4: attention drift on each block's
# own keys (sliding windows), weights id from the content of local folders.
STATS_VERSION = 5


def stored_variants(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """The CKA and JS variants the pass stores: only those the fusion settings select (`selected`, the default:
    the fastest pass) or every one (`all`: a variant study then switches without the model). Our option."""
    mode = cfg.extraction.variants
    if mode == "all":
        return list(CKA_VARIANTS), list(JS_VARIANTS)
    if mode == "selected":
        cka_v, js_v = variant_keys(cfg.fusion)
        return [cka_v], [js_v]
    raise MspgtError(f"extraction.variants={mode!r}", "use extraction.variants=all or selected")


def cache_material(cfg: DictConfig, data_identity: dict) -> dict:
    """What the cached statistics depend on (and nothing else: fusion and bootstrap settings are not here)."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    for k in ("device", "device_map"):
        model.pop(k, None)
    control = control_of(cfg)  # docs/controls.md; `none` adds no key, so entries made before controls stay valid
    return {
        "version": STATS_VERSION,
        "model": model,
        "weights_id": model_identity(cfg.model, cfg.paths.cache_dir, control),  # content, not the path (identity.py)
        **({"control": control.key} if control.active else {}),
        "data": data_identity,
        "group_size": cfg.bootstrap.group_size,
        "grouping": [cfg.bootstrap.grouping, cfg.bootstrap.grouping_seed],
        "batch_size": cfg.extraction.batch_size,
        "call_overhead_tokens": cfg.extraction.get("call_overhead_tokens", "auto"),
        "variants": stored_variants(cfg),
        "probes": {k: cfg.probes[k] for k in ("tasks", "eval_fraction", "max_train_words", "max_eval_words", "seed")},
        "information": None if (info := information_settings(cfg)) is None else info.key(),
        "rivals": None if (rivals := RivalSettings.from_config(cfg.get("rivals"))) is None else rivals.pass_key(),
    }


def information_settings(cfg: DictConfig) -> InformationSettings | None:
    """The information curves the pass stores (extraction.information; None: off), checked before any work."""
    return InformationSettings.from_config(cfg.extraction.get("information"))


def _spread(n: int, cap: int) -> torch.Tensor:
    """At most `cap` of n row indices, evenly spaced (deterministic): bounds the information curves' cost."""
    return torch.arange(n) if n <= cap else torch.linspace(0, n - 1, cap).round().long()


def _batches(group_of: np.ndarray, lo: int, hi: int, per_batch: int) -> list[list[int]]:
    """Sentence indices of groups lo..hi-1, in batches of whole groups (at most `per_batch` sentences)."""
    sents = np.nonzero((group_of >= lo) & (group_of < hi))[0].tolist()
    group_size = int(np.sum(group_of == group_of[0]))
    step = max(group_size, per_batch - per_batch % group_size)
    return [sents[i : i + step] for i in range(0, len(sents), step)]


def decoder_calls(lengths: list[int], overhead_tokens: int) -> list[list[int]]:
    """How one batch (sentences of `lengths` tokens) is run through the decoder (our rule): its sentences
    sorted by length (ties in batch order), cut into the runs that minimise padded tokens (each run's size x
    its longest sentence) + `overhead_tokens` per decoder call; exact, by dynamic programming over the cut
    points of the sorted order (O(B^2) for B sentences). Returns each call's positions in the batch; a batch
    left whole keeps its own order. Padding never enters a statistic (masked), so only the float rounding of
    the forward depends on this, not what is computed."""
    order = sorted(range(len(lengths)), key=lambda b: (lengths[b], b))
    sorted_len = [lengths[b] for b in order]
    n = len(order)
    cost = [0.0] + [float("inf")] * n  # cost[j]: the best split of the j shortest sentences
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            c = cost[i] + (j - i) * sorted_len[j - 1] + overhead_tokens
            if c < cost[j]:
                cost[j], cut[j] = c, i
    runs: list[list[int]] = []
    j = n
    while j:
        runs.append(order[cut[j] : j])
        j = cut[j]
    return runs[::-1] if len(runs) > 1 else [list(range(n))]


def batch_calls(corpus: PreparedCorpus, lo: int, hi: int, batch_size: int,
                overhead_tokens: int) -> list[tuple[list[int], list[list[int]]]]:
    """The pass's plan for groups lo..hi-1: each batch (its sentence indices, _batches) with its decoder calls
    (positions in the batch, decoder_calls). What the pass runs, and what the benchmarks run beside it."""
    return [(batch, decoder_calls([len(corpus.encoded[i].input_ids) for i in batch], overhead_tokens))
            for batch in _batches(corpus.group_of, lo, hi, batch_size)]


def call_overhead_tokens(cfg: DictConfig, device: torch.device) -> int:
    """extraction.call_overhead_tokens, with `auto` resolved for the device (mspgt/model/sizing.py)."""
    value = cfg.extraction.get("call_overhead_tokens", "auto")
    return auto_call_overhead_tokens(device) if value == "auto" else int(value)


@dataclass
class _ChunkAccumulator:
    """What one chunk (groups lo..hi-1) collects while its batches run: per-group results stay on the device
    until the chunk ends; `out` holds the host arrays filled as it goes."""

    lo: int
    out: dict[str, np.ndarray]
    hsic: dict[str, list[torch.Tensor]]  # CKA variant -> per group [m, m], on the device
    feat: dict[int, np.ndarray]  # split -> [words, m, d] float16, this chunk's sampled words, filled in order
    moments: list[torch.Tensor] = field(default_factory=list)  # per group [2, m]: sums of mean_d(h), mean_d(h^2)
    curves: list[torch.Tensor] = field(default_factory=list)  # per group [len(CURVES), m]: information curves, on the device
    influence: list[torch.Tensor] = field(default_factory=list)  # per group [L]: sums of 1 - cos(h_{l-1}, h_l)
    lens: list[torch.Tensor] = field(default_factory=list)  # per group [m, t, d]: the logit lens's sampled states
    probe: dict[int, dict[str, list]] = field(default_factory=lambda: {1: {}, 2: {}})  # split -> label arrays
    filled: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 0})  # split -> words written so far
    act_count: int = 0


def probe_word_counts(corpus: PreparedCorpus, lo: int, hi: int) -> dict[int, int]:
    """Split (1 train, 2 held out) -> how many sampled words groups lo..hi-1 hold."""
    sentences = np.nonzero((corpus.group_of >= lo) & (corpus.group_of < hi))[0]
    return {split: sum(int(np.count_nonzero(corpus.probe_take[i] == split)) for i in sentences) for split in (1, 2)}


class FeatureBuffers:
    """Where the probe sample's float16 features go: each chunk writes its words straight into one of two
    buffers per split, used in turn (chunk k of the pass into pair k % 2): the chunk being filled and the
    previous one, which the background writer may still be writing (writer.py: at most one write in flight;
    a submit waits for the previous write). Nothing is concatenated at the end of a chunk, and no fresh
    buffer of hundreds of MB is allocated (and page-faulted) per chunk. Sized for the largest chunk."""

    def __init__(self, words: dict[int, int], m: int, d: int) -> None:
        self.pairs = [{split: np.empty((n, m, d), np.float16) for split, n in words.items()} for _ in range(2)]

    def for_chunk(self, k: int, words: dict[int, int]) -> dict[int, np.ndarray]:
        return {split: self.pairs[k % 2][split][:n] for split, n in words.items()}


def _new_accumulator(lo: int, hi: int, L: int, cka_keys: list[str], js_keys: list[str],
                     feat: dict[int, np.ndarray]) -> _ChunkAccumulator:
    ng = hi - lo
    out: dict[str, np.ndarray] = {}
    for v in cka_keys:
        out[f"ntok_{v}"] = np.zeros(ng, dtype=np.int64)
    for v in js_keys:
        out[f"js_sum_{v}"] = np.zeros((ng, L))
        out[f"js_first_{v}"] = np.zeros(ng)
        out[f"js_count_{v}"] = np.zeros(ng, dtype=np.int64)
    out["info_ntok"] = np.zeros(ng, dtype=np.int64)  # tokens that entered each group's information kernels
    out["bi_count"] = np.zeros(ng, dtype=np.int64)  # tokens in each group's block-influence sums
    out["lens_count"] = np.zeros(ng, dtype=np.int64)  # tokens read through the logit lens
    out["group_range"] = np.array([lo, hi], dtype=np.int64)  # checked on read-back (StatisticsCache.load_chunk)
    return _ChunkAccumulator(lo=lo, out=out, hsic={v: [] for v in cka_keys}, feat=feat)


def _padded_batch(enc: list[EncodedSentence], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, T] token ids right-padded with `pad`, [B, T] attention mask) on `device`."""
    lengths = [len(e.input_ids) for e in enc]
    T = max(lengths)
    ids = torch.full((len(enc), T), pad, dtype=torch.long)
    mask = torch.zeros((len(enc), T), dtype=torch.long)
    for b, e in enumerate(enc):
        ids[b, : lengths[b]] = torch.tensor(e.input_ids)
        mask[b, : lengths[b]] = 1
    return ids.to(device), mask.to(device)


def _add_group_terms(acc: _ChunkAccumulator, tokens: torch.Tensor, starts: np.ndarray, lengths: list[int],
                     groups: np.ndarray, cka_keys: list[str], info: InformationSettings | None,
                     rivals: RivalSettings | None = None, lens: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     ) -> None:
    """Per group of the batch: the unbiased HSIC of every pair of states per CKA variant, the activation
    moments, the information curves and the rival curves that live in the pass (block influence, logit lens).
    `tokens` [m, N, d] the batch's real tokens, sentence after sentence."""
    for g in np.unique(groups):
        members = np.nonzero(groups == g)[0]  # consecutive rows of the batch
        rows = tokens[:, starts[members[0]] : starts[members[-1] + 1]].float()  # (m, n, d) h_0..h_L
        keep = torch.cat([torch.arange(lengths[b]) > 0 for b in members])  # (n,) on the CPU: no sync
        # representation change: unbiased HSIC between every pair of states, per CKA variant
        terms = group_hsic_variants(rows, keep, cka_keys)
        for v, matrix in terms.hsic.items():
            acc.hsic[v].append(matrix)
            acc.out[f"ntok_{v}"][g - acc.lo] = int(keep.sum()) if CKA_VARIANTS[v][1] else rows.shape[1]
        # activation scale s_l (interventions), from the same kernel
        acc.moments.append(torch.stack([terms.sum_of_means, terms.sum_of_mean_squares]))
        if info is not None:  # position 0 (attention sink) left out; at most info.max_tokens, evenly spread
            kept = keep.nonzero()[:, 0]  # (n_kept,)
            kept = kept[_spread(len(kept), info.max_tokens)].to(rows.device)
            perm = null_permutation(len(kept), int(g), info.null_seed)  # the shuffle null's pairing
            acc.curves.append(group_information_tensor(rows[:, kept], info, perm))
            acc.out["info_ntok"][g - acc.lo] = len(kept)
        if rivals is not None and rivals.block_influence:  # position 0 left out, every other token
            acc.influence.append(group_block_influence(rows[:, keep.to(rows.device)]))
            acc.out["bi_count"][g - acc.lo] = int(keep.sum())
        if lens is not None and rivals is not None:  # a few tokens, evenly spread, position 0 left out
            kept = keep.nonzero()[:, 0]
            kept = kept[_spread(len(kept), rivals.logit_lens_tokens)].to(rows.device)
            acc.lens.append(rows[:, kept])  # read through the unembedding once per chunk (_finish_chunk)
            acc.out["lens_count"][g - acc.lo] = len(kept)
        acc.act_count += rows.shape[1]


def _add_probe_sample(acc: _ChunkAccumulator, corpus: PreparedCorpus, batch: list[int],
                      enc: list[EncodedSentence], tokens: torch.Tensor, starts: np.ndarray) -> None:
    """The probe sample: states at each sampled word's last sub-word token, in corpus order per split."""
    for split in (1, 2):
        at, rows_of = [], []
        for b, i in enumerate(batch):
            words = np.nonzero(corpus.probe_take[i] == split)[0]
            if len(words):
                at.append(starts[b] + np.asarray(enc[b].word_token)[words])
                rows_of.append((i, words))
        if not at:
            continue
        where = torch.from_numpy(np.concatenate(at)).to(tokens.device)
        p, at_word = acc.probe[split], acc.filled[split]
        acc.filled[split] += len(where)
        # gathered straight into word order (w, m, d), so the float16 cast reads and writes contiguously
        # (index_select on dim 1, then permute: 2.7x slower, a strided cast)
        _to_float16(tokens.permute(1, 0, 2).index_select(0, where), acc.feat[split][at_word : acc.filled[split]])
        for i, words in rows_of:
            p.setdefault("group", []).append(np.full(len(words), corpus.group_of[i], dtype=np.int64))
            p.setdefault("type", []).append(corpus.word_types[i][words])
            for t, ids_t in corpus.label_ids[i].items():
                p.setdefault(f"lab_{t}", []).append(ids_t[words])


def _add_attention_drift(acc: _ChunkAccumulator, attentions: Any, mask: torch.Tensor, groups: np.ndarray,
                         js_keys: list[str], layout: Any) -> None:
    """Attention drift: JS sums per sentence, added into its group (each block's own keys)."""
    by_sink = attention_js_sums_variants(attentions, mask, tuple(v == "nosink" for v in js_keys), layout)
    for v in js_keys:
        js, first, count = (x.cpu().numpy() for x in by_sink[v == "nosink"])
        np.add.at(acc.out[f"js_sum_{v}"], groups - acc.lo, js)
        np.add.at(acc.out[f"js_first_{v}"], groups - acc.lo, first)
        np.add.at(acc.out[f"js_count_{v}"], groups - acc.lo, count)


def _finish_chunk(acc: _ChunkAccumulator, cka_keys: list[str], tasks: list[str],
                  lens: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, np.ndarray]:
    """Copy the chunk's device results to the host, once."""
    out = acc.out
    for v in cka_keys:
        out[f"hsic_{v}"] = torch.stack(acc.hsic[v]).cpu().numpy()  # (groups, m, m)
    if acc.curves:
        stacked = torch.stack(acc.curves).cpu().numpy()  # (groups, len(CURVES), m)
        for i, c in enumerate(CURVES):
            out[f"info_{c}"] = stacked[:, i]  # (groups, m)
    if acc.lens and lens is not None:  # (groups, 2, m); one read for the chunk where groups have equal samples
        same = len({s.shape[1] for s in acc.lens}) == 1
        sums = (logit_lens_sums(torch.stack(acc.lens), lens) if same else
                torch.stack([logit_lens_sums(s[None], lens)[0] for s in acc.lens]))
        out["lens_sum"] = sums.cpu().numpy()
    for items, key, count in ((acc.curves, None, "info_ntok"), (acc.influence, "bi_sum", "bi_count"),
                              (acc.lens, None, "lens_count")):
        if not items:  # not computed in this pass: no counts either
            out.pop(count)
        elif key is not None:
            out[key] = torch.stack(items).cpu().numpy()  # (groups, L)
    sums = torch.stack(acc.moments).sum(0).cpu().numpy()  # (2, m)
    out["act_sum"], out["act_sq"], out["act_count"] = sums[0], sums[1], np.array(acc.act_count)
    for split, name in ((1, "train"), (2, "eval")):
        p = acc.probe[split]
        if acc.filled[split] != len(acc.feat[split]):
            raise AssertionError(f"probe sample: {acc.filled[split]} of {len(acc.feat[split])} words filled")
        out[f"{name}_feat"] = acc.feat[split]  # [words, m, d] float16 (a view of FeatureBuffers when given)
        out[f"{name}_group"] = np.concatenate(p["group"]) if p else np.zeros(0, np.int64)
        out[f"{name}_type"] = np.concatenate(p["type"]) if p else np.zeros(0, np.int64)
        for t in tasks:
            out[f"{name}_lab_{t}"] = np.concatenate(p[f"lab_{t}"]) if p else np.zeros(0, np.int64)
    return out


def _real_tokens(states: list[torch.Tensor | None], real: torch.Tensor, buffer: torch.Tensor,
                 into: torch.Tensor | None = None) -> None:
    """The real tokens' rows of every state, gathered into `buffer` ((m, ., d), on the device of h_0; states
    [B, T, d] each; `real` their N flat positions): into rows 0..N-1, or into rows `into` (N indices: a
    decoder call holding part of the batch, in another order). The buffer is reused batch after batch: no
    fresh tens of MB to allocate and page-fault per batch. States on other devices (a model split over
    GPUs) are gathered there and copied."""
    into = None if into is None else into.to(buffer.device)
    for i, s in enumerate(states):
        assert s is not None
        flat = s.reshape(-1, s.shape[-1])
        if into is None and s.device == buffer.device and s.dtype == buffer.dtype:
            torch.index_select(flat, 0, real.to(s.device), out=buffer[i, : real.numel()])
        elif into is None:
            buffer[i, : real.numel()] = flat.index_select(0, real.to(s.device)).to(buffer.device)
        else:
            rows = flat.index_select(0, real.to(s.device)).to(buffer.device, buffer.dtype)
            buffer[i].index_copy_(0, into, rows)


@torch.no_grad()
def _chunk_statistics(
    loaded: LoadedModel, corpus: PreparedCorpus, lo: int, hi: int, batch_size: int, sleep_s: float,
    bar: tqdm | None, cka_keys: list[str], js_keys: list[str], info: InformationSettings | None = None,
    feat: dict[int, np.ndarray] | None = None, *, overhead_tokens: int, rivals: RivalSettings | None = None,
    lens: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, np.ndarray]:
    """Statistics of groups lo..hi-1: each batch run as its decoder calls (decoder_calls, `overhead_tokens`
    per call), nothing kept beyond the chunk.

    Device work is queued without waiting: the per-group results stay on the device until the chunk ends,
    and a batch's probe sample is gathered in one indexing per state and copied to the host once, into
    `feat` (split -> [words, m, d] float16, exactly this chunk's sampled words; FeatureBuffers) or new arrays.
    """
    if feat is None:
        m, d = loaded.n_blocks + 1, loaded.model.config.hidden_size
        feat = {split: np.empty((n, m, d), np.float16) for split, n in probe_word_counts(corpus, lo, hi).items()}
    acc = _new_accumulator(lo, hi, loaded.n_blocks, cka_keys, js_keys, feat)
    decoder = loaded.model.get_decoder()
    plan = batch_calls(corpus, lo, hi, batch_size, overhead_tokens)
    most_tokens = max(sum(len(corpus.encoded[i].input_ids) for i in batch) for batch, _ in plan)
    gather: torch.Tensor | None = None  # [m, most_tokens, d]: the real tokens of each batch (_real_tokens)
    for batch, calls in plan:
        enc = [corpus.encoded[i] for i in batch]
        lengths = [len(e.input_ids) for e in enc]
        groups = corpus.group_of[batch]
        # the batch's real tokens, sentence after sentence, for every state (padding never enters)
        starts = np.concatenate([[0], np.cumsum(lengths)])  # [B+1] where each sentence starts in that order
        for call in calls:
            ids, mask = _padded_batch([enc[b] for b in call], loaded.tokenizer.pad_token_id, loaded.device)
            T = ids.shape[1]
            with residual_stream(loaded.blocks) as states:
                res = decoder(input_ids=ids, attention_mask=mask, output_attentions=True, use_cache=False)
            real = torch.cat([k * T + torch.arange(lengths[b]) for k, b in enumerate(call)])  # flat positions
            into = None if len(call) == len(batch) else torch.cat(
                [torch.arange(starts[b], starts[b + 1]) for b in call])  # where they go in batch order
            if gather is None:  # like h_0: the model's dtype, the device of its first block
                gather = torch.empty((len(states), most_tokens, states[0].shape[-1]), dtype=states[0].dtype,
                                     device=states[0].device)
            _real_tokens(states, real, gather, into)
            _add_attention_drift(acc, res.attentions, mask, groups[call], js_keys, loaded.attention_layout)
            del states, res
        assert gather is not None
        tokens = gather[:, : int(starts[-1])]  # (m, N, d)
        _add_group_terms(acc, tokens, starts, lengths, groups, cka_keys, info, rivals, lens)
        _add_probe_sample(acc, corpus, batch, enc, tokens, starts)
        del tokens
        if bar is not None:
            bar.update(len(batch))
        if sleep_s:
            time.sleep(sleep_s)
    return _finish_chunk(acc, cka_keys, list(corpus.label_ids[0]), lens)


FLOAT16_MAX = 65504.0


def _to_float16(x: torch.Tensor, out: np.ndarray) -> None:
    """The probe sample is stored in float16 (half the memory): `x` cast into the host array `out` (same
    shape) in one copy; values beyond the float16 range are clipped, loudly."""
    x = x.float()  # (bf16 cannot hold the float16 limit exactly: clip in float32)
    low, high = torch.aminmax(x)  # one read pass; the clipping passes run only when something is out of range
    if float(high) > FLOAT16_MAX or float(low) < -FLOAT16_MAX:
        n_big = int((x.abs() > FLOAT16_MAX).sum())
        log.warning("%d probe feature values exceed the float16 range and were clipped to +-%g", n_big, FLOAT16_MAX)
        x = x.clamp(-FLOAT16_MAX, FLOAT16_MAX)
    torch.from_numpy(out).copy_(x)  # the cast (round to nearest even, as .half()) and the copy to the host


def n_chunks_for(n_groups: int, chunk_groups: int) -> int:
    return -(-n_groups // chunk_groups)


def build_statistics(
    loaded: LoadedModel, corpus: PreparedCorpus, cache: StatisticsCache, cfg: DictConfig
) -> None:
    """Compute every missing chunk of the cache entry (resuming after the last finished one)."""
    cg = cfg.extraction.chunk_groups
    n_chunks = n_chunks_for(corpus.n_groups, cg)
    batch_size = cfg.extraction.batch_size
    if batch_size == "auto":  # sized from the model and the device (mspgt/model/sizing.py)
        batch_size = auto_batch_size(loaded, cfg.data.max_tokens, cfg.bootstrap.group_size)
    overhead_tokens = call_overhead_tokens(cfg, loaded.device)
    cka_keys, js_keys = stored_variants(cfg)
    rivals = RivalSettings.from_config(cfg.get("rivals"))
    lens = lens_reader(loaded.model) if rivals is not None and rivals.logit_lens else None
    cache.check_manifest(n_chunks, {
        "label_names": corpus.label_names, "n_blocks": loaded.n_blocks, "n_sentences": len(corpus.encoded),
        "n_groups": corpus.n_groups, "cka_variants": cka_keys, "js_variants": js_keys,
        "weights_id": loaded.weights_id, "hidden_size": loaded.model.config.hidden_size,
        "attention_layout": [str(b) for b in loaded.attention_layout],
    })
    todo = [i for i in range(n_chunks)
            if cache.load_chunk(i, groups=(i * cg, min((i + 1) * cg, corpus.n_groups))) is None]
    if len(todo) < n_chunks:
        log.info("resuming extraction: %d of %d chunks already in the cache", n_chunks - len(todo), n_chunks)
    n_sent = len(corpus.encoded)
    done_sent = sum(int(np.sum((corpus.group_of >= i * cg) & (corpus.group_of < (i + 1) * cg)))
                    for i in range(n_chunks) if i not in todo)
    bar = LiveProgress(total=n_sent, initial=done_sent, desc=f"extracting {loaded.name}", unit="sent",
                       disable=not cfg.extraction.progress, mininterval=2.0)  # also to the job's W&B run
    ranges = {i: (i * cg, min((i + 1) * cg, corpus.n_groups)) for i in todo}
    words = {i: probe_word_counts(corpus, *ranges[i]) for i in todo}
    buffers = FeatureBuffers({s: max((w[s] for w in words.values()), default=0) for s in (1, 2)},
                             loaded.n_blocks + 1, loaded.model.config.hidden_size)
    writes = BackgroundWrites(cache)  # at most one write in flight: what FeatureBuffers relies on
    try:
        for k, i in enumerate(todo):
            lo, hi = ranges[i]
            arrays = _chunk_statistics(loaded, corpus, lo, hi, int(batch_size),
                                       cfg.extraction.sleep_per_batch_s, bar, cka_keys, js_keys,
                                       information_settings(cfg), buffers.for_chunk(k, words[i]),
                                       overhead_tokens=overhead_tokens, rivals=rivals, lens=lens)
            arrays["group_range"] = np.array([lo, hi])
            arrays["group_is_eval"] = corpus.group_is_eval[lo:hi]
            writes.submit(i, arrays)
    finally:
        writes.close()  # a finished chunk is written even when a later one fails
        bar.close()


