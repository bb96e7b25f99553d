"""Controls (docs/controls.md) with planted answers: random_init's weights (differ from the checkpoint, fixed by
the seed, the architecture's own initialiser), shuffled_words (every word keeps its labels, the order moves,
the same seed gives the same order), a boundary planted in a tiny model's weights that random_init removes
and shuffled_words keeps, a word-order dependency planted in the data that shuffled_words removes and
random_init keeps, what a control keys and names, and the comparison's verdicts on constructed results."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mspgt.controls import Control
from mspgt.data.corpus import Sentence
from mspgt.data.labels import label_sentences
from mspgt.data.shuffle import shuffle_labeled, shuffle_text, word_order
from mspgt.model.loading import load_model
from mspgt.reports.controls import (
    ARCHITECTURE,
    LEARNT,
    NEEDS_ORDER,
    NO_BOUNDARY,
    NOT_TESTED,
    SURVIVES,
    collect,
    compare,
    controls_markdown,
    write_controls,
)
from mspgt.results import BoundaryCI, BoundaryResult
from tests.conftest import CONF, TINY, read_results, run_mspgt, wandb_run_state

SENTENCES = [
    "The committee approved the new budget on Tuesday after a long debate.",
    "Shares in the London company fell sharply, analysts said.",
    "She gave her brother a book about the history of Rome.",
]


def _model_cfg(**kw):
    base = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "tiny_llama.yaml"))
    return OmegaConf.create({**base, **kw})


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- shuffled_words --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def labeled():
    return label_sentences([Sentence(s, "doc") for s in SENTENCES], "silver")


def test_shuffled_words_keeps_every_word_and_its_labels(labeled):
    for s in labeled:
        shuffled = shuffle_labeled(s, seed=0)
        tasks = sorted(s.labels)
        pairs = Counter(zip(s.words, *(s.labels[t] for t in tasks), strict=True))
        moved = Counter(zip(shuffled.words, *(shuffled.labels[t] for t in tasks), strict=True))
        assert pairs == moved  # every (word, pos, dep, ner, srl) tuple, as many times
        assert shuffled.words != s.words  # the order changed
        assert [shuffled.text[a:b] for a, b in shuffled.spans] == shuffled.words  # spans point at the words
        # each word carries its own labels: the dependency relation of "committee" is still nsubj
        k, j = s.words.index("budget") if "budget" in s.words else 0, None
        j = shuffled.words.index(s.words[k])
        assert all(shuffled.labels[t][j] == s.labels[t][k] for t in tasks)


def test_shuffled_words_same_seed_same_order_other_seed_other_order(labeled):
    s = labeled[0]
    assert shuffle_labeled(s, 0) == shuffle_labeled(s, 0)
    orders = {tuple(word_order(s.words, s.text, seed)) for seed in range(5)}
    assert len(orders) == 5  # 14 words: five seeds give five different orders
    # the order depends on the sentence's text and the seed, not on where the sentence is in the corpus
    assert np.array_equal(word_order(s.words, s.text, 3), word_order(list(s.words), str(s.text), 3))


def test_shuffled_words_never_returns_the_real_order():
    for n in range(2, 6):
        words = [f"w{i}" for i in range(n)]
        for seed in range(50):
            assert list(word_order(words, " ".join(words), seed)) != list(range(n))
    assert list(word_order(["a", "a", "a"], "a a a", 0)) == [0, 1, 2]  # nothing to move


def test_prompt_sentences_are_shuffled_by_whitespace_words():
    s = Sentence("one two three four five six", "d")
    out = shuffle_text(s, 0)
    assert sorted(out.text.split()) == sorted(s.text.split()) and out.text != s.text
    assert shuffle_text(s, 0) == out


# -- random_init -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, shared_cache) -> Path:
    """A real checkpoint folder (config.json, safetensors, tokenizer): the tiny llama of seed 7, saved."""
    folder = tmp_path_factory.mktemp("ckpt")
    loaded = load_model(_model_cfg(seed=7), shared_cache, need_attentions=False)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder


def _local(folder: Path):
    return OmegaConf.create({"name": "ckpt", "family": "llama", "source": "hub", "hub_id": None, "revision": None,
                             "local_path": str(folder), "tokenizer_path": None, "device": "cpu",
                             "dtype": "float32", "device_map": None, "attn_implementation": None})


def test_random_init_differs_from_the_checkpoint_and_is_fixed_by_its_seed(checkpoint, shared_cache):
    cfg = _local(checkpoint)
    real = load_model(cfg, shared_cache, need_attentions=False)
    a = load_model(cfg, shared_cache, need_attentions=False, control=Control("random_init", 0))
    b = load_model(cfg, shared_cache, need_attentions=False, control=Control("random_init", 0))
    c = load_model(cfg, shared_cache, need_attentions=False, control=Control("random_init", 1))
    sa, sb, sc, sr = _state(a.model), _state(b.model), _state(c.model), _state(real.model)
    assert sa.keys() == sr.keys() and all(sa[k].shape == sr[k].shape for k in sa)  # the same architecture
    assert a.model.config.to_dict() | {"_name_or_path": ""} == real.model.config.to_dict() | {"_name_or_path": ""}
    assert _same(sa, sb)  # the same seed: the same weights
    mats = [k for k in sa if sa[k].ndim == 2]
    assert all(not torch.equal(sa[k], sr[k]) for k in mats)  # every matrix differs from the checkpoint's
    assert all(not torch.equal(sa[k], sc[k]) for k in mats)  # ... and from another seed's
    w = sa["model.layers.0.self_attn.q_proj.weight"]  # Llama's _init_weights: N(0, initializer_range)
    assert abs(float(w.std()) - real.model.config.initializer_range) < 0.002
    assert torch.equal(sa["model.norm.weight"], torch.ones_like(sa["model.norm.weight"]))
    assert len({real.weights_id, a.weights_id, c.weights_id}) == 3 and a.weights_id == b.weights_id
    assert a.weights_id == real.weights_id + "+control:random_init-seed0"
    assert a.tokenizer("a test").input_ids == real.tokenizer("a test").input_ids  # the same tokenizer


def test_random_init_is_the_architectures_own_initialiser(shared_cache):
    """A tiny model is built by transformers' own initialiser under model.seed: random_init with that seed gives
    its very weights, and the caller's global RNG is left as it was."""
    tiny = load_model(_model_cfg(seed=3), shared_cache, need_attentions=False)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    ctl = load_model(_model_cfg(seed=0), shared_cache, need_attentions=False, control=Control("random_init", 3))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert _same(_state(tiny.model), _state(ctl.model))


@pytest.mark.slow
def test_random_init_of_a_gguf_reads_its_config_not_its_weights(shared_cache):
    cfg = OmegaConf.load(CONF / "model" / "smollm2.yaml")
    cfg.device = "cpu"
    real = load_model(cfg, shared_cache, need_attentions=False)
    ctl = load_model(cfg, shared_cache, need_attentions=False, control=Control("random_init", 0))
    sr, sc = _state(real.model), _state(ctl.model)
    assert sr.keys() == sc.keys() and ctl.n_blocks == real.n_blocks == 30
    assert not torch.equal(sr["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])
    assert abs(float(sc["model.layers.5.mlp.down_proj.weight"].std()) - 0.02) < 0.001


# -- a planted boundary, through the entry point -------------------------------------------------------------
PLANTED_BLOCK = 4  # 1-based: block 4 (index 3) writes a 200x MLP output into the residual stream
# The evidence is the representation change alone (the planted signal), with a threshold the tiny model's
# early-block plateau passes too, so the planted block is the I-G boundary.
PLANTED_FUSION = ["weights=cka_only", "fusion.prominence=0.2"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory, shared_cache) -> Path:
    """A tiny llama whose block 4 rewrites the residual stream (its MLP output scaled 200x): a
    representation-change peak that lives in the weights."""
    folder = tmp_path_factory.mktemp("planted")
    loaded = load_model(_model_cfg(seed=0), shared_cache, need_attentions=False)
    with torch.no_grad():
        loaded.model.model.layers[PLANTED_BLOCK - 1].mlp.down_proj.weight.mul_(200.0)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def control_runs(planted, tmp_path_factory, shared_cache) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("control-runs")
    runs = {}
    for control in ("none", "random_init", "shuffled_words"):
        out = tmp / control
        run_mspgt(["model=local", f"model.local_path={planted}", "model.device=cpu", "model.dtype=float32",
                   *TINY, *PLANTED_FUSION, f"control={control}", f"hydra.run.dir={out}",
                   f"paths.store_dir={tmp / 'store'}"], tmp, cache=shared_cache)
        runs[control] = out
    return runs


def test_random_init_removes_a_planted_boundary_and_shuffled_words_keeps_it(control_runs):
    change = {c: np.asarray(read_results(f)["signals"]["representation_change"]) for c, f in control_runs.items()}
    for c in ("none", "shuffled_words"):  # the planted block changes the representation most: word order or not
        assert int(np.argmax(change[c])) + 1 == PLANTED_BLOCK, (c, change[c])
        assert change[c][PLANTED_BLOCK - 1] > 1.5 * np.delete(change[c], PLANTED_BLOCK - 1).max()
    rand = change["random_init"]  # the initialiser's weights: the planted block is not there
    assert rand[PLANTED_BLOCK - 1] < 0.2 * change["none"][PLANTED_BLOCK - 1]
    # the comparison over the three real runs: the planted I-G boundary is learnt and survives shuffling
    [c] = compare(collect([control_runs["none"].parent]))
    v = {b.boundary: b for b in c.boundaries}
    assert v["I-G"].layer == PLANTED_BLOCK and v["I-G"].ci[1] == PLANTED_BLOCK, v["I-G"]
    assert (v["I-G"].learnt, v["I-G"].word_order) == (LEARNT, SURVIVES)


def test_each_control_has_its_own_cache_store_and_names_itself(control_runs):
    results = {c: read_results(f) for c, f in control_runs.items()}
    assert {c: r["control"]["key"] for c, r in results.items()} == {
        "none": "none", "random_init": "random_init-seed0", "shuffled_words": "shuffled_words-seed0"}
    assert len({r["cache_dir"] for r in results.values()}) == 3  # never the real model's statistics
    ids = {c: r["model"]["weights_id"] for c, r in results.items()}
    assert ids["shuffled_words"] == ids["none"] and ids["random_init"] == ids["none"] + "+control:random_init-seed0"
    store = sorted(p.name for p in (control_runs["none"].parent / "store" / "boundary").iterdir())
    assert len(store) == 3 and sum("__shuffled_words-seed0" in n for n in store) == 1
    assert sum("__random_init-seed0" in n for n in store) == 1
    for c, folder in control_runs.items():
        assert f"control={results[c]['control']['key']}" in (folder / "summary.md").read_text()
    state = wandb_run_state(control_runs["random_init"])
    assert "random_init-seed0" in json.dumps(state)  # W&B config and summary name the control


def test_an_unknown_control_fails_before_any_work(tmp_path):
    proc = run_mspgt(["model=tiny_llama", *TINY, "control.name=bogus", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path,
                     check=False)
    assert proc.returncode == 2 and "control.name='bogus'" in proc.stdout


# -- the comparison's verdicts on constructed results ---------------------------------------------------------
def _result(control: str, li: int | None, ig: int | None, li_ci=None, ig_ci=None, peaks=None) -> BoundaryResult:
    def ci(layer, interval):
        lo, hi = interval if interval else ((layer, layer) if layer else (None, None))
        return BoundaryCI(layer, None if layer is None else layer / 30, lo, hi,
                          None if lo is None else hi - lo, lo is not None and hi - lo < 5)

    name, _, seed = control.partition("-seed")
    record = {"name": name, "seed": int(seed) if seed else None, "key": control}
    found = [x for x in (li, ig) if x is not None]
    return BoundaryResult(model={"name": "m", "family": "llama", "n_blocks": 30, "weights_id": "w"},
                          data={"name": "bbc", "key": "bbc-1"}, control=record,
                          boundaries={"L-I": ci(li, li_ci), "I-G": ci(ig, ig_ci)},
                          peaks={"layers": peaks if peaks is not None else found}, evidence=[0.0] * 30)


def test_comparison_verdicts_follow_the_preregistered_rule():
    real = _result("none", 3, 12, (2, 4), (11, 14))
    random = _result("random_init-seed0", 4, 25, (1, 9), (20, 28))  # its L-I point 4 is in [2, 4]; 25 is outside
    shuffled = _result("shuffled_words-seed0", 13, 20)  # its L-I point 13 lies in the real I-G CI
    [c] = compare([(real, "a", {}), (random, "b", {}), (shuffled, "c", {})])
    v = {b.boundary: b for b in c.boundaries}
    assert (v["L-I"].learnt, v["L-I"].word_order) == (ARCHITECTURE, NEEDS_ORDER)
    assert (v["I-G"].learnt, v["I-G"].word_order) == (LEARNT, SURVIVES)
    assert [o.reproduced_by for o in v["I-G"].controls] == [None, "L-I"]  # the name does not have to match
    # overlapping CIs are not a reproduction: random's I-G CI [20, 28] misses [11, 14], but [1, 9] overlaps
    # [2, 4] only through the point 4; move the point out and the overlap alone does not count
    random2 = _result("random_init-seed0", 6, 25, (1, 9), (20, 28))
    [c2] = compare([(real, "a", {}), (random2, "b", {})])
    assert [b.learnt for b in c2.boundaries] == [LEARNT, LEARNT]
    assert [b.word_order for b in c2.boundaries] == [NOT_TESTED, NOT_TESTED]


def test_comparison_edge_cases():
    real = _result("none", 3, None, (3, 3))
    single = _result("random_init-seed0", None, None, peaks=[3])  # one peak, no boundary reported: it counts
    seeds = [_result("shuffled_words-seed0", 20, 25), _result("shuffled_words-seed1", 3, 25)]  # any seed counts
    [c] = compare([(real, "a", {}), (single, "b", {}), (seeds[0], "c", {}), (seeds[1], "d", {})])
    v = {b.boundary: b for b in c.boundaries}
    assert v["L-I"].learnt == ARCHITECTURE and v["L-I"].word_order == SURVIVES
    assert v["I-G"].learnt == NO_BOUNDARY
    text = controls_markdown([c])
    assert "| yes (its single peak, block 3) |" in text  # the block of a peak no boundary name carries
    assert "random_init-seed0: L-I None, I-G None, peaks [3] (b)" in text
    # no control=none result, or other settings: no comparison
    assert compare([(single, "b", {})]) == []
    assert compare([(real, "a", {"data.n_sentences": "100"}), (single, "b", {})]) == []


def test_write_controls_reads_a_sweep_and_writes_md_json_png(tmp_path):
    for i, r in enumerate([_result("none", 3, 12, (2, 4), (11, 14)), _result("random_init-seed0", 20, 25),
                           _result("shuffled_words-seed0", 3, 12)]):
        folder = tmp_path / f"{i}-boundary-m"
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(f"- control={r.control['name']}\n")
        (folder / "results.json").write_text(json.dumps(r.to_json()))
    [c] = write_controls([tmp_path], tmp_path)
    saved = json.loads((tmp_path / "controls.json").read_text())
    verdicts = [(b["boundary"], b["learnt"], b["word_order"]) for b in saved["comparisons"][0]["boundaries"]]
    assert verdicts == [("L-I", LEARNT, SURVIVES), ("I-G", LEARNT, SURVIVES)]
    assert (tmp_path / "controls.png").stat().st_size > 10_000
    assert "| L-I | 3 [2, 4] (not accepted)" not in (tmp_path / "controls.md").read_text()
    assert "| L-I | 3 [2, 4] | 20 [20, 20] | 3 [3, 3] | no | yes (its L-I) | learnt | survives shuffling |" in (
        tmp_path / "controls.md").read_text()


def test_the_store_never_hands_a_controls_boundaries_to_the_real_model(tmp_path):
    from mspgt.errors import MspgtError
    from mspgt.reports.store import data_key, load_boundary, save_boundary

    data = OmegaConf.create({"name": "bbc", "source": "bbc", "n_sentences": 10, "seed": 0})
    shuffled = Control("shuffled_words", 0)
    stored = _result("shuffled_words-seed0", 3, 12)
    stored.data["key"] = data_key(data)
    path = save_boundary(tmp_path, "m", data, stored, shuffled)
    assert path.name.endswith("__shuffled_words-seed0.json")
    assert load_boundary(tmp_path, "m", "w", data, shuffled).layer("L-I") == 3
    with pytest.raises(MspgtError, match="control=none"):  # the real model finds no stored result ...
        load_boundary(tmp_path, "m", "w", data)
    path.rename(path.with_name(path.name.replace("__shuffled_words-seed0", "")))  # ... nor a renamed one
    with pytest.raises(MspgtError, match="another model, corpus or control"):
        load_boundary(tmp_path, "m", "w", data)


# -- a planted word-order dependency, through each control's own code path -----------------------------------
FILLERS = ["red", "blue", "green", "cat", "dog", "house", "river", "stone", "bird", "tree", "road", "lamp"]


def _order_planted_sentences(n: int) -> list:
    """Sentences `f f P book f Q f` with P, Q = the, to (label 0) or to, the (label 1): the label of "book" is
    the identity of the word before it. Both cues are in every sentence, so only the order tells the label."""
    from mspgt.data.labels import LabeledSentence
    from mspgt.data.shuffle import join_words

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        y = i % 2
        f = list(rng.choice(FILLERS, size=4))
        cue, other = ("the", "to") if y == 0 else ("to", "the")
        words = [f[0], f[1], cue, "book", f[2], other, f[3]]
        text, spans = join_words(words)
        out.append(LabeledSentence(text, "planted", words, spans, {"pos": [y if w == "book" else -1 for w in words]}))
    return out


def _book_states(loaded, sentences: list) -> tuple[np.ndarray, np.ndarray]:
    """States h_0..h_L at "book"'s last token ([n, L+1, d]) through the pass's hooks, and its labels [n]."""
    from mspgt.data.alignment import encode_sentences
    from mspgt.extraction.hooks import residual_stream
    from mspgt.model.loading import decoder_blocks

    encoded = encode_sentences(loaded.tokenizer, sentences, max_tokens=32)
    states, labels = [], []
    for s, enc in zip(sentences, encoded, strict=True):
        w = s.words.index("book")
        with torch.no_grad(), residual_stream(decoder_blocks(loaded.model)) as hs:
            loaded.model(input_ids=torch.tensor([enc.input_ids]))
        states.append(torch.stack([h[0, enc.word_token[w]] for h in hs]).numpy())
        labels.append(s.labels["pos"][w])
    return np.stack(states), np.array(labels)


def _held_out_accuracy(x: np.ndarray, y: np.ndarray, n_train: int) -> float:
    """A ridge classifier (closed form, standardised features) trained on the first n_train, scored on the rest."""
    mu, sd = x[:n_train].mean(0), x[:n_train].std(0) + 1e-6
    z = (x - mu) / sd
    a = np.c_[z, np.ones(len(z))]
    w = np.linalg.solve(a[:n_train].T @ a[:n_train] + 1.0 * np.eye(a.shape[1]), a[:n_train].T @ (2.0 * y[:n_train] - 1))
    return float(((a[n_train:] @ w > 0) == (y[n_train:] == 1)).mean())


def test_shuffled_words_removes_a_planted_word_order_dependency_and_random_init_keeps_it(shared_cache):
    """The label of "book" is the word before it. A causal model's state at "book" carries it (not at h_0, the
    token's own embedding), whatever its weights: random_init keeps it (the dependency is in the data's order and
    the architecture's attention, not in learnt weights). shuffled_words moves each word with its label, so the
    label no longer follows from what precedes the word: chance at every state."""
    from mspgt.data.shuffle import shuffle_labeled

    sentences = _order_planted_sentences(400)
    real = load_model(_model_cfg(seed=0), shared_cache, need_attentions=False)
    random = load_model(_model_cfg(seed=0), shared_cache, need_attentions=False, control=Control("random_init", 1))
    shuffled = [shuffle_labeled(s, 0) for s in sentences]
    assert sorted(s.words.index("book") for s in shuffled) != [3] * 400  # the control moved the words
    acc = {}
    for name, loaded, data in (("none", real, sentences), ("random_init", random, sentences),
                               ("shuffled_words", real, shuffled)):
        x, y = _book_states(loaded, data)
        acc[name] = [_held_out_accuracy(x[:, layer], y, 300) for layer in range(x.shape[1])]
    for name in ("none", "random_init"):
        assert acc[name][0] <= 0.6, acc  # h_0: "book"'s own embedding, the same in every sentence
        assert min(acc[name][1:]) >= 0.9, acc  # every block's output knows the word before "book"
    assert max(acc["shuffled_words"]) <= 0.7, acc  # gone at every state
