"""Signal 2, probe performance jumps (paper eq. 4): S_probe(l) = |F(l) - F(l-1)|, over blocks l = 1..L.

F(l) is the mean over tasks (POS, dependency relation, named entity, approximate semantic role) of each
task's held-out F1 of a probe trained on h_l, l = 0..L. The probe is the paper's: one hidden layer of
128 ReLU units (paper 4.1.1). All L + 1 layers (and all tasks) train at once as one batched MLP;
features are standardised per layer and dimension with train statistics (massive activations, Sun et al.
2024, arXiv 2402.17762, would otherwise dominate). Probes train once per training seed; the held-out
predictions are kept as per-group confusion counts, so a bootstrap resample of groups recomputes F1 as a
matrix product (docs/method.md "Signal 2"). Two seeds: the split of groups and the word sample
(probes.seed, chosen at extraction) and the training seed (probes.train_seed: initialisation, minibatch order,
control labels); probes.n_seeds > 1 trains several training seeds and pools them (ProbeSeeds).
The first layer's matmuls run in float32 by default on every device (probes.precision; bfloat16 opt-in).

F1 average (probes.f1_average, reported): F1 over the classes present in the gold labels of the data it is
computed on: `macro` (the default, our choice) averages the per-class F1, `weighted` weights it by each
class's support (tp + fn), `micro` pools tp, fp and fn over those classes first. The same rule holds for the
full held-out set and for every bootstrap resample: a class with no gold word in the resample (weighted
tp + fn = 0) is not averaged, even if the probe predicted it (it would otherwise score F1 = 0 there, and a
resample's F1 would not be the point statistic applied to the resample). This equals sklearn's
f1_score(y, p, average=<average>, labels=<classes in y>) on the resampled words.
Selectivity (Hewitt & Liang 2019, "Designing and Interpreting Probes with Control Tasks"): accuracy of the
POS probe minus accuracy of the same probe trained on a control task that gives every word type a random
label drawn from the empirical POS label distribution.
Shapes: N words, L + 1 states h_0..h_L, d hidden size, T tasks, H hidden units, C classes, G groups,
B bootstrap resamples.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mspgt.errors import MspgtError
from mspgt.heap import steady_heap
from mspgt.statistics import ProbeSample

CONTROL = "control"  # the name of the control task (Hewitt & Liang 2019) among the trained heads
F1_AVERAGE = (
    "probes.f1_average (macro, micro or weighted) F1 over the classes present in the gold labels of the words "
    "it is computed on (the held-out set, or a bootstrap resample of its groups); F(l) = mean over tasks"
)
F1_AVERAGES = ("macro", "micro", "weighted")  # the choices of probes.f1_average
_STD_FLOOR = 1e-6  # a dimension with a smaller train std is constant: it is centred, not scaled
_CHUNK = 256  # rows converted from float16 at a time
_STATS_CHUNK = 128  # rows summed in float64 at a time: 18 MB at the main job's 31 x 576, under the C allocator's
# 32 MB threshold above which every chunk would be fresh, page-faulted memory (docs/performance.md; its history in git)


@dataclass
class ProbeResult:
    """Held-out confusion counts per evaluation group, per task and layer; accuracy and selectivity."""

    tasks: list[str]
    n_classes: dict[str, int]
    eval_groups: np.ndarray  # [G_eval] int64 ids of the groups the count rows belong to
    tp: dict[str, np.ndarray]  # task -> [G_eval, L+1, C] int32 true positives
    fp: dict[str, np.ndarray]  # task -> [G_eval, L+1, C] int32 false positives
    fn: dict[str, np.ndarray]  # task -> [G_eval, L+1, C] int32 false negatives
    present: dict[str, np.ndarray]  # task -> class ids present in the held-out gold labels
    accuracy: dict[str, np.ndarray]  # task -> [L+1] held-out accuracy
    selectivity: np.ndarray | None  # [L+1] accuracy(POS) - accuracy(control); None without control task
    control_accuracy: np.ndarray | None  # [L+1]
    seconds: float  # training and evaluation wall time
    settings: dict = field(default_factory=dict)
    predictions: dict[str, np.ndarray] | None = None  # task -> [N_eval, L+1] (return_predictions=True)
    heldout_ce: dict[str, np.ndarray] | None = None  # task -> [N_eval, L+1] -log p(gold) in nats (nan: no label)

    @property
    def n_layers(self) -> int:
        """L + 1: the states h_0..h_L."""
        return int(next(iter(self.tp.values())).shape[1])


@dataclass
class ProbeSeeds:
    """The probes trained with `probes.n_seeds` training seeds on one sample (the same split, words and
    features; docs/method.md "Signal 2"): the probe statistic is the mean over the seeds.

    F(l) is the mean over seeds of each seed's F(l) (task_f1, probe_f1); a bootstrap resample can also resample
    the seeds (`draw` [B, P]: how often each seed is drawn in each resample, multinomial(P, 1/P), so the CI
    holds the training randomness of a P-seed mean; set by `resampled`). Held-out cross-entropy, accuracy
    and selectivity are the seed means (the V-information curves read `heldout_ce` as one probe's)."""

    runs: list[ProbeResult]  # one per training seed, in seed order
    draw: np.ndarray | None = None  # [B, P] seed counts of the resamples being evaluated, or None (all once)

    def __post_init__(self) -> None:
        if not self.runs:
            raise MspgtError("no probe runs to combine", "train at least one seed (probes.n_seeds >= 1)")
        first = self.runs[0]
        for r in self.runs[1:]:
            if r.tasks != first.tasks or not np.array_equal(r.eval_groups, first.eval_groups):
                raise MspgtError("probe runs of different tasks or held-out groups", "combine runs of one sample")

    def resampled(self, draw: np.ndarray) -> ProbeSeeds:
        """The same runs, evaluated under seed counts `draw` [B, P] (one row per resample)."""
        return ProbeSeeds(self.runs, np.asarray(draw))

    tasks = property(lambda self: self.runs[0].tasks)
    n_classes = property(lambda self: self.runs[0].n_classes)
    eval_groups = property(lambda self: self.runs[0].eval_groups)
    present = property(lambda self: self.runs[0].present)
    n_layers = property(lambda self: self.runs[0].n_layers)
    seconds = property(lambda self: float(sum(r.seconds for r in self.runs)))

    @property
    def settings(self) -> dict:
        return {**self.runs[0].settings, "seeds": [r.settings.get("seed") for r in self.runs]}

    @property
    def accuracy(self) -> dict[str, np.ndarray]:
        return {t: np.mean([r.accuracy[t] for r in self.runs], axis=0) for t in self.tasks}

    @property
    def selectivity(self) -> np.ndarray | None:
        s = [r.selectivity for r in self.runs]
        return None if s[0] is None else np.mean(s, axis=0)

    @property
    def heldout_ce(self) -> dict[str, np.ndarray] | None:
        ce = [r.heldout_ce for r in self.runs]
        return None if ce[0] is None else {t: np.mean([c[t] for c in ce], axis=0) for t in ce[0]}


def probe_note(result: ProbeResult | ProbeSeeds, split_seed: int) -> str:
    """What the outputs say about the probes: precision, training seeds and what the CIs resample."""
    st = result.settings
    seeds = st.get("seeds", [st.get("seed")])
    text = (f"{st.get('precision')} first-layer matmuls (probes.precision), {st.get('epochs')} epochs, batch "
            f"{st.get('batch_size')}, lr {st.get('lr')} {st.get('schedule')}; split and word sample seed "
            f"{split_seed} (probes.seed); ")
    if len(seeds) == 1:
        return text + (f"training seed {seeds[0]} (probes.train_seed; probes.n_seeds=1): the CIs resample "
                       "sentence groups with this one probe set, not the training seed. Measured on SmolLM2 "
                       "over 5 seeds (docs/results_probe_seeds.md): no boundary moved, but 3 of 8 eq. 28 "
                       "V-information verdicts flipped; read those with probes.n_seeds=5")
    return text + (f"training seeds {seeds} (probes.n_seeds={len(seeds)}): F(l) is the mean over them, and each "
                   "boundary resample also resamples the seeds (multinomial); the V-information curves use "
                   "the seeds' mean held-out cross-entropy, seeds not resampled")


def _check_sample(name: str, sample: ProbeSample, tasks: list[str], n_classes: dict[str, int]) -> None:
    feats = sample.features
    if feats.ndim != 3 or feats.shape[0] == 0:
        raise MspgtError(
            f"the {name} probe sample has features of shape {feats.shape}",
            "collect at least one word: features are [N, L+1, d] (raise probes.max_train_words/"
            "max_eval_words or use more sentences)",
        )
    n = feats.shape[0]
    for arr, what in ((sample.group, "group"), (sample.word_type, "word_type")):
        if arr.shape != (n,):
            raise MspgtError(
                f"the {name} sample has {what} of shape {arr.shape}, expected ({n},)", "one per word"
            )
    for task in tasks:
        y = sample.labels.get(task)
        if y is None or y.shape != (n,):
            raise MspgtError(
                f"the {name} sample has no labels of shape ({n},) for task {task!r}",
                f"collect labels for every task in probes.tasks, or drop {task!r} from it",
            )
        if y.size and (y.max() >= n_classes[task] or y.min() < -1):
            raise MspgtError(
                f"{name} labels for {task!r} lie outside -1..{n_classes[task] - 1}",
                "pass n_classes that count every label name (class ids 0..C-1, -1 for no label)",
            )


def control_labels(train: ProbeSample, held_out: ProbeSample, n_classes: int, seed: int):
    """Control task (Hewitt & Liang 2019): each word type gets one random label drawn from the empirical
    POS label distribution of the train sample; words without a POS label get none (-1)."""
    pos_train = train.labels["pos"]
    valid = pos_train >= 0
    if not valid.any():
        raise MspgtError(
            "no train word has a POS label, so no control task can be built", "probes.control_task=false"
        )
    dist = np.bincount(pos_train[valid], minlength=n_classes) / valid.sum()  # [C]
    types = np.unique(np.concatenate([train.word_type, held_out.word_type]))  # sorted: seed-determined
    rng = np.random.default_rng([seed, 2019])  # its own stream, apart from the probe initialisation
    type_label = rng.choice(n_classes, size=types.shape[0], p=dist)  # [n_types]
    out = []
    for sample in (train, held_out):
        y = type_label[np.searchsorted(types, sample.word_type)]  # [N]
        out.append(np.where(sample.labels["pos"] >= 0, y, -1).astype(np.int64))
    return out[0], out[1]


def _finite(x: Tensor) -> Tensor:
    """float16 overflows to +-inf above 65504 (massive activations can get there): clip to that range."""
    if torch.isnan(x).any():
        raise MspgtError(
            "the probe features contain NaN", "check the model's activations (dtype, overflow) before probing"
        )
    return torch.nan_to_num(x, posinf=65504.0, neginf=-65504.0)


def _standardiser(features: np.ndarray) -> tuple[Tensor, Tensor]:
    """Per (layer, dimension) mean and std over the train words, accumulated in float64 by chunks."""
    _, n_layers, d = features.shape
    total = torch.zeros(n_layers, d, dtype=torch.float64)
    total_sq = torch.zeros(n_layers, d, dtype=torch.float64)
    for a in range(0, features.shape[0], _STATS_CHUNK):
        x = _finite(torch.from_numpy(features[a : a + _STATS_CHUNK])).to(torch.float64)  # [b, L+1, d]
        total += x.sum(0)
        total_sq += (x * x).sum(0)
    n = features.shape[0]
    mean = total / n  # [L+1, d]
    std = (total_sq / n - mean**2).clamp_min(0).sqrt()  # [L+1, d]
    std = torch.where(std < _STD_FLOOR, torch.ones_like(std), std)
    return mean.float(), std.float()


PRECISIONS = ("float32", "bfloat16", "auto")  # probes.precision: the dtype of the first layer's matmuls
SCHEDULES = ("constant", "cosine")  # probes.schedule: the learning rate over the epochs


def resolve_precision(precision: str, device: str) -> str:
    """`float32` (the default: the same statistic on every machine) and `bfloat16` are what they say; `auto`
    (opt-in, hardware-dependent, so the same command computes different probes on different machines) ->
    bfloat16 where the hardware multiplies it natively (a CUDA GPU with bf16; a CPU with AVX512-BF16 or AMX
    tiles), else float32 (emulated bf16 runs at ~2 against ~59 GFLOP/s for float32 on an AVX2 CPU)."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        cpu = torch.cpu
        native = any(bool(getattr(cpu, f, lambda: False)()) for f in ("_is_avx512_bf16_supported",
                                                                       "_is_amx_tile_supported"))
    return "bfloat16" if native else "float32"


@dataclass(frozen=True)
class ProbeTraining:
    """How the probes train (probes.* in conf/probes/default.yaml; the paper fixes only the architecture).

    schedule: `constant` lr, or `cosine` from lr down to 0 over `epochs` (Loshchilov & Hutter 2017, SGDR,
    without restarts). precision: `bfloat16` runs the first layer's matmuls (nearly all the arithmetic) in
    bfloat16 with float32 master weights, second layer and loss (on CPUs with AVX512-BF16 or AMX, and
    GPUs, about twice the float32 throughput). Defaults in conf/probes/default.yaml and why: docs/performance.md (probes)
    and benchmarks/bench_probes.py. No early stopping: stopping at the lowest validation loss of a split of the train groups
    was measured to lower the held-out macro F1 (the loss turns up before the rare classes are learnt).
    """

    hidden: int = 128
    epochs: int = 30
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "constant"
    precision: str = "float32"

    def check(self) -> None:
        if min(self.hidden, self.epochs, self.batch_size) < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise MspgtError(
                f"probe settings hidden={self.hidden} epochs={self.epochs} batch_size={self.batch_size} "
                f"lr={self.lr} weight_decay={self.weight_decay}",
                "use positive probes.hidden/epochs/batch_size/lr and a non-negative weight_decay",
            )
        if self.schedule not in SCHEDULES or self.precision not in PRECISIONS[:2]:
            raise MspgtError(
                f"probes.schedule={self.schedule!r} / probes.precision={self.precision!r}",
                f"use a schedule in {list(SCHEDULES)} and a precision in {list(PRECISIONS)}",
            )

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bfloat16" else torch.float32


class _FirstLayer(torch.autograd.Function):
    """x @ w + b for every state at once (x [L+1, b, d] in `dtype`, w [L+1, d, T*H] float32, b [L+1, 1, T*H]),
    with w's gradient written into one buffer kept across steps, `w.grad` (torch.bmm out=), instead of a fresh
    tensor: at the main job's shape it is 46 MB, above the C allocator's 32 MiB mmap threshold, so a fresh one
    is new, page-faulted memory every step (docs/performance.md; its history in git). The same values as autograd gives
    for torch.baddbmm(b.to(dtype), x, w.to(dtype)) (a test checks them bitwise); in bfloat16 the gradient is
    computed in bfloat16 and stored in float32, as autograd's cast back does. w's gradient goes to w.grad
    directly (the optimiser reads it there), so backward returns none for w and `_fit` never sets it to None."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor, dtype: torch.dtype) -> Tensor:  # type: ignore[override]
        ctx.w = w
        if ctx.needs_input_grad[1]:  # x^T as a contiguous copy: the weight gradient's bmm runs ~1.3-1.9x faster
            ctx.save_for_backward(x.transpose(1, 2).contiguous())  # [L+1, d, b] (than on the transposed view)
        return torch.baddbmm(b.to(dtype), x, w.to(dtype))  # [L+1, b, T*H]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (x_t,) = ctx.saved_tensors  # [L+1, d, b]
        w = ctx.w
        if w.grad is None:
            w.grad = torch.empty_like(w)
        if grad.dtype == w.dtype:
            torch.bmm(x_t, grad, out=w.grad)  # [L+1, d, T*H]
        else:
            w.grad.copy_(torch.bmm(x_t, grad))
        return None, None, grad.sum(1, keepdim=True).to(w.dtype), None


class _BatchedProbes(torch.nn.Module):
    """T one-hidden-layer MLPs per layer, for all L + 1 layers at once (weights stacked over layers)."""

    def __init__(self, n_layers: int, d: int, hidden: int, classes: list[int], generator: torch.Generator,
                 dtype: torch.dtype = torch.float32):
        super().__init__()

        def uniform(shape: tuple[int, ...], fan_in: int) -> torch.nn.Parameter:  # nn.Linear's default init
            bound = 1.0 / fan_in**0.5
            return torch.nn.Parameter((torch.rand(shape, generator=generator) * 2 - 1) * bound)

        self.hidden = hidden
        self.dtype = dtype  # of the first layer's matmul; parameters stay float32
        t = len(classes)
        self.w1 = uniform((n_layers, d, t * hidden), d)  # [L+1, d, T*H]: every task's first layer, one matmul
        self.b1 = uniform((n_layers, 1, t * hidden), d)  # [L+1, 1, T*H]
        self.w2 = torch.nn.ParameterList(
            [uniform((n_layers, hidden, c), hidden) for c in classes]
        )  # [L+1,H,C]
        self.b2 = torch.nn.ParameterList([uniform((n_layers, 1, c), hidden) for c in classes])  # [L+1,1,C]

    def forward(self, x: Tensor) -> list[Tensor]:
        """x [L+1, b, d] (in self.dtype) -> per task logits [L+1, b, C_t] (float32)."""
        h = torch.relu(_FirstLayer.apply(x, self.w1, self.b1, self.dtype)).float()  # [L+1, b, T*H]
        per_task = h.split(self.hidden, dim=-1)  # T x [L+1, b, H] (split: one cheap backward)
        return [
            torch.baddbmm(b2, h_t, w2)  # [L+1, b, C_t]
            for h_t, w2, b2 in zip(per_task, self.w2, self.b2, strict=True)
        ]


def _confusion_counts(
    gold: np.ndarray, pred: np.ndarray, group_index: np.ndarray, n_groups: int, n_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """gold [N], pred [N, L+1], group_index [N] in 0..G-1 -> tp, fp, fn [G, L+1, C] int32 (gold -1 skipped)."""
    keep = gold >= 0
    gold, pred, gi = gold[keep], pred[keep], group_index[keep]
    n_layers = pred.shape[1]
    size = n_groups * n_layers * n_classes
    layer = np.arange(n_layers)[None, :]  # [1, L+1]
    cell = (gi[:, None] * n_layers + layer) * n_classes  # [n, L+1] offset of (group, layer)
    gold_b = np.broadcast_to(gold[:, None], pred.shape)  # [n, L+1]
    hit = pred == gold_b  # [n, L+1]

    def count(index: np.ndarray) -> np.ndarray:
        return np.bincount(index, minlength=size).reshape(n_groups, n_layers, n_classes).astype(np.int32)

    tp = count((cell + gold_b)[hit])
    fp = count((cell + pred)[~hit])
    fn = count((cell + gold_b)[~hit])
    return tp, fp, fn


def _check_inputs(train: ProbeSample, held_out: ProbeSample, n_classes: dict[str, int], control_task: bool,
                  device: str) -> list[str]:
    tasks = list(n_classes)
    if not tasks:
        raise MspgtError("no probe tasks", "give n_classes for at least one task, e.g. {'pos': 17}")
    if any(c < 2 for c in n_classes.values()):
        raise MspgtError(f"n_classes={n_classes}: a task has fewer than 2 classes", "drop that task")
    if control_task and "pos" not in n_classes:
        raise MspgtError(
            "the control task (selectivity) is built from POS labels, but 'pos' is not a probe task",
            "add pos to probes.tasks, or set probes.control_task=false",
        )
    _check_sample("train", train, tasks, n_classes)
    _check_sample("held-out", held_out, tasks, n_classes)
    if train.features.shape[1:] != held_out.features.shape[1:]:
        raise MspgtError(
            f"train features {train.features.shape} and held-out {held_out.features.shape} differ in layers/width",
            "take both samples from the same model in the same extraction pass",
        )
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MspgtError(f"probe device {device!r} but CUDA is not available", "set the probe device to cpu")
    return tasks


def _head_losses(logits: list[Tensor], y: Tensor) -> Tensor:
    """Per head and layer, the mean cross-entropy over the labelled words: T x [L+1, b, C], y [T, b] ->
    [T, L+1] (0 where a head has no labelled word)."""
    out = []
    for t, logit in enumerate(logits):
        n_layers, b, c = logit.shape
        target = y[t].expand(n_layers, -1).reshape(-1)  # [(L+1) b]
        ce = F.cross_entropy(logit.reshape(-1, c), target, ignore_index=-1, reduction="none")  # [(L+1) b]
        n_valid = (y[t] >= 0).sum().clamp_min(1)
        out.append(ce.view(n_layers, b).sum(1) / n_valid)  # [L+1]
    return torch.stack(out)  # [T, L+1]


def _features(sample: ProbeSample, rows: np.ndarray, mean: Tensor, std: Tensor, dev, dtype) -> Tensor:
    """The standardised features of `rows` (sorted indices), layer-major [L+1, n, d] in `dtype`."""
    n_layers, d = sample.features.shape[1:]
    out = torch.empty(n_layers, rows.size, d, dtype=dtype, device=dev)  # [L+1, n, d]
    for a in range(0, rows.size, _CHUNK):
        part = rows[a : a + _CHUNK]
        x = _finite(torch.from_numpy(sample.features[part]).to(dev)).float()  # [b, L+1, d] (clipped in float16)
        out[:, a : a + part.size] = ((x - mean) / std).transpose(0, 1).to(dtype)
    return out


def _fit(probes: _BatchedProbes, x: Tensor, y: Tensor, cfg: ProbeTraining, generator: torch.Generator,
         progress: bool) -> None:
    """Minibatch training of every probe at once: x [L+1, N, d], y [T, N] (train_probes)."""
    n = x.shape[1]
    optimiser = torch.optim.Adam(probes.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    others = [param for param in probes.parameters() if param is not probes.w1]
    steps = cfg.epochs * -(-n // cfg.batch_size)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
                 if cfg.schedule == "cosine" else None)
    epoch_iter = range(cfg.epochs)
    if progress:
        from tqdm import tqdm

        epoch_iter = tqdm(epoch_iter, desc="probes", unit="epoch")
    probes.train()
    for _ in epoch_iter:
        order = torch.randperm(n, generator=generator).to(x.device)  # [N]
        for a in range(0, n, cfg.batch_size):
            idx = order[a : a + cfg.batch_size]  # [b]
            loss = _head_losses(probes(x[:, idx]), y[:, idx]).sum()  # sum over heads and layers of means
            for param in others:  # w1's gradient buffer is overwritten by the next backward (_FirstLayer)
                param.grad = None
            loss.backward()
            optimiser.step()
            if scheduler is not None:
                scheduler.step()


def _predict(probes: _BatchedProbes, held_out: ProbeSample, heads: list[str], tasks: list[str],
             y_eval: dict[str, np.ndarray], mean: Tensor, std: Tensor, dev, dtype):
    """Held-out argmax predictions [N_eval, L+1] per head, and per task -log p(gold) [N_eval, L+1]."""
    n_eval, n_layers = held_out.features.shape[:2]
    pred = {h: np.empty((n_eval, n_layers), dtype=np.int64) for h in heads}
    heldout_ce = {t: np.full((n_eval, n_layers), np.nan, dtype=np.float32) for t in tasks}  # V-information
    probes.eval()
    with torch.no_grad():
        for a in range(0, n_eval, _CHUNK):
            rows = slice(a, min(a + _CHUNK, n_eval))
            x = _features(held_out, np.arange(rows.start, rows.stop), mean, std, dev, dtype)  # [L+1, b, d]
            for h, logit in zip(heads, probes(x), strict=True):
                pred[h][rows] = logit.argmax(-1).T.cpu().numpy()  # [b, L+1]
                if h in heldout_ce:
                    heldout_ce[h][rows] = _gold_ce(logit, y_eval[h][rows])
    return pred, heldout_ce


def train_probes(
    train: ProbeSample,
    held_out: ProbeSample,
    n_classes: dict[str, int],
    hidden: int = 128,
    epochs: int = 30,
    batch_size: int = 512,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    control_task: bool = True,
    device: str = "cpu",
    progress: bool = False,
    return_predictions: bool = False,
    schedule: str = "constant",
    precision: str = "float32",
    steady_malloc: bool = True,
) -> ProbeResult:
    """Train one probe per task and layer l = 0..L on `train`, evaluate it on `held_out` (paper 4.1.1).

    Cross-entropy over the labelled words (label -1 ignored), Adam with L2 weight decay, minibatches in a
    seeded order; deterministic for a seed on one device and thread count. The loss is the sum over tasks
    and layers of their mean losses: the parameters of different (task, layer) probes are disjoint, so
    each trains exactly as it would alone, on the same minibatches. ProbeTraining says what the schedule,
    and precision settings do.
    Memory: one standardised copy of the train features (float32, or bfloat16); held-out rows by chunks.
    """
    cfg = ProbeTraining(hidden, epochs, batch_size, lr, weight_decay, schedule, resolve_precision(precision, device))
    cfg.check()
    tasks = _check_inputs(train, held_out, n_classes, control_task, device)
    start = time.perf_counter()
    dev = torch.device(device)
    heads = tasks + ([CONTROL] if control_task else [])
    classes = [n_classes[t] for t in tasks] + ([n_classes["pos"]] if control_task else [])
    y_train = {t: train.labels[t] for t in tasks}
    y_eval = {t: held_out.labels[t] for t in tasks}
    if control_task:
        y_train[CONTROL], y_eval[CONTROL] = control_labels(train, held_out, n_classes["pos"], seed)

    n, n_layers, d = train.features.shape
    mean, std = _standardiser(train.features)
    mean, std = mean.to(dev), std.to(dev)
    labels = torch.stack([torch.from_numpy(y_train[h]).long() for h in heads]).to(dev)  # [T, N]
    x_train = _features(train, np.arange(n), mean, std, dev, cfg.dtype)  # [L+1, N, d] the one copy
    generator = torch.Generator().manual_seed(seed)
    probes = _BatchedProbes(n_layers, d, hidden, classes, generator, cfg.dtype).to(dev)
    # every step frees ~110 MB of temporaries: glibc's thresholds fixed for the loop (mspgt/heap.py,
    # probes.steady_malloc; they stay fixed for the rest of the process, a process-wide change)
    with steady_heap() if steady_malloc else nullcontext():
        _fit(probes, x_train, labels, cfg, generator, progress)
    del x_train
    pred, heldout_ce = _predict(probes, held_out, heads, tasks, y_eval, mean, std, dev, cfg.dtype)
    return _evaluated(
        tasks, n_classes, held_out, y_eval, pred, heldout_ce, control_task, time.perf_counter() - start,
        settings={**asdict(cfg), "seed": seed, "control_task": control_task, "n_train": n,
                  "n_eval": int(held_out.features.shape[0]), "f1_average": F1_AVERAGE},
        predictions={h: pred[h] for h in heads} if return_predictions else None,
    )


def _evaluated(tasks, n_classes, held_out, y_eval, pred, heldout_ce, control_task, seconds, settings,
               predictions) -> ProbeResult:
    """Per-group confusion counts, accuracy and selectivity of the held-out predictions."""
    eval_groups, group_index = np.unique(held_out.group, return_inverse=True)
    tp, fp, fn, present, accuracy = {}, {}, {}, {}, {}
    for t in tasks:
        tp[t], fp[t], fn[t] = _confusion_counts(
            y_eval[t], pred[t], group_index, len(eval_groups), n_classes[t]
        )
        present[t] = np.unique(y_eval[t][y_eval[t] >= 0])
        accuracy[t] = _accuracy(y_eval[t], pred[t])
    selectivity = control_accuracy = None
    if control_task:
        control_accuracy = _accuracy(y_eval[CONTROL], pred[CONTROL])
        selectivity = accuracy["pos"] - control_accuracy
    return ProbeResult(
        tasks=tasks, n_classes=dict(n_classes), eval_groups=eval_groups.astype(np.int64), tp=tp, fp=fp, fn=fn,
        present=present, accuracy=accuracy, selectivity=selectivity, control_accuracy=control_accuracy,
        seconds=seconds, settings=settings, predictions=predictions, heldout_ce=heldout_ce,
    )


def _gold_ce(logit: Tensor, gold: np.ndarray) -> np.ndarray:
    """logit [L+1, b, C], gold [b] (-1: no label) -> [b, L+1] -log softmax(logit)[gold] (nan without label)."""
    y = torch.from_numpy(gold).long().to(logit.device)  # [b]
    logp = torch.log_softmax(logit.float(), dim=-1)  # [L+1, b, C]
    ce = -logp.gather(-1, y.clamp_min(0)[None, :, None].expand(logp.shape[0], -1, 1))[..., 0]  # [L+1, b]
    return torch.where(y[None] >= 0, ce, torch.nan).T.cpu().numpy()  # [b, L+1]


def _accuracy(gold: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """gold [N] (-1 skipped), pred [N, L+1] -> [L+1] accuracy (nan without labelled words)."""
    keep = gold >= 0
    if not keep.any():
        return np.full(pred.shape[1], np.nan)
    return (pred[keep] == gold[keep, None]).mean(0)


def average_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, average: str = "macro") -> np.ndarray:
    """F1 over the classes (last axis) with gold support, tp + fn > 0, in the counted words: [..., C] -> [...].
    As sklearn's f1_score(y, p, average=average, labels=<classes in y>): macro, the mean of the per-class
    F1 = 2tp / (2tp + fp + fn); weighted, per-class F1 weighted by the support tp + fn; micro, the F1 of
    tp, fp, fn summed over those classes. No class with support -> nan."""
    if average not in F1_AVERAGES:
        raise MspgtError(f"probes.f1_average={average!r} is not offered", f"use one of {list(F1_AVERAGES)}")
    support = tp + fn  # [..., C] gold words of each class
    present = support > 0
    nan = np.full(tp.shape[:-1], np.nan)
    if average == "micro":
        tp_s, fp_s, fn_s = (np.where(present, x, 0).sum(-1) for x in (tp, fp, fn))  # [...]
        denom = 2 * tp_s + fp_s + fn_s
        return np.divide(2 * tp_s, denom, out=nan, where=denom > 0)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp, dtype=np.float64), where=present)  # [..., C]
    if average == "weighted":
        total = support.sum(-1)
        return np.divide((f1 * support).sum(-1), total, out=nan, where=total > 0)
    n_present = present.sum(-1)  # [...]
    return np.divide(f1.sum(-1), n_present, out=nan, where=n_present > 0)


def task_f1(
    result: ProbeResult | ProbeSeeds, group_weights: np.ndarray, n_groups: int, average: str = "macro"
) -> dict[str, np.ndarray]:
    """Per task, held-out F1 per layer under group weights: [B, G_all] -> [B, L+1] ([G_all] -> [L+1]).

    Weighted sums of the per-group tp/fp/fn (a matrix product), then their `average` F1 over the classes
    with gold support under these weights (weighted tp + fn > 0: the classes present in the resample's gold
    labels, module docstring; average_f1); no class left -> nan. ProbeSeeds: the mean over its seeds, each
    seed counted as often as `result.draw` says (once each without a draw).
    """
    if isinstance(result, ProbeSeeds):
        per_seed = [task_f1(r, group_weights, n_groups, average) for r in result.runs]  # P x {task: [B?, L+1]}
        p = len(result.runs)
        draw = np.ones((1, p)) if result.draw is None else np.asarray(result.draw, dtype=np.float64)  # [B|1, P]
        rows = np.atleast_2d(group_weights).shape[0]
        if draw.shape[1] != p or draw.shape[0] not in (1, rows) or (draw < 0).any() or (draw.sum(1) <= 0).any():
            raise MspgtError(f"seed draw of shape {draw.shape} for {rows} resamples of {p} seeds",
                             "pass non-negative seed counts [B, P] with a positive sum per resample")
        frac = (draw / draw.sum(1, keepdims=True)).T[:, :, None]  # [P, B|1, 1]
        out = {}
        for t in result.tasks:
            f = np.stack([np.atleast_2d(s[t]) for s in per_seed])  # [P, B, L+1]
            mean = (np.where(frac > 0, f, 0.0) * frac).sum(0)  # [B, L+1]; a seed drawn 0 times adds no nan
            out[t] = mean[0] if np.ndim(group_weights) == 1 else mean
        return out
    w = np.asarray(group_weights, dtype=np.float64)
    single = w.ndim == 1
    w = np.atleast_2d(w)  # [B, G_all]
    if w.ndim != 2 or w.shape[1] != n_groups:
        raise MspgtError(
            f"group weights of shape {np.shape(group_weights)} for {n_groups} groups",
            "pass weights [B, n_groups] or [n_groups] (bootstrap counts per group)",
        )
    if (w < 0).any():
        raise MspgtError("negative group weights", "pass bootstrap counts (non-negative)")
    if result.eval_groups.size and result.eval_groups.max() >= n_groups:
        raise MspgtError(
            f"the probe result has evaluation group {int(result.eval_groups.max())} but n_groups={n_groups}",
            "pass the number of groups of the corpus statistics the probes were trained on",
        )
    w_eval = w[:, result.eval_groups]  # [B, G_eval]
    out = {}
    for task in result.tasks:
        g, n_layers, c = result.tp[task].shape
        cls = result.present[task]

        def weighted(counts: np.ndarray, n_layers=n_layers, c=c, g=g, cls=cls) -> np.ndarray:
            total = w_eval @ counts.reshape(g, n_layers * c).astype(np.float64)  # [B, (L+1) C]
            return total.reshape(-1, n_layers, c)[..., cls]  # [B, L+1, C_present]

        tp, fp, fn = weighted(result.tp[task]), weighted(result.fp[task]), weighted(result.fn[task])
        f1 = average_f1(tp, fp, fn, average)  # [B, L+1]
        out[task] = f1[0] if single else f1
    return out


def probe_f1(result: ProbeResult | ProbeSeeds, group_weights: np.ndarray, n_groups: int, average: str = "macro") -> np.ndarray:
    """F(l): the mean over tasks of the held-out `average` F1 (see task_f1): [B, G_all] -> [B, L+1]."""
    per_task = task_f1(result, group_weights, n_groups, average)
    return np.mean(np.stack([per_task[t] for t in result.tasks]), axis=0)


def probe_jump(f: np.ndarray) -> np.ndarray:
    """S_probe(l) = |F(l) - F(l-1)| for blocks l = 1..L (paper eq. 4): [..., L+1] -> [..., L]."""
    f = np.asarray(f)
    if f.shape[-1] < 2:
        raise MspgtError(f"F has {f.shape[-1]} layers", "F(l) needs states h_0..h_L with L >= 1")
    return np.abs(np.diff(f, axis=-1))
