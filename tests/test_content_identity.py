"""Results follow the contents, not the paths: an edited corpus gives new statistics (and a new
stored result), a CoNLL-U folder's identity follows its bytes, and a remembered file digest never outlives
an edit (mspgt/identity.py)."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MODEL_LOADED, SHARED_DATA, TINY, log_text, read_results, run_mspgt

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


def test_a_tiny_model_s_identity_covers_its_shape():
    """Two tiny models of one architecture and seed but different shapes never share a weights id (nor the
    caches and stored boundaries keyed by it); the same shape always has the same one."""
    from omegaconf import OmegaConf

    from mspgt.model.identity import model_identity

    base = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "model" / "tiny.yaml")

    def weights_id(**tiny) -> str:
        cfg = OmegaConf.merge(base, {"tiny": tiny})
        return model_identity(cfg, "/nonexistent-cache")  # a tiny model's id needs no file

    default = weights_id()
    assert weights_id() == default
    assert weights_id(num_hidden_layers=12, hidden_size=128) != default
    assert weights_id(intermediate_size=256) != default
    assert weights_id(num_key_value_heads=4) != default
    assert default.startswith("tiny-llama-seed0")
