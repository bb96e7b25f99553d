"""The real entry point, `python -m mspgt.run`, through Hydra: single runs, a local multirun, the cache,
resume after a kill, corrupt-cache detection, bad input. Tiny random models: plumbing, not science."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_DATA, TINY, read_results, run_cli, run_mspgt, wandb_run_state


def _same_science(a: dict, b: dict) -> None:
    """Identical boundaries, CIs, selection frequencies and signals."""
    assert a["boundaries"] == b["boundaries"]
    assert a["peaks"] == b["peaks"]
    for k in a["signals"]:
        np.testing.assert_allclose(a["signals"][k], b["signals"][k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_qwen2"])
def test_single_run_writes_results_figure_and_wandb(model, tmp_path, shared_cache):
    out = tmp_path / "run"
    run_mspgt([f"model={model}", *TINY, f"hydra.run.dir={out}"], tmp_path, cache=shared_cache)
    res = read_results(out)
    L = res["model"]["n_blocks"]
    assert L == 6 and res["layers"] == list(range(1, L + 1))
    assert set(res["signals"]) == {"representation_change", "probe_jump", "attention_drift"}
    for values in res["signals"].values():
        assert len(values) == L and all(np.isfinite(values))
    assert len(res["evidence"]) == L and min(res["evidence"]) >= 0 and max(res["evidence"]) <= 1 + 1e-9
    for name in ("L-I", "I-G"):
        b = res["boundaries"][name]
        assert b["n_resamples"] == 50
        assert sum(b["selection_frequency"].values()) + b["n_missing"] + b["n_undefined"] == 50
        assert 0 <= b["n_relabelled"] <= 50
    assert "approximate" in res["notes"]["srl"].lower()
    assert "unbiased HSIC" in res["notes"]["cka_estimator"]
    assert "population" in res["notes"]["cka_estimand"] and res["data"]["grouping"] == "shuffled"
    assert "two most prominent" in res["notes"]["peak_matching"]
    sample = res["probe_sample"]  # the held-out sample is spread over the held-out groups
    assert sample["eval"]["words"] == 150 and sample["eval"]["groups"] == sample["eval"]["groups_on_side"]
    assert "Probe sample: train" in (out / "summary.md").read_text()
    assert (out / "boundaries.png").stat().st_size > 10_000
    assert (out / "results.json").stat().st_mode & 0o044, "results must be readable by colleagues (umask 022)"
    assert "| L-I |" in (out / "summary.md").read_text()
    state = wandb_run_state(out)
    assert state["state"] == "finished" and state["project"] == "mspgt"
    assert "llama" in state["tags"] or "qwen" in state["tags"]
    assert state["summary"]["n_blocks"] == L and "L_I/n_missing" in state["summary"]
    assert state["summary"]["per_layer"]["nrows"] == L and state["summary"]["boundaries"]["format"] == "png"
    store = list((tmp_path / "outputs" / "store" / "boundary").glob(f"{model}__*.json"))
    assert len(store) == 1


@pytest.mark.slow  # processes of their own (a sweep, signals, a mount): CI runs it
def test_local_multirun_gives_each_job_its_own_folder(tmp_path, shared_cache):
    # the README's command as typed: the sweep folder comes from the shipped config (outputs/multirun/<time>)
    run_cli(["-m", "model=tiny_llama,tiny_qwen2", "experiment=boundary", *TINY], tmp_path, cache=shared_cache)
    sweeps = list((tmp_path / "outputs" / "multirun").iterdir())
    assert len(sweeps) == 1, sweeps
    sweep = sweeps[0]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "results.json").exists())
    assert [read_results(j)["model"]["name"] for j in jobs] == ["tiny_llama", "tiny_qwen2"]
    for j in jobs:
        assert list((j / "wandb").glob("offline-run-*"))
    # Experiment 3 over the sweep: both models, one per family, so no within-family verdict is possible
    record = json.loads((sweep / "robustness.json").read_text())
    assert sorted(m["model"] for m in record["models"]) == ["tiny_llama", "tiny_qwen2"]
    assert set(record["families"]) == {"llama", "qwen"}
    verdicts = {v["id"]: v["verdict"] for v in record["predictions"]}
    assert verdicts["li_cv_within_family"] == "untestable here"
    assert "## The paper's predictions" in (sweep / "robustness.md").read_text()


def test_changed_fusion_settings_reuse_the_cache_without_the_model(tmp_path):
    first = tmp_path / "a"
    run_mspgt(["model=tiny_llama", *TINY, f"hydra.run.dir={first}"], tmp_path)
    second = tmp_path / "b"
    run_mspgt(["model=tiny_llama", *TINY, "fusion.prominence=0.2", "fusion.weights.attention_drift=2",
               f"hydra.run.dir={second}"], tmp_path)
    a, b = read_results(first), read_results(second)
    assert "extract_s" in a["timings"] and "extract_s" not in b["timings"]
    assert "load_s" not in b["timings"], "a cache hit must not load the model"
    assert "probes_s" in a["timings"] and "probes_cached_s" in b["timings"] and "probes_s" not in b["timings"]
    for k in a["signals"]:
        np.testing.assert_allclose(a["signals"][k], b["signals"][k])
    assert a["evidence"] != b["evidence"]
    # fusion.edges: the same curve, the edge candidates dropped; a padded run checks exactly its edge boundaries
    third = tmp_path / "c"
    run_mspgt(["model=tiny_llama", *TINY, "fusion.edges=interior", f"hydra.run.dir={third}"], tmp_path)
    c = read_results(third)
    n_blocks = a["model"]["n_blocks"]
    assert c["evidence"] == a["evidence"] and c["edge_check"] is None and c["notes"]["edges"].startswith("interior")
    assert c["peaks"]["layers"] == [b for b in a["peaks"]["layers"] if b not in (1, n_blocks)]
    at_edge = [n for n, x in a["boundaries"].items() if x["layer"] in (1, n_blocks)]
    assert list((a["edge_check"] or {}).get("edge_blocks", {})) == at_edge
    if at_edge:  # the check is the interior run's detection and bootstrap
        assert a["edge_check"]["boundaries"] == c["boundaries"]


def _chunks(cache: Path) -> list[Path]:
    return sorted(cache.glob("stats/*/chunk_*.npz"))


@pytest.mark.slow  # processes of their own (a sweep, signals, a mount): CI runs it
def test_killed_extraction_resumes_to_identical_results(tmp_path):
    args = ["model=tiny_llama", *TINY, "data.n_sentences=64"]
    ref = tmp_path / "ref"
    run_mspgt([*args, f"hydra.run.dir={ref}"], tmp_path, cache=tmp_path / "cache-ref")

    cache = tmp_path / "cache-kill"
    import os

    env = dict(os.environ, MSPGT_CACHE_DIR=str(cache), OMP_NUM_THREADS="1", WANDB_MODE="offline")
    proc = subprocess.Popen([sys.executable, "-m", "mspgt.run", *args, "extraction.sleep_per_batch_s=1.5",
                             f"hydra.run.dir={tmp_path / 'killed'}"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(_chunks(cache)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    n_before = len(_chunks(cache))
    assert 2 <= n_before < 8, f"the kill must land part-way through extraction ({n_before} of 8 chunks)"
    mtimes = {p.name: p.stat().st_mtime_ns for p in _chunks(cache)}

    resumed = tmp_path / "resumed"
    run_mspgt([*args, f"hydra.run.dir={resumed}"], tmp_path, cache=cache)
    after = {p.name: p.stat().st_mtime_ns for p in _chunks(cache)}
    assert all(after[n] == t for n, t in mtimes.items()), "finished chunks must be reused, not recomputed"
    assert len(after) == 8
    _same_science(read_results(ref), read_results(resumed))


def test_corrupt_cache_is_detected_and_rebuilt(tmp_path):
    args = ["model=tiny_llama", *TINY]
    first = tmp_path / "first"
    run_mspgt([*args, f"hydra.run.dir={first}"], tmp_path)
    victim = _chunks(tmp_path / "cache")[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    probes = next((tmp_path / "cache").glob("stats/*/probes-*.pkl"))
    probes.write_bytes(probes.read_bytes()[:-10])  # a truncated probe result
    second = tmp_path / "second"
    proc = run_mspgt([*args, f"hydra.run.dir={second}"], tmp_path)
    assert (proc.stdout + proc.stderr).count("corrupt") >= 2
    timings = read_results(second)["timings"]
    assert "extract_s" in timings, "the corrupt chunk must be recomputed with the model"
    assert "probes_s" in timings, "the corrupt probe result must be retrained"
    _same_science(read_results(first), read_results(second))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["model=gpt5"], "model"),
        (["data=nope"], "data"),
        (["fusion.weights.probe_jump=-1"], "negative"),
        (["fusion.weights.probe_jump=0", "fusion.weights.attention_drift=0",
          "fusion.weights.representation_change=0"], "zero"),
        (["fusion.prominence=0"], "prominence"),
        (["fusion.prominence=1.5"], "prominence"),
        (["data=text", "data.path=/no/such/file.txt"], "data.path"),
        (["data.n_sentences=12"], "at least"),
        (["data.labels=gold"], "data=conllu"),
        (["experiment=nothing"], "experiment"),
        (["model.attn_implementation=sdpa"], "attention weights"),
        (["model=llama2"], "model.local_path"),
        (["data=wikitext103"], "data=bbc"),
    ],
)
def test_bad_input_fails_fast_with_a_fix(override, message, tmp_path):
    t = time.time()
    proc = run_mspgt(["model=tiny_llama", *TINY, *override, f"hydra.run.dir={tmp_path / 'r'}"], tmp_path, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert message in text, text[-3000:]
    assert "fix:" in text or "Available options" in text, text[-3000:]
    assert time.time() - t < 120


def test_fewer_than_two_peaks_is_a_result_not_a_crash(tmp_path):
    out = tmp_path / "r"
    run_mspgt(["model=tiny_llama", *TINY, "fusion.prominence=1.0", f"hydra.run.dir={out}"], tmp_path)
    res = read_results(out)
    assert res["found_two_peaks"] is False and res["scales"] is None
    assert res["boundaries"]["L-I"]["layer"] is None and not res["boundaries"]["L-I"]["accepted"]
    assert "Fewer than two peaks" in (out / "summary.md").read_text()


def test_gold_conllu_labels_run(tmp_path):
    ewt = SHARED_DATA / "ud-english-ewt"
    if not ewt.exists():
        pytest.skip(f"gold UD English-EWT not found at {ewt} (the shared data folder)")
    out = tmp_path / "r"
    run_mspgt(["model=tiny_llama", *TINY, "data=conllu", f"data.path={ewt}", f"hydra.run.dir={out}"], tmp_path)
    res = read_results(out)
    assert res["data"]["labels"] == "gold" and res["data"]["source"] == "conllu"
    assert json.dumps(res["probe_f1_by_state"]) != "null"


def test_batch_size_and_padding_do_not_change_the_statistics(tmp_path, shared_cache):
    """Padding is masked out of every statistic: batches of 4 and of 16 sentences give the same signals."""
    results = []
    for bs in (4, 16):
        out = tmp_path / f"bs{bs}"
        run_mspgt(["model=tiny_qwen2", *TINY, f"extraction.batch_size={bs}", f"hydra.run.dir={out}"], tmp_path,
                  cache=shared_cache)
        results.append(read_results(out))
    a, b = results
    np.testing.assert_allclose(a["signals"]["representation_change"], b["signals"]["representation_change"],
                               rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(a["signals"]["attention_drift"], b["signals"]["attention_drift"], rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(a["activation_std_all_tokens"], b["activation_std_all_tokens"], rtol=1e-5)


def test_selected_variants_give_the_same_result_as_all(tmp_path, shared_cache):
    """extraction.variants=selected stores only the fusion's variants: same signals, smaller cache entry."""
    results = {}
    for mode in ("all", "selected"):
        out = tmp_path / mode
        run_mspgt(["model=tiny_llama", *TINY, "fusion.cka.standardise=true", f"extraction.variants={mode}",
                   f"hydra.run.dir={out}"], tmp_path, cache=shared_cache)
        results[mode] = read_results(out)
    _same_science(results["all"], results["selected"])
