"""Issue 14: no stale or false result, and every bad input a clear error before the model loads.

Through the real entry point (`python -m mspgt.run`, tiny_llama): an edited corpus gives new statistics;
probes.f1_average applies; every bad setting, corpus or folder fails with exit 2, a message naming the
fix, before the model loads and without a results.json; two jobs train the probes once; a read-only cache
is read; Ctrl-C is one line and exit 130; sweep summaries show the swept settings.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import SHARED_DATA, TINY, read_results, run_mspgt

MODEL_LOADED = "loaded tiny_llama"  # the model-load log line (mspgt/model/loading.py)
EXTRACTION_STARTS = "sentences in 12 groups"  # the log line just before the extraction (experiments/boundary.py)

NOUNS = ["river", "teacher", "city", "garden", "market", "doctor", "engine", "village", "letter", "window",
         "council", "player", "bridge", "student", "farmer", "museum", "storm", "company", "singer", "forest"]
VERBS = ["visited", "described", "opened", "watched", "painted", "repaired", "closed", "praised", "followed",
         "measured"]
ADJS = ["old", "quiet", "busy", "small", "famous", "wet", "bright", "local", "large", "strange"]


def write_corpus(path: Path, seed: int, n: int = 60) -> None:
    """One plain English sentence a line (5-40 words), different for each seed."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b, c = rng.sample(NOUNS, 3)
        lines.append(f"The {rng.choice(ADJS)} {a} {rng.choice(VERBS)} the {rng.choice(ADJS)} {b} near the {c} "
                     f"{'yesterday' if rng.random() < 0.5 else 'again'}.")
    path.write_text("\n".join(lines) + "\n")


def log_text(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


# -- item 1 (and 2): content identity; the F1 average applies ------------------------------------------------
def test_edited_corpus_gives_new_statistics_and_f1_average_applies(tmp_path):
    corpus = tmp_path / "mine.txt"
    write_corpus(corpus, seed=1)
    args = ["model=tiny_llama", *TINY, "data=text", f"data.path={corpus}", "data.one_per_line=true"]
    a = tmp_path / "a"
    run_mspgt([*args, f"hydra.run.dir={a}"], tmp_path)

    # the same contents, another F1 average: statistics and probes reused, F(l) differs, the setting is true
    a_micro = tmp_path / "a_micro"
    proc = run_mspgt([*args, "probes.f1_average=micro", f"hydra.run.dir={a_micro}"], tmp_path)
    assert "statistics loaded from the cache" in log_text(proc)
    macro, micro = read_results(a), read_results(a_micro)
    assert micro["notes"]["f1_average"] == "micro"
    assert not np.allclose(macro["probe_f1_by_state"], micro["probe_f1_by_state"]), "micro F1 must differ from macro"

    # another corpus copied over the same path: new statistics, not corpus A's
    write_corpus(corpus, seed=2)
    b = tmp_path / "b"
    proc = run_mspgt([*args, f"hydra.run.dir={b}"], tmp_path)
    assert "statistics loaded from the cache" not in log_text(proc)
    assert MODEL_LOADED in log_text(proc)
    res_a, res_b = read_results(a), read_results(b)
    assert res_a["data"]["content_sha256"] != res_b["data"]["content_sha256"]
    assert res_a["data"]["key"] != res_b["data"]["key"]
    assert res_a["cache_dir"] != res_b["cache_dir"]
    assert res_a["signals"]["representation_change"] != res_b["signals"]["representation_change"]
    stored = sorted((tmp_path / "outputs" / "store" / "boundary").glob("tiny_llama__*__text-*.json"))
    assert len(stored) == 2, "each corpus version has its own stored boundary result"


def test_data_identity_follows_conllu_contents(tmp_path):
    from omegaconf import OmegaConf

    from mspgt.reports.store import data_identity, data_key

    folder = tmp_path / "ud"
    folder.mkdir()
    src = sorted((SHARED_DATA / "ud-english-ewt").glob("*.conllu"))
    if not src:
        pytest.skip("no UD English-EWT under shared/data")
    shutil.copy(src[0], folder / "a.conllu")
    cfg = OmegaConf.create({"name": "conllu", "source": "conllu", "path": str(folder), "n_sentences": 10,
                            "min_words": 5, "max_words": 40, "max_tokens": 64, "seed": 0, "labels": "gold"})
    before = data_key(cfg)
    assert "path" not in data_identity(cfg) and data_identity(cfg)["content_sha256"]
    with open(folder / "a.conllu", "a") as f:
        f.write("# an appended comment changes the bytes\n")
    assert data_key(cfg) != before


# -- item 4, 6, 2, 3: bad settings, corpora and folders fail first ----------------------------------------------
BAD = [
    (["probes.epochs=0"], "probes.epochs"),
    (["probes.epochs=-3"], "probes.epochs"),
    (["fusion.attention.first_block=bogus"], "fusion.attention.first_block"),
    (["data.max_tokens=0"], "data.max_tokens"),
    (["extraction.chunk_groups=0"], "extraction.chunk_groups"),
    (["experiment=intervention", "experiment.activation_std.n_sentences=0"], "experiment.activation_std.n_sentences"),
    (["fusion.prominence=abc"], "fusion.prominence"),
    (["bootstrap.n_resamples=1.5"], "bootstrap.n_resamples"),
    (["extraction.cache=maybe"], "extraction.cache"),
    (["probes.f1_average=bogus"], "probes.f1_average"),
    (["probes.precision=float8"], "probes.precision"),
    (["probes.schedule=linear"], "probes.schedule"),
    (["experiment.name=bogus"], "experiment"),
    (["tracking.mode=bogus"], "tracking.mode"),
    (["data=text"], "data.path"),
    (["data=text", "data.path={binary}"], "byte 3"),
    (["data=conllu", "data.path={notconllu}"], "line 2"),
    (["paths.store_dir={file}"], "paths.store_dir"),
    (["paths.cache_dir={file}"], "paths.cache_dir"),
    (["hydra.run.dir={file}"], "hydra.run.dir"),
    (["model=llama2", "model.local_path={modeldir}"], "missing weights"),
]


@pytest.mark.parametrize(("override", "names"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_fails_before_the_model_loads(override, names, tmp_path):
    (tmp_path / "binary.txt").write_bytes(b"abc\xff\xfe\x00\x01 binary")
    (tmp_path / "notconllu.conllu").write_text("# a comment\nThis is prose, not CoNLL-U.\n")
    (tmp_path / "file").write_text("a file in the way")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "llama"}')  # no weights, no tokenizer
    files = {"binary": tmp_path / "binary.txt", "notconllu": tmp_path / "notconllu.conllu", "file": tmp_path / "file",
             "modeldir": tmp_path / "model"}
    override = [o.format(**files) for o in override]
    run = tmp_path / "r"
    args = ["model=tiny_llama", *TINY, *override]  # a later model= wins
    if not any(o.startswith("hydra.run.dir=") for o in override):
        args.append(f"hydra.run.dir={run}")
    proc = run_mspgt(args, tmp_path, check=False)
    text = log_text(proc)
    assert proc.returncode == 2, text[-3000:]
    assert names in text and "fix:" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert MODEL_LOADED not in text and "sentences in" not in text, "must fail before any data or model"
    assert not (run / "results.json").exists()
    if (run / "run.log").exists():
        assert names in (run / "run.log").read_text(), "the message belongs in run.log too"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is missing")
def test_probe_device_without_cuda_names_probes_device(tmp_path):
    proc = run_mspgt(["model=tiny_llama", *TINY, "probes.device=cuda", f"hydra.run.dir={tmp_path / 'r'}"],
                     tmp_path, check=False)
    text = log_text(proc)
    assert proc.returncode == 2 and "probes.device=cuda" in text and "model.device" not in text, text[-3000:]
    assert MODEL_LOADED not in text and not (tmp_path / "r" / "results.json").exists()


def test_warnings_for_a_corpus_that_is_not_words_and_too_short(tmp_path):
    junk = tmp_path / "numbers.txt"
    rng = random.Random(0)
    junk.write_text("\n".join(" ".join(f"{rng.randint(0, 99999)}.{rng.randint(0, 99)}" for _ in range(8))
                              for _ in range(44)) + "\n")
    proc = run_mspgt(["model=tiny_llama", *TINY, "data=text", f"data.path={junk}", "data.one_per_line=true",
                      f"hydra.run.dir={tmp_path / 'r'}"], tmp_path, check=False)
    text = log_text(proc)
    assert "44 of 44 sentences are mostly not words" in text, text[-3000:]
    assert "data.n_sentences=48 but the corpus gave only 44" in text


def test_identical_sentences_warn(caplog):
    from omegaconf import OmegaConf

    from mspgt.data.corpus import Sentence, check_sentences

    cfg = OmegaConf.create({"n_sentences": 3, "min_words": 1, "max_words": 40})
    check_sentences([Sentence("The same words again.", "d")] * 3, cfg)
    assert "all 3 sentences are identical" in caplog.text


def test_sigma_that_dwarfs_the_activations_warns(tmp_path):
    # the warning comes from the validation step; the missing data.path then stops the run before any work
    proc = run_mspgt(["model=tiny_llama", "experiment=intervention", "scale=local", "scale.layers=[1,2]",
                      "sigma=1e9", "data=text", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path, check=False)
    text = log_text(proc)
    assert "dwarfs the activations" in text and proc.returncode == 2, text[-3000:]


# -- item 2: the F1 averages against sklearn ---------------------------------------------------------------------
@pytest.mark.parametrize("average", ["macro", "micro", "weighted"])
def test_f1_average_matches_sklearn(average):
    from sklearn.metrics import f1_score

    from mspgt.signals.probes import _confusion_counts, average_f1

    rng = np.random.default_rng(3)
    gold = rng.integers(0, 5, 400)
    pred = np.where(rng.random((400, 3)) < 0.6, gold[:, None], rng.integers(0, 6, (400, 3)))  # class 5: never gold
    tp, fp, fn = (c[0].astype(np.float64) for c in _confusion_counts(gold, pred, np.zeros(400, int), 1, 6))
    present = np.unique(gold)
    ours = average_f1(tp[:, present], fp[:, present], fn[:, present], average)  # [L+1]
    ref = [f1_score(gold, pred[:, layer], labels=present, average=average, zero_division=np.nan) for layer in range(3)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


# -- item 5 and 7: two jobs at once; lock waits are logged ---------------------------------------------------------
def test_two_jobs_train_the_probes_once(tmp_path):
    env = dict(os.environ, MSPGT_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1", WANDB_MODE="offline",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MSPGT_LOCK_LOG_S="1")
    args = ["model=tiny_llama", *TINY, "probes.epochs=20", "tracking.mode=disabled"]
    procs = [subprocess.Popen([sys.executable, "-m", "mspgt.run", *args, f"hydra.run.dir={tmp_path / f'j{i}'}"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    trained = ["probes_s" in read_results(tmp_path / f"j{i}")["timings"] for i in range(2)]
    assert sorted(trained) == [False, True], "exactly one job trains the probes; the other reuses them"
    both = "".join(outputs)
    assert both.count("probes trained in") == 1, both[-4000:]
    assert both.count("probes loaded from the cache") == 1
    assert "is held by pid" in both, "a waiting job says who holds the lock"
    assert read_results(tmp_path / "j0")["signals"] == read_results(tmp_path / "j1")["signals"]


def test_clearing_a_corrupt_manifest_drops_the_probe_artifact(tmp_path):
    from mspgt.extraction.cache import StatisticsCache

    cache = StatisticsCache(tmp_path, {"what": 1})
    cache.check_manifest(1, {"n_blocks": 2})
    cache.save_artifact("probes", {"epochs": 3}, {"trained": "on the old statistics"})
    assert cache.load_artifact("probes", {"epochs": 3}) is not None
    (cache.dir / "manifest.json").write_text("{not json")
    cache.check_manifest(1, {"n_blocks": 2})
    assert cache.load_artifact("probes", {"epochs": 3}) is None
    assert not list(cache.dir.glob("probes-*"))


# -- item 7: read-only cache, Ctrl-C, sweep summaries -----------------------------------------------------------
def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -rm` for a read-only bind mount")
def test_complete_cache_on_a_read_only_mount_is_read(tmp_path):
    cache = tmp_path / "cache"
    args = ["model=tiny_llama", *TINY, "tracking.mode=disabled"]
    first = tmp_path / "first"
    run_mspgt([*args, f"hydra.run.dir={first}"], tmp_path, cache=cache)

    def read_only_run(extra: list[str], out: Path) -> subprocess.CompletedProcess:
        command = " ".join([sys.executable, "-m", "mspgt.run", *args, *extra, f"hydra.run.dir={out}"])
        env = dict(os.environ, MSPGT_CACHE_DIR=str(cache), WANDB_MODE="offline", HF_HUB_OFFLINE="1")
        return subprocess.run(["unshare", "-rm", "sh", "-c", f"mount --bind -o ro {cache} {cache} && exec {command}"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    second = tmp_path / "second"
    proc = read_only_run([], second)
    assert proc.returncode == 0, log_text(proc)[-3000:]
    assert "read-only cache" in log_text(proc)
    assert read_results(first)["boundaries"] == read_results(second)["boundaries"]
    missing = read_only_run(["data.n_sentences=52"], tmp_path / "third")  # no such entry in the cache
    assert missing.returncode == 2 and "cannot be written" in log_text(missing), log_text(missing)[-3000:]
    assert MODEL_LOADED not in log_text(missing)


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    env = dict(os.environ, MSPGT_CACHE_DIR=str(tmp_path / "cache"), WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "mspgt.run", "model=tiny_llama", *TINY,
                             "extraction.sleep_per_batch_s=3", f"hydra.run.dir={out}"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a shell without job control starts background jobs with SIGINT ignored, and
                            # Python keeps an inherited SIG_IGN: give the run the default a terminal gives it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "run.log").exists() and EXTRACTION_STARTS in (out / "run.log").read_text():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # during the extraction (3 s per batch): the window a user hits
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
    assert "Traceback" not in stdout + stderr
    assert "interrupted (Ctrl-C)" in stdout + stderr
    assert not (out / "results.json").exists()


def test_sweep_summary_shows_the_swept_values(tmp_path, shared_cache):
    run_mspgt(["-m", "model=tiny_llama", *TINY, "fusion.prominence=0.2,0.9", "tracking.mode=disabled"], tmp_path,
              cache=shared_cache)
    sweep = next((tmp_path / "outputs" / "multirun").iterdir())
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["swept"] == ["fusion.prominence"]
    md = (sweep / "sweep_summary.md").read_text()
    assert "| job | fusion.prominence | model |" in md
    assert "| 0 | 0.2 | tiny_llama |" in md and "| 1 | 0.9 | tiny_llama |" in md


@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -rm` for a small tmpfs")
def test_full_disk_is_one_message_naming_the_fix(tmp_path):
    from omegaconf import OmegaConf

    from mspgt.model.loading import _tiny_tokenizer

    seed = tmp_path / "seed"
    _tiny_tokenizer(OmegaConf.create({}), seed)  # the tokenizer the tiny model borrows, cached
    size = sum(f.stat().st_size for f in (seed / "tokenizers").rglob("*") if f.is_file())
    cache, out = tmp_path / "cache", tmp_path / "r"
    cache.mkdir()
    command = " ".join([sys.executable, "-m", "mspgt.run", "model=tiny_llama", *TINY, "tracking.mode=disabled",
                        f"hydra.run.dir={out}"])
    env = dict(os.environ, MSPGT_CACHE_DIR=str(cache), WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    # room for the tokenizer and about one chunk of statistics: the second chunk fills the disk
    script = (f"mount -t tmpfs -o size={size + 200_000} tmpfs {cache} && cp -r {seed}/tokenizers {cache}/ "
              f"&& exec {command}")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    text = log_text(proc)
    assert proc.returncode == 2, text[-3000:]
    assert "No space left on device" in text and "free space there" in text, text[-3000:]
    assert "Traceback" not in text
    assert not (out / "results.json").exists()


def test_file_digest_memo_never_outlives_an_edit(tmp_path, monkeypatch):
    import hashlib

    import mspgt.identity as identity

    calls = []
    real_hash = identity._hash
    monkeypatch.setattr(identity, "_hash", lambda p: calls.append(p) or real_hash(p))
    monkeypatch.setattr(identity, "_memo", {})
    f, memo = tmp_path / "weights.bin", tmp_path / "memo"
    f.write_bytes(b"A" * 1000)
    first = identity.file_sha256(f, memo)
    assert first == hashlib.sha256(b"A" * 1000).hexdigest() and len(calls) == 1
    monkeypatch.setattr(identity, "_memo", {})  # a new process: the memo on disk is used, no second read
    assert identity.file_sha256(f, memo) == first and len(calls) == 1
    st = f.stat()
    f.write_bytes(b"B" * 1000)  # same size, and the old mtime put back (`cp -p`, `touch -d`)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    monkeypatch.setattr(identity, "_memo", {})
    assert identity.file_sha256(f, memo) == hashlib.sha256(b"B" * 1000).hexdigest() and len(calls) == 2
