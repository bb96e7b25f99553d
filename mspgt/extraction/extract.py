"""The one pass over the corpus (paper 4.1.1; docs/method.md "Data unit"): hooks on the real blocks, and per
sentence group only what the three signals need. Memory does not grow with the number of sentences.

Per group: the unbiased HSIC matrix between all states h_0..h_L for each CKA variant; the summed JS
divergences between adjacent blocks' attention; and, for a bounded sample of words, the states at the
word's last sub-word token with its labels. Results go to a resumable on-disk cache (cache.py).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from mspgt.data.alignment import EncodedSentence
from mspgt.data.labels import LabeledSentence, label_names
from mspgt.errors import MspgtError
from mspgt.extraction.cache import StatisticsCache
from mspgt.extraction.hooks import residual_stream
from mspgt.model.identity import model_identity
from mspgt.model.loading import LoadedModel
from mspgt.model.sizing import auto_batch_size
from mspgt.signals.attention_drift import attention_js_sums_variants
from mspgt.signals.cka import group_hsic_variants
from mspgt.signals.information import CURVES, group_information_tensor
from mspgt.statistics import CKA_VARIANTS, JS_VARIANTS, CorpusStatistics, ProbeSample, variant_keys

log = logging.getLogger(__name__)

# Bump when what is stored changes: old cache entries are then never used. 4: attention drift on each block's
# own keys (sliding windows), weights id from the content of local folders.
STATS_VERSION = 4


@dataclass
class PreparedCorpus:
    """Sentences, their tokens and labels, the groups they form and which words enter the probe sample."""

    encoded: list[EncodedSentence]
    group_of: np.ndarray  # [S] group index of each sentence
    group_is_eval: np.ndarray  # [G] held out for probe evaluation
    label_names: dict[str, list[str]]
    label_ids: list[dict[str, np.ndarray]]  # per sentence: task -> [words] class ids (-1 = none)
    word_types: list[np.ndarray]  # per sentence: [words] id of the lower-cased word
    probe_take: list[np.ndarray]  # per sentence: [words] 0 = not sampled, 1 = train, 2 = held out
    order: np.ndarray  # [S] index in the loaded corpus of each sentence here (bootstrap.grouping)

    @property
    def n_groups(self) -> int:
        return int(self.group_is_eval.shape[0])


GROUPINGS = ("shuffled", "consecutive")


def sentence_order(n: int, grouping: str, seed: int) -> np.ndarray:
    """The order in which sentences enter groups (bootstrap.grouping; our definition, docs/method.md "Data unit").

    `consecutive`: corpus order, so a group holds neighbouring sentences (mostly one document), and a
    minibatch CKA over such groups estimates a within-document CKA. `shuffled`: a seeded permutation, so a
    group holds sentences drawn at random across the corpus, and the minibatch CKA estimates the corpus's
    (population) CKA, as Nguyen et al. (2021) do with random minibatches. [S] sentence indices.
    """
    if grouping == "consecutive":
        return np.arange(n)
    if grouping == "shuffled":
        return np.random.default_rng([seed, 1]).permutation(n)
    raise MspgtError(f"bootstrap.grouping={grouping!r}", f"use one of {list(GROUPINGS)}")


def spread_word_sample(word_group: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Which of N candidate words enter a bounded probe sample: [N] group ids -> [N] bool (our definition).

    The sample is spread over every group of its side: each group gives its words in a random order, and
    words are taken rank by rank (every group's first word, then every group's second word, ...; groups in
    a random order within a rank) until `cap` words are taken. So each group contributes the same number
    of words (one more for some, fewer where a group has fewer words), and a bootstrap over groups sees the
    whole sample. Deterministic for the generator's seed.
    """
    n = word_group.shape[0]
    take = np.zeros(n, dtype=bool)
    if n <= cap:
        take[:] = True
        return take
    within = rng.permutation(n)  # [N] random order of words within each group
    by_group = np.lexsort((within, word_group))  # [N] words sorted by group, then at random
    first_of_group = np.searchsorted(word_group[by_group], word_group[by_group], side="left")  # [N]
    rank = np.empty(n, dtype=np.int64)
    rank[by_group] = np.arange(n) - first_of_group  # [N] a word's rank within its group
    group_priority = rng.permutation(int(word_group.max()) + 1)  # random order of groups within a rank
    chosen = np.lexsort((group_priority[word_group], rank))[:cap]
    take[chosen] = True
    return take


def prepare_corpus(
    labeled: list[LabeledSentence], encoded: list[EncodedSentence], tasks: list[str], group_size: int,
    probes: DictConfig, grouping: str = "consecutive", grouping_seed: int = 0,
) -> PreparedCorpus:
    """Groups of `group_size` sentences in the order `sentence_order(grouping)` gives; a seeded split of
    groups into probe train / held out; the bounded word sample of each side, spread over all its groups
    (`spread_word_sample`). Deterministic. The corpus is kept in group order (`order` maps back)."""
    n = len(labeled)
    order = sentence_order(n, grouping, grouping_seed)  # [S]
    labeled = [labeled[i] for i in order]
    encoded = [encoded[i] for i in order]
    group_of = np.arange(n) // group_size
    n_groups = int(group_of[-1]) + 1
    n_eval = max(1, round(probes.eval_fraction * n_groups))
    held_out = np.random.default_rng(probes.seed).permutation(n_groups)[:n_eval]
    group_is_eval = np.zeros(n_groups, dtype=bool)
    group_is_eval[held_out] = True
    names = label_names(labeled, tasks)
    index = {t: {name: i for i, name in enumerate(ns)} for t, ns in names.items()}
    types = {w: i for i, w in enumerate(sorted({w.lower() for s in labeled for w in s.words}))}
    label_ids, word_types, probe_take = [], [], []
    for s in labeled:
        label_ids.append({t: np.array([index[t][x] for x in s.labels[t]], dtype=np.int64) for t in tasks})
        word_types.append(np.array([types[w.lower()] for w in s.words], dtype=np.int64))
        probe_take.append(np.zeros(len(s.words), dtype=np.int8))
    # candidates: every word with a token (not truncated away), per side of the split
    cand = [(i, w) for i, enc in enumerate(encoded) for w, tok in enumerate(enc.word_token) if tok >= 0]
    sent = np.array([i for i, _ in cand], dtype=np.int64)  # [N]
    word = np.array([w for _, w in cand], dtype=np.int64)  # [N]
    for split, cap in ((1, probes.max_train_words), (2, probes.max_eval_words)):
        side = np.flatnonzero(group_is_eval[group_of[sent]] == (split == 2)) if sent.size else sent
        chosen = side[spread_word_sample(group_of[sent[side]], cap, np.random.default_rng([probes.seed, split]))]
        for i, w in zip(sent[chosen], word[chosen], strict=True):
            probe_take[i][w] = split
    return PreparedCorpus(encoded, group_of, group_is_eval, names, label_ids, word_types, probe_take, order)


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
    return {
        "version": STATS_VERSION,
        "model": model,
        "weights_id": model_identity(cfg.model, cfg.paths.cache_dir),  # content, not the path (identity.py)
        "data": data_identity,
        "group_size": cfg.bootstrap.group_size,
        "grouping": [cfg.bootstrap.grouping, cfg.bootstrap.grouping_seed],
        "batch_size": cfg.extraction.batch_size,
        "variants": stored_variants(cfg),
        "probes": {k: cfg.probes[k] for k in ("tasks", "eval_fraction", "max_train_words", "max_eval_words", "seed")},
        "information": information_settings(cfg),
    }


def information_settings(cfg: DictConfig) -> tuple[float, int] | None:
    """(Renyi order, most tokens per group) of the information curves the pass stores (None: off;
    extraction.information)."""
    info = cfg.extraction.get("information")
    if info is None or not info.enabled:
        return None
    return float(info.alpha), int(info.get("max_tokens", 128))


def _spread(n: int, cap: int) -> torch.Tensor:
    """At most `cap` of n row indices, evenly spaced (deterministic): bounds the information curves' cost."""
    return torch.arange(n) if n <= cap else torch.linspace(0, n - 1, cap).round().long()


def _batches(group_of: np.ndarray, lo: int, hi: int, per_batch: int) -> list[list[int]]:
    """Sentence indices of groups lo..hi-1, in batches of whole groups (at most `per_batch` sentences)."""
    sents = np.nonzero((group_of >= lo) & (group_of < hi))[0].tolist()
    group_size = int(np.sum(group_of == group_of[0]))
    step = max(group_size, per_batch - per_batch % group_size)
    return [sents[i : i + step] for i in range(0, len(sents), step)]


@torch.no_grad()
def _chunk_statistics(
    loaded: LoadedModel, corpus: PreparedCorpus, lo: int, hi: int, batch_size: int, sleep_s: float,
    bar: tqdm | None, cka_keys: list[str], js_keys: list[str], info: tuple[float, int] | None = None,
) -> dict[str, np.ndarray]:
    """Statistics of groups lo..hi-1: one forward pass per batch, nothing kept beyond the chunk.

    Device work is queued without waiting: the per-group results stay on the device until the chunk ends,
    and a batch's probe sample is gathered in one indexing per state and copied to the host once.
    """
    L, m = loaded.n_blocks, loaded.n_blocks + 1
    ng = hi - lo
    out: dict[str, np.ndarray] = {}
    for v in cka_keys:
        out[f"ntok_{v}"] = np.zeros(ng, dtype=np.int64)
    for v in js_keys:
        out[f"js_sum_{v}"] = np.zeros((ng, L))
        out[f"js_first_{v}"] = np.zeros(ng)
        out[f"js_count_{v}"] = np.zeros(ng, dtype=np.int64)
    hsic: dict[str, list[torch.Tensor]] = {v: [] for v in cka_keys}  # per group [m, m], on the device
    moments: list[torch.Tensor] = []  # per group [2, m]: sums of mean_d(h) and of mean_d(h^2), on the device
    act_count = 0
    curves: list[torch.Tensor] = []  # per group [3, m]: information curves (signals/information.py), on the device
    probe: dict[int, dict[str, list]] = {1: {}, 2: {}}
    pad = loaded.tokenizer.pad_token_id
    decoder = loaded.model.get_decoder()
    for batch in _batches(corpus.group_of, lo, hi, batch_size):
        enc = [corpus.encoded[i] for i in batch]
        lengths = [len(e.input_ids) for e in enc]
        T = max(lengths)
        ids = torch.full((len(enc), T), pad, dtype=torch.long)
        mask = torch.zeros((len(enc), T), dtype=torch.long)
        for b, e in enumerate(enc):
            ids[b, : lengths[b]] = torch.tensor(e.input_ids)
            mask[b, : lengths[b]] = 1
        ids, mask = ids.to(loaded.device), mask.to(loaded.device)
        with residual_stream(loaded.blocks) as states:
            res = decoder(input_ids=ids, attention_mask=mask, output_attentions=True, use_cache=False)
        # the batch's real tokens, sentence after sentence, for every state (padding never enters)
        starts = np.concatenate([[0], np.cumsum(lengths)])  # [B+1] where each sentence starts in that order
        real = torch.cat([b * T + torch.arange(n) for b, n in enumerate(lengths)])  # (N,) flat positions
        here = states[0].device
        tokens = torch.stack([s.reshape(-1, s.shape[-1]).index_select(0, real.to(s.device)).to(here)
                              for s in states])  # (m, N, d)
        groups = corpus.group_of[batch]
        for g in np.unique(groups):
            members = np.nonzero(groups == g)[0]  # consecutive rows of the batch
            rows = tokens[:, starts[members[0]] : starts[members[-1] + 1]].float()  # (m, n, d) h_0..h_L
            keep = torch.cat([torch.arange(lengths[b]) > 0 for b in members])  # (n,) on the CPU: no sync
            # representation change: unbiased HSIC between every pair of states, per CKA variant
            terms = group_hsic_variants(rows, keep, cka_keys)
            for v, matrix in terms.hsic.items():
                hsic[v].append(matrix)
                out[f"ntok_{v}"][g - lo] = int(keep.sum()) if CKA_VARIANTS[v][1] else rows.shape[1]
            # activation scale s_l (interventions), from the same kernel
            moments.append(torch.stack([terms.sum_of_means, terms.sum_of_mean_squares]))
            if info is not None:  # position 0 (attention sink) left out; at most info[1] tokens, evenly spread
                kept = keep.nonzero()[:, 0]  # (n_kept,)
                kept = kept[_spread(len(kept), info[1])].to(rows.device)
                curves.append(group_information_tensor(rows[:, kept], info[0]))
            act_count += rows.shape[1]
        # probe sample: states at each sampled word's last sub-word token, in corpus order per split
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
            p = probe[split]
            p.setdefault("feat", []).append(_to_float16(tokens.index_select(1, where).permute(1, 0, 2)))  # (w, m, d)
            for i, words in rows_of:
                p.setdefault("group", []).append(np.full(len(words), corpus.group_of[i], dtype=np.int64))
                p.setdefault("type", []).append(corpus.word_types[i][words])
                for t, ids_t in corpus.label_ids[i].items():
                    p.setdefault(f"lab_{t}", []).append(ids_t[words])
        # attention drift: JS sums per sentence, added into its group
        by_sink = attention_js_sums_variants(res.attentions, mask, tuple(v == "nosink" for v in js_keys),
                                             loaded.attention_layout)  # each block's own keys
        for v in js_keys:
            js, first, count = (x.cpu().numpy() for x in by_sink[v == "nosink"])
            np.add.at(out[f"js_sum_{v}"], groups - lo, js)
            np.add.at(out[f"js_first_{v}"], groups - lo, first)
            np.add.at(out[f"js_count_{v}"], groups - lo, count)
        del states, res, tokens
        if bar is not None:
            bar.update(len(batch))
        if sleep_s:
            time.sleep(sleep_s)
    for v in cka_keys:
        out[f"hsic_{v}"] = torch.stack(hsic[v]).cpu().numpy()  # (groups, m, m)
    if curves:
        stacked = torch.stack(curves).cpu().numpy()  # (groups, 3, m)
        for i, c in enumerate(CURVES):
            out[f"info_{c}"] = stacked[:, i]  # (groups, m)
    sums = torch.stack(moments).sum(0).cpu().numpy()  # (2, m)
    out["act_sum"], out["act_sq"], out["act_count"] = sums[0], sums[1], np.array(act_count)
    d = loaded.model.config.hidden_size
    for split, name in ((1, "train"), (2, "eval")):
        p = probe[split]
        out[f"{name}_feat"] = np.concatenate(p["feat"]) if p else np.zeros((0, m, d), np.float16)
        out[f"{name}_group"] = np.concatenate(p["group"]) if p else np.zeros(0, np.int64)
        out[f"{name}_type"] = np.concatenate(p["type"]) if p else np.zeros(0, np.int64)
        for t in corpus.label_ids[0]:
            out[f"{name}_lab_{t}"] = np.concatenate(p[f"lab_{t}"]) if p else np.zeros(0, np.int64)
    return out


FLOAT16_MAX = 65504.0


def _to_float16(x: torch.Tensor) -> np.ndarray:
    """The probe sample is stored in float16 (half the memory); values beyond its range are clipped, loudly."""
    x = x.float()  # (bf16 cannot hold the float16 limit exactly: clip in float32)
    n_big = int((x.abs() > FLOAT16_MAX).sum())
    if n_big:
        log.warning("%d probe feature values exceed the float16 range and were clipped to +-%g", n_big, FLOAT16_MAX)
    return x.clamp(-FLOAT16_MAX, FLOAT16_MAX).half().cpu().numpy()


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
    cka_keys, js_keys = stored_variants(cfg)
    cache.check_manifest(n_chunks, {
        "label_names": corpus.label_names, "n_blocks": loaded.n_blocks, "n_sentences": len(corpus.encoded),
        "n_groups": corpus.n_groups, "cka_variants": cka_keys, "js_variants": js_keys,
        "weights_id": loaded.weights_id, "hidden_size": loaded.model.config.hidden_size,
        "attention_layout": [str(b) for b in loaded.attention_layout],
    })
    todo = [i for i in range(n_chunks) if cache.load_chunk(i) is None]
    if len(todo) < n_chunks:
        log.info("resuming extraction: %d of %d chunks already in the cache", n_chunks - len(todo), n_chunks)
    n_sent = len(corpus.encoded)
    done_sent = sum(int(np.sum((corpus.group_of >= i * cg) & (corpus.group_of < (i + 1) * cg)))
                    for i in range(n_chunks) if i not in todo)
    bar = tqdm(total=n_sent, initial=done_sent, desc=f"extracting {loaded.name}", unit="sent",
               disable=not cfg.extraction.progress, mininterval=2.0)
    writes = BackgroundWrites(cache)
    try:
        for i in todo:
            lo, hi = i * cg, min((i + 1) * cg, corpus.n_groups)
            arrays = _chunk_statistics(loaded, corpus, lo, hi, int(batch_size),
                                       cfg.extraction.sleep_per_batch_s, bar, cka_keys, js_keys,
                                       information_settings(cfg))
            arrays["group_range"] = np.array([lo, hi])
            arrays["group_is_eval"] = corpus.group_is_eval[lo:hi]
            writes.submit(i, arrays)
    finally:
        writes.close()  # a finished chunk is written even when a later one fails
        bar.close()


class BackgroundWrites:
    """Chunk writes (serialise, checksum, write) overlap the next chunk's forward passes. At most one write
    is in flight, so at most two chunks are in memory; a failed write is raised at the next submit or close."""

    def __init__(self, cache: StatisticsCache) -> None:
        self.cache = cache
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mspgt-chunk-write")
        self.pending: Future | None = None

    def submit(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        self.wait()
        self.pending = self.pool.submit(self.cache.save_chunk, index, arrays)

    def wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.pool.shutdown(wait=True)


def load_statistics(cache: StatisticsCache) -> CorpusStatistics | None:
    """Assemble the statistics from a complete cache entry; None if a chunk is missing or corrupt."""
    if not cache.is_complete():
        return None
    info = cache.info()
    label_names, n_blocks = info["label_names"], int(info["n_blocks"])
    chunks = []
    for i in range(cache.n_chunks or 0):
        c = cache.load_chunk(i)
        if c is None:
            return None
        chunks.append(c)

    def cat(key: str) -> np.ndarray:
        return np.concatenate([c[key] for c in chunks])

    tasks = list(label_names)

    def sample(name: str) -> ProbeSample:
        return ProbeSample(
            features=cat(f"{name}_feat"),
            labels={t: cat(f"{name}_lab_{t}") for t in tasks},
            group=cat(f"{name}_group"),
            word_type=cat(f"{name}_type"),
        )

    return CorpusStatistics(
        n_blocks=n_blocks,
        hsic={v: cat(f"hsic_{v}") for v in info["cka_variants"]},
        n_tokens={v: cat(f"ntok_{v}") for v in info["cka_variants"]},
        js_sum={v: cat(f"js_sum_{v}") for v in info["js_variants"]},
        js_first_uniform={v: cat(f"js_first_{v}") for v in info["js_variants"]},
        js_count={v: cat(f"js_count_{v}") for v in info["js_variants"]},
        act_sum=sum(c["act_sum"] for c in chunks),
        act_sq_sum=sum(c["act_sq"] for c in chunks),
        act_count=int(sum(int(c["act_count"]) for c in chunks)),
        probe_train=sample("train"),
        probe_eval=sample("eval"),
        label_names=label_names,
        group_is_eval=cat("group_is_eval"),
        information={c: cat(f"info_{c}") for c in CURVES if f"info_{c}" in chunks[0]},
        meta={"cache_dir": str(cache.dir), "n_chunks": cache.n_chunks, **info},
    )
