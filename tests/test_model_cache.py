"""Concurrent jobs that need the same model or tokenizer cache (a Slurm array on one shared file system)
build it once and share it: the first builds under a lock, the others wait and load its copy."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mspgt.files import build_lock
from mspgt.model.loading import _tiny_tokenizer

CONF = Path(__file__).resolve().parents[1] / "conf"


def _tiny_cfg():
    return OmegaConf.load(CONF / "model" / "tiny_llama.yaml")


def _build_tokenizer(cache_dir: str, start: float) -> int:
    while time.time() < start:  # line the processes up so they race for the same cache
        time.sleep(0.005)
    return len(_tiny_tokenizer(_tiny_cfg(), Path(cache_dir)))


@pytest.mark.slow  # processes of their own (a sweep, signals, a mount): CI runs it
def test_processes_racing_for_an_empty_tokenizer_cache_all_succeed(tmp_path):
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        start = time.time() + 8.0
        sizes = pool.starmap(_build_tokenizer, [(str(tmp_path), start)] * 4)
    assert len(set(sizes)) == 1 and sizes[0] > 1000
    saved = tmp_path / "tokenizers" / "smollm2"
    assert (saved / "mspgt-complete").exists()
    leftovers = [p.name for p in saved.parent.iterdir() if p.name.startswith(".smollm2-")]
    assert leftovers == [], f"temp folders left behind: {leftovers}"


def test_a_job_waits_for_the_builder_and_reuses_its_copy(tmp_path):
    source = tmp_path / "source"
    tok = _tiny_tokenizer(_tiny_cfg(), source)  # a complete copy to "publish" while the other job waits
    cache = tmp_path / "cache"
    saved = cache / "tokenizers" / "smollm2"
    lock_path = saved.with_name("smollm2.lock")
    got: list = []
    with build_lock(lock_path, 10, "test"):
        waiter = threading.Thread(target=lambda: got.append(_tiny_tokenizer(_tiny_cfg(), cache)))
        waiter.start()
        time.sleep(1.5)
        assert waiter.is_alive(), "the second job did not wait for the lock holder"
        tok.save_pretrained(saved)
        (saved / "mspgt-complete").write_text("built by the lock holder")
    waiter.join(timeout=60)
    assert not waiter.is_alive() and len(got) == 1 and len(got[0]) == len(tok)
    assert (saved / "mspgt-complete").read_text() == "built by the lock holder", "it rebuilt instead of reusing"
