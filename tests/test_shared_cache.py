"""One cache shared by many jobs: two jobs at once train the probes once (the other waits and says who
holds the lock), a corrupt manifest drops what was built on it, a complete cache on a read-only mount is read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MODEL_LOADED, TINY, log_text, read_results, run_mspgt


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow  # processes of their own (a sweep, signals, a mount): CI runs it
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
    assert both.count(") trained in ") == 1, both[-4000:]  # "probes (training seed N) trained in"
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


@pytest.mark.slow  # processes of their own (a sweep, signals, a mount): CI runs it
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


def test_a_folder_where_the_lock_file_goes_is_one_message_naming_it(tmp_path):
    from mspgt.errors import MspgtError
    from mspgt.files import build_lock

    (tmp_path / "entry" / ".lock").mkdir(parents=True)  # a folder where the lock file goes (a stray mkdir)
    with pytest.raises(MspgtError, match="cannot be used: Is a directory") as err, \
            build_lock(tmp_path / "entry" / ".lock", 5, "the entry"):
        pass
    assert f"rm -rf {tmp_path / 'entry' / '.lock'}" in err.value.fix


def _immutable(path: Path) -> bool:
    """Make `path` immutable (`chattr +i`: needs root and a file system with the flag); False where it cannot."""
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


@pytest.mark.parametrize("kind", ["immutable", "folder"])
def test_a_lock_that_cannot_be_opened_on_a_complete_entry_is_one_line_naming_the_fix(kind, tmp_path, shared_cache):
    """An immutable `.lock` (chattr +i: even root cannot open it for writing) or a folder where the lock file goes,
    on a complete statistics entry: exit 2 with one message naming the lock and the command that frees it (no
    traceback); the entry is untouched, and once freed the same command reads it back without recomputing."""
    cache = tmp_path / "cache"
    for sub in ("tokenizers", "models"):  # the tokenizer parsed once per session, not again here
        if (shared_cache / sub).is_dir():
            cache.mkdir(exist_ok=True)
            (cache / sub).symlink_to(shared_cache / sub)
    args = ["model=tiny_llama", *TINY, "tracking.mode=disabled"]
    run_mspgt([*args, f"hydra.run.dir={tmp_path / 'a'}"], tmp_path, cache=cache)
    (entry,) = (cache / "stats").iterdir()
    lock = entry / ".lock"
    chunks = {p.name: p.stat().st_mtime_ns for p in entry.glob("chunk_*")}
    lock.unlink(missing_ok=True)
    if kind == "folder":
        lock.mkdir()
        fix = f"`rm -rf {lock}`"
    else:
        lock.touch()
        if not _immutable(lock):
            pytest.skip("chattr +i needs root and a file system with the immutable flag")
        fix = f"`chattr -i {lock}`"
    try:
        proc = run_mspgt([*args, f"hydra.run.dir={tmp_path / 'b'}"], tmp_path, cache=cache, check=False)
    finally:
        if kind == "immutable":
            subprocess.run(["chattr", "-i", str(lock)], check=True)
    text = log_text(proc)
    assert proc.returncode == 2, text[-3000:]
    assert f"the lock file {lock}" in text and fix in text and "Traceback" not in text, text[-3000:]
    assert MODEL_LOADED not in text
    assert {p.name: p.stat().st_mtime_ns for p in entry.glob("chunk_*")} == chunks  # the finished work is kept
    shutil.rmtree(lock) if kind == "folder" else lock.unlink()
    again = run_mspgt([*args, f"hydra.run.dir={tmp_path / 'c'}"], tmp_path, cache=cache)
    assert "statistics loaded from the cache" in again.stdout and MODEL_LOADED not in again.stdout
    assert read_results(tmp_path / "a")["boundaries"] == read_results(tmp_path / "c")["boundaries"]
