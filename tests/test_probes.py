"""Probes (Signal 2, paper eq. 4): a planted layer of decodability, F1 from stored counts vs sklearn,
bootstrap-weight identities, selectivity with control tasks, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from mspgt.errors import MspgtError
from mspgt.signals.probes import ProbeResult, _confusion_counts, probe_f1, probe_jump, task_f1, train_probes
from mspgt.statistics import ProbeSample

N_LAYERS = 6  # L + 1 states h_0..h_5
DECODABLE_FROM = 3  # the labels are readable from h_3 on: block 3 makes the jump
WIDTH = 12
N_CLASSES = {"pos": 4, "dep": 3}
N_GROUPS = 40  # groups 0..27 train, 28..39 held out


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def planted_sample(
    n: int, groups: np.ndarray, seed: int, signal: float = 4.0, n_types: int = 500, unlabeled: float = 0.0
) -> ProbeSample:
    """Noise below DECODABLE_FROM; from there on the labels shift the first dimensions (linearly separable)."""
    rng = np.random.default_rng(seed)
    labels = {t: rng.integers(0, c, n) for t, c in N_CLASSES.items()}
    features = rng.standard_normal((n, N_LAYERS, WIDTH))  # [N, L+1, d]
    features[:, DECODABLE_FROM:, :4] += signal * np.eye(4)[labels["pos"]][:, None, :]
    features[:, DECODABLE_FROM:, 4:7] += signal * np.eye(3)[labels["dep"]][:, None, :]
    features[:, :, 0] += 100.0  # a massive-activation dimension: standardisation must cope
    for y in labels.values():
        y[rng.random(n) < unlabeled] = -1
    return ProbeSample(
        features=features.astype(np.float16),
        labels=labels,
        group=rng.choice(groups, n),
        word_type=rng.integers(0, n_types, n),  # word identity carries no label information here
    )


@pytest.fixture(scope="module")
def planted():
    train = planted_sample(1200, np.arange(28), seed=1)
    held_out = planted_sample(600, np.arange(28, N_GROUPS), seed=2, unlabeled=0.1)
    torch.set_num_threads(1)
    result = train_probes(train, held_out, N_CLASSES, epochs=30, seed=0, return_predictions=True)
    return train, held_out, result


def test_planted_layer_is_recovered(planted):
    _, _, result = planted
    for task in N_CLASSES:
        acc = result.accuracy[task]  # [L+1]
        chance = 1.0 / N_CLASSES[task]
        assert (acc[DECODABLE_FROM:] > 0.97).all(), (task, acc)
        assert (acc[:DECODABLE_FROM] < chance + 0.12).all(), (task, acc)
    f = probe_f1(result, np.ones(N_GROUPS), N_GROUPS)  # [L+1]
    jump = probe_jump(f)  # [L]: index l-1 is block l
    assert jump.shape == (N_LAYERS - 1,)
    assert int(np.argmax(jump)) + 1 == DECODABLE_FROM
    assert jump[DECODABLE_FROM - 1] > 0.5


def test_counts_have_the_documented_shapes(planted):
    _, held_out, result = planted
    np.testing.assert_array_equal(result.eval_groups, np.unique(held_out.group))
    for task, c in N_CLASSES.items():
        for counts in (result.tp[task], result.fp[task], result.fn[task]):
            assert counts.shape == (len(result.eval_groups), N_LAYERS, c) and counts.dtype == np.int32
        n_labeled = int((held_out.labels[task] >= 0).sum())
        # every labelled word is one tp or one fn of its gold class, at every layer
        assert ((result.tp[task] + result.fn[task]).sum((0, 2)) == n_labeled).all()
        np.testing.assert_allclose(result.tp[task].sum((0, 2)) / n_labeled, result.accuracy[task])


def test_f1_from_counts_equals_sklearn(planted):
    _, held_out, result = planted
    per_task = task_f1(result, np.ones(N_GROUPS), N_GROUPS)
    for task in N_CLASSES:
        y = held_out.labels[task]
        keep = y >= 0
        present = result.present[task]
        np.testing.assert_array_equal(present, np.unique(y[keep]))
        expected = [
            f1_score(y[keep], result.predictions[task][keep, layer], average="macro", labels=present)
            for layer in range(N_LAYERS)
        ]
        np.testing.assert_allclose(per_task[task], expected, rtol=1e-12)
    mean = np.mean([per_task[t] for t in N_CLASSES], axis=0)
    np.testing.assert_allclose(probe_f1(result, np.ones(N_GROUPS), N_GROUPS), mean)


def test_bootstrap_weights_equal_sklearn_sample_weights(planted):
    """A resample (counts per group, training groups included) = sklearn with each word weighted by its
    group's count; classes absent from a resample are skipped (zero_division=np.nan)."""
    _, held_out, result = planted
    rng = np.random.default_rng(5)
    weights = rng.multinomial(N_GROUPS, np.full(N_GROUPS, 1 / N_GROUPS), size=8)  # [B, G]
    weights[0, 28:] = 0
    weights[0, 30] = 3  # a resample holding one held-out group only
    f = task_f1(result, weights, N_GROUPS)
    for task in N_CLASSES:
        y, pred = held_out.labels[task], result.predictions[task]
        keep = y >= 0
        for b in range(len(weights)):
            sample_weight = weights[b, held_out.group[keep]]
            for layer in range(N_LAYERS):
                expected = f1_score(
                    y[keep], pred[keep, layer], average="macro", labels=result.present[task],
                    sample_weight=sample_weight, zero_division=np.nan,
                )  # fmt: skip
                np.testing.assert_allclose(f[task][b, layer], expected, rtol=1e-12)


def test_a_resample_averages_the_classes_in_its_own_gold_labels():
    """Audit defect: a resample's F1 is the point statistic applied to the resample, i.e. macro F1 over the
    classes present in the RESAMPLED gold labels (sklearn labels=<classes in y>). A class absent from the
    resample's gold words but predicted there is not averaged in as F1 = 0."""
    rng = np.random.default_rng(11)
    n, n_layers, n_classes, n_groups = 150, 2, 10, 30
    gold = rng.choice(n_classes, n, p=np.arange(1, n_classes + 1) / 55)  # [N] skewed classes
    pred = np.where(rng.random((n, n_layers)) < 0.5, gold[:, None], rng.integers(0, n_classes, (n, n_layers)))
    group = rng.integers(0, n_groups, n)
    tp, fp, fn = _confusion_counts(gold, pred, group, n_groups, n_classes)
    result = ProbeResult(
        tasks=["pos"], n_classes={"pos": n_classes}, eval_groups=np.arange(n_groups), tp={"pos": tp},
        fp={"pos": fp}, fn={"pos": fn}, present={"pos": np.unique(gold)}, accuracy={}, selectivity=None,
        control_accuracy=None, seconds=0.0,
    )  # fmt: skip
    weights = rng.multinomial(n_groups // 6, np.full(n_groups, 1 / n_groups), size=40)  # [B, G] small draws
    f = task_f1(result, weights, n_groups)["pos"]  # [B, L+1]
    predicted_but_absent = 0
    for b in range(len(weights)):
        drawn = weights[b, group] > 0  # [N] words of the drawn groups
        for layer in range(n_layers):
            expected = f1_score(
                np.repeat(gold, weights[b, group]), np.repeat(pred[:, layer], weights[b, group]),
                average="macro", labels=np.unique(gold[drawn]),
            )  # fmt: skip  (the resampled words, duplicates included)
            np.testing.assert_allclose(f[b, layer], expected, rtol=1e-12)
            predicted_but_absent += len(set(pred[drawn, layer]) - set(gold[drawn])) > 0
    assert predicted_but_absent > 10  # the rule was exercised: the old rule scored those classes F1 = 0


def test_rare_class_gap_is_closed():
    """The audit's case: a rare class in one held-out group only, predicted (wrongly) in the others. A
    resample without that group must give the F1 of the words it holds, classes of its gold labels."""
    gold = np.array([0, 0, 1, 1, 2, 0, 0, 1, 1, 0])  # class 2 (rare) only in group 0
    pred = np.array([0, 0, 1, 1, 2, 0, 2, 1, 1, 2])[:, None]  # [N, 1] class 2 predicted in group 1
    group = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    tp, fp, fn = _confusion_counts(gold, pred, group, 2, 3)
    result = ProbeResult(
        tasks=["ner"], n_classes={"ner": 3}, eval_groups=np.arange(2), tp={"ner": tp}, fp={"ner": fp},
        fn={"ner": fn}, present={"ner": np.unique(gold)}, accuracy={}, selectivity=None, control_accuracy=None,
        seconds=0.0,
    )  # fmt: skip
    only_group_1 = task_f1(result, np.array([0.0, 1.0]), 2)["ner"][0]
    g1 = group == 1
    assert only_group_1 == pytest.approx(f1_score(gold[g1], pred[g1, 0], average="macro", labels=[0, 1]))
    assert only_group_1 == pytest.approx((2 * 1 / (2 * 1 + 0 + 2) + 1.0) / 2)  # class 0: tp 1, fn 2; class 1: 1


def test_weights_scale_invariance_and_shapes(planted):
    _, _, result = planted
    ones = probe_f1(result, np.ones(N_GROUPS), N_GROUPS)
    np.testing.assert_allclose(probe_f1(result, np.full(N_GROUPS, 2.0), N_GROUPS), ones, rtol=1e-12)
    batch = probe_f1(result, np.stack([np.ones(N_GROUPS), np.full(N_GROUPS, 2.0)]), N_GROUPS)
    assert batch.shape == (2, N_LAYERS)
    np.testing.assert_allclose(batch, np.stack([ones, ones]), rtol=1e-12)
    no_eval = np.ones(N_GROUPS)
    no_eval[result.eval_groups] = 0
    assert np.isnan(probe_f1(result, no_eval, N_GROUPS)).all()  # no held-out word drawn: undefined
    with pytest.raises(MspgtError, match="n_groups"):
        probe_f1(result, np.ones(N_GROUPS - 1), N_GROUPS - 1)
    with pytest.raises(MspgtError, match="weights"):
        probe_f1(result, np.ones((2, N_GROUPS + 1)), N_GROUPS)


def test_selectivity_is_high_when_word_identity_carries_no_label(planted):
    _, _, result = planted
    sel = result.selectivity  # [L+1]
    assert sel.shape == (N_LAYERS,)
    np.testing.assert_allclose(sel, result.accuracy["pos"] - result.control_accuracy)
    assert (sel[DECODABLE_FROM:] > 0.5).all(), sel


def test_control_task_is_learnable_from_word_identity():
    """Features that encode the word type: the probe memorises the control labels (Hewitt & Liang's
    point), so control accuracy is high and selectivity small, although POS is decodable too."""
    rng = np.random.default_rng(3)
    n_types = 12
    embedding = 3.0 * rng.standard_normal((n_types, WIDTH))  # [types, d]
    type_pos = rng.integers(0, N_CLASSES["pos"], n_types)  # POS is a function of the type

    def sample(n: int, groups: np.ndarray) -> ProbeSample:
        types = rng.integers(0, n_types, n)
        features = embedding[types][:, None, :] + 0.3 * rng.standard_normal((n, N_LAYERS, WIDTH))
        labels = {"pos": type_pos[types], "dep": rng.integers(0, N_CLASSES["dep"], n)}
        return ProbeSample(features.astype(np.float16), labels, rng.choice(groups, n), types)

    result = train_probes(sample(800, np.arange(20)), sample(400, np.arange(20, 30)), N_CLASSES, epochs=30)
    assert (result.control_accuracy > 0.95).all(), result.control_accuracy
    assert (np.abs(result.selectivity) < 0.05).all(), result.selectivity


def test_same_seed_same_result_other_seed_other_result(planted):
    train, held_out, _ = planted
    kwargs = {"epochs": 3, "hidden": 16}
    first = train_probes(train, held_out, N_CLASSES, seed=7, **kwargs)
    second = train_probes(train, held_out, N_CLASSES, seed=7, **kwargs)
    other = train_probes(train, held_out, N_CLASSES, seed=8, **kwargs)
    for task in N_CLASSES:
        for field in ("tp", "fp", "fn"):
            np.testing.assert_array_equal(getattr(first, field)[task], getattr(second, field)[task])
    np.testing.assert_array_equal(first.selectivity, second.selectivity)
    assert any(not np.array_equal(first.tp[t], other.tp[t]) for t in N_CLASSES)


def test_bad_inputs_name_the_fix(planted):
    train, held_out, _ = planted
    with pytest.raises(MspgtError, match="control_task=false"):
        train_probes(train, held_out, {"dep": 3}, epochs=1)
    with pytest.raises(MspgtError, match="n_classes"):
        train_probes(train, held_out, {"pos": 3, "dep": 3}, epochs=1)  # labels go up to 3
    with pytest.raises(MspgtError, match="no labels"):
        train_probes(train, held_out, {"pos": 4, "srl": 5}, epochs=1)
    narrow = ProbeSample(held_out.features[:, :, :5], held_out.labels, held_out.group, held_out.word_type)
    with pytest.raises(MspgtError, match="same model"):
        train_probes(train, narrow, N_CLASSES, epochs=1)


def test_float16_overflow_is_clipped_and_nan_rejected(planted):
    train, held_out, _ = planted
    overflow = train.features.copy()
    overflow[:50, 1, 5] = np.inf  # a massive activation past the float16 range
    clipped = ProbeSample(overflow, train.labels, train.group, train.word_type)
    result = train_probes(clipped, held_out, N_CLASSES, epochs=3, hidden=16)
    assert all(np.isfinite(result.accuracy[t]).all() for t in N_CLASSES)
    overflow[0, 0, 0] = np.nan
    with pytest.raises(MspgtError, match="NaN"):
        train_probes(clipped, held_out, N_CLASSES, epochs=1, hidden=16)


def test_probe_jump_is_the_absolute_difference():
    f = np.array([[0.1, 0.4, 0.3, 0.3], [0.0, 0.0, 1.0, 0.5]])
    np.testing.assert_allclose(probe_jump(f), [[0.3, 0.1, 0.0], [0.0, 1.0, 0.5]])
    with pytest.raises(MspgtError):
        probe_jump(np.array([0.5]))


@pytest.mark.parametrize(("precision", "schedule"), [("bfloat16", "constant"), ("float32", "cosine"),
                                                     ("bfloat16", "cosine")])
def test_precision_and_schedule_recover_the_planted_layer(planted, precision, schedule):
    """bfloat16 matmuls and the cosine schedule (probes.precision / probes.schedule) learn the planted task as
    the float32, constant-lr recipe does: near-perfect from h_3 on, chance below, on every task."""
    train, held_out, reference = planted
    result = train_probes(train, held_out, N_CLASSES, epochs=30, seed=0, precision=precision, schedule=schedule,
                          lr=3e-3 if schedule == "cosine" else 1e-3)
    ones = np.ones(N_GROUPS)
    for task in N_CLASSES:
        f1, ref = task_f1(result, ones, N_GROUPS)[task], task_f1(reference, ones, N_GROUPS)[task]
        assert (f1[DECODABLE_FROM:] > 0.95).all(), (precision, schedule, task, f1)
        assert (f1[:DECODABLE_FROM] < 0.6).all(), (precision, schedule, task, f1)
        np.testing.assert_allclose(f1[DECODABLE_FROM:], ref[DECODABLE_FROM:], atol=0.03)
    assert result.settings["precision"] == precision and result.settings["schedule"] == schedule


def test_unknown_precision_or_schedule_names_the_choices(planted):
    train, held_out, _ = planted
    with pytest.raises(MspgtError, match="bfloat16"):
        train_probes(train, held_out, N_CLASSES, epochs=1, precision="float8")
    with pytest.raises(MspgtError, match="cosine"):
        train_probes(train, held_out, N_CLASSES, epochs=1, schedule="linear")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_first_layer_gives_what_autograd_gives(dtype):
    """_FirstLayer (the weight gradient written into one kept buffer) against autograd's baddbmm of the cast
    weights: bitwise the same output and gradients, over two steps (the buffer is overwritten, not summed)."""
    from mspgt.signals.probes import _FirstLayer

    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 9, 13, generator=g, requires_grad=True)
    b = torch.randn(4, 1, 13, generator=g, requires_grad=True)
    w_ref, b_ref = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    for _ in range(2):
        x = torch.randn(4, 6, 9, generator=g).to(dtype)
        upstream = torch.randn(4, 6, 13, generator=g).to(dtype)
        ours = _FirstLayer.apply(x, w, b, dtype)
        reference = torch.baddbmm(b_ref.to(dtype), x, w_ref.to(dtype))
        assert ours.dtype == dtype and torch.equal(ours, reference)
        b.grad = w_ref.grad = b_ref.grad = None
        ours.backward(upstream)
        reference.backward(upstream)
        assert w.grad.dtype == torch.float32 and torch.equal(w.grad, w_ref.grad)
        assert torch.equal(b.grad, b_ref.grad)


def test_the_default_precision_is_float32_on_every_machine():
    """probes.precision's default names one algorithm (float32), whatever the hardware; auto stays opt-in."""
    from omegaconf import OmegaConf

    from mspgt.signals.probes import resolve_precision

    conf = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "probes" / "default.yaml")
    assert conf.precision == "float32"
    for device in ("cpu", "cuda"):
        assert resolve_precision("float32", device) == "float32"
        assert resolve_precision("bfloat16", device) == "bfloat16"


def test_the_training_seed_needs_no_new_extraction():
    """probes.train_seed (init, order, control labels) is not in the statistics' cache key; probes.seed (the
    split and word sample) is."""
    from hydra import compose, initialize_config_dir

    from mspgt.extraction.extract import cache_material

    def key(*overrides):
        conf = Path(__file__).resolve().parents[1] / "conf"
        with initialize_config_dir(str(conf), version_base=None):
            return cache_material(compose("config", overrides=list(overrides)), {"name": "x"})

    assert key("probes.train_seed=3") == key("probes.train_seed=0") == key("probes.n_seeds=4")
    assert key("probes.seed=1") != key("probes.seed=0")


@pytest.fixture(scope="module")
def two_seeds(planted):
    train, held_out, _ = planted
    kwargs = {"epochs": 2, "hidden": 8}
    return [train_probes(train, held_out, N_CLASSES, seed=s, **kwargs) for s in (0, 1)]


def test_pooled_seeds_are_the_mean_of_the_seeds(two_seeds):
    """ProbeSeeds: F(l) is the seeds' mean; a draw counting one seed only gives that seed; a draw's counts
    act as weights (2:1 = 2/3 and 1/3); one seed pooled is that seed, bitwise."""
    from mspgt.signals.probes import ProbeSeeds

    a, b = two_seeds
    w = np.random.default_rng(0).multinomial(N_GROUPS, np.full(N_GROUPS, 1 / N_GROUPS), size=7)  # [7, G]
    fa, fb = probe_f1(a, w, N_GROUPS), probe_f1(b, w, N_GROUPS)  # [7, L+1]
    assert not np.allclose(fa, fb)  # the seeds differ, or the test proves nothing
    pooled = ProbeSeeds([a, b])
    np.testing.assert_allclose(probe_f1(pooled, w, N_GROUPS), (fa + fb) / 2, rtol=1e-12)
    np.testing.assert_allclose(probe_f1(pooled, w[0], N_GROUPS), (fa[0] + fb[0]) / 2, rtol=1e-12)
    draw = np.tile([[0, 2], [2, 1]], (4, 1))[:7]  # [7, 2]: b only, then 2/3 a + 1/3 b
    got = probe_f1(pooled.resampled(draw), w, N_GROUPS)
    np.testing.assert_array_equal(got[::2], fb[::2])
    np.testing.assert_allclose(got[1::2], (2 * fa[1::2] + fb[1::2]) / 3, rtol=1e-12)
    np.testing.assert_array_equal(probe_f1(ProbeSeeds([a]), w, N_GROUPS), fa)
    np.testing.assert_allclose(pooled.selectivity, (a.selectivity + b.selectivity) / 2)
    for t in N_CLASSES:
        np.testing.assert_allclose(pooled.heldout_ce[t], (a.heldout_ce[t] + b.heldout_ce[t]) / 2, rtol=1e-6)
    with pytest.raises(MspgtError, match="seed"):
        probe_f1(pooled.resampled(np.zeros((7, 2))), w, N_GROUPS)


def test_a_seed_drawn_zero_times_brings_no_nan(two_seeds):
    """A seed whose F1 is undefined (nan) counts only where the draw picks it."""
    from dataclasses import replace

    from mspgt.signals.probes import ProbeSeeds

    a, b = two_seeds
    empty = {t: np.zeros_like(v) for t, v in b.tp.items()}  # no gold word at all: F1 nan everywhere
    undefined = replace(b, tp=empty, fp=empty, fn=empty)
    ones = np.ones((2, N_GROUPS))
    got = probe_f1(ProbeSeeds([a, undefined]).resampled(np.array([[2, 0], [1, 1]])), ones, N_GROUPS)
    np.testing.assert_array_equal(got[0], probe_f1(a, ones[0], N_GROUPS))
    assert np.isnan(got[1]).all()


def test_the_bootstrap_resamples_probe_seeds_only_when_asked():
    """n_probe_seeds=1: evidence_fn sees group counts alone (today's resamples, bit for bit); P > 1: it also gets
    seed counts [b, P] that sum to P per resample, drawn apart from the group counts (these stay the same)."""
    from mspgt.fusion.bootstrap import bootstrap_boundaries
    from mspgt.fusion.peaks import detect_boundaries

    evidence = np.array([0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0])  # [L]: peaks at blocks 2 and 6
    seen: dict[str, list] = {"groups": [], "seeds": []}

    def evidence_fn(counts, seed_counts=None):
        seen["groups"].append(counts.copy())
        if seed_counts is not None:
            seen["seeds"].append(seed_counts.copy())
        return np.tile(evidence, (counts.shape[0], 1))

    pick = detect_boundaries(evidence, 0.3)
    one = bootstrap_boundaries(evidence_fn, 12, 8, pick, n_resamples=40, seed=5, chunk=16)
    groups_one, seen["groups"] = np.concatenate(seen["groups"]), []
    assert not seen["seeds"]
    three = bootstrap_boundaries(evidence_fn, 12, 8, pick, n_resamples=40, seed=5, chunk=16, n_probe_seeds=3)
    np.testing.assert_array_equal(np.concatenate(seen["groups"]), groups_one)
    seeds = np.concatenate(seen["seeds"])  # [B, 3]
    assert seeds.shape == (40, 3) and (seeds.sum(1) == 3).all() and len({tuple(r) for r in seeds}) > 1
    assert one == three  # the evidence ignores the seeds here: the same intervals


def test_probe_seed_settings_are_checked():
    """probes.n_seeds is at least 1 and probes.train_seed an integer (mspgt/config_schema.py)."""
    from omegaconf import OmegaConf

    from mspgt.config_schema import ProbeSettings, settings

    conf = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "probes" / "default.yaml")
    assert settings(conf, ProbeSettings).n_seeds == 1
    for key, bad in (("n_seeds", 0), ("train_seed", "x")):
        with pytest.raises(MspgtError, match=key):
            settings(OmegaConf.merge(conf, {key: bad}), ProbeSettings)
