"""A cache on a full disk: one message naming the file that could not be written and the fix (exit 2), no
traceback, no library's bare `Exception: No space left on device`, and no half-written temp file or folder
left behind. Tested for real on a small tmpfs (`unshare -rm`: a private mount namespace, no root needed), and
by fault injection at the write (an OSError(ENOSPC) without a file name, as a write into an open file raises)."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY, log_text

LEFTOVER = "LEFTOVER "  # the script's listing of temp files and folders (they start with a dot) in the tmpfs


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return probe.returncode == 0


def _run_on_tmpfs(tmp_path: Path, size: int, seed: Path | None) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """The main job on tiny settings with its cache on a tmpfs of `size` bytes (holding `seed`'s tokenizers
    first, if given); after it, the script lists the temp files and folders left in the cache (the tmpfs is
    gone when the namespace ends)."""
    cache, out = tmp_path / "cache", tmp_path / "r"
    cache.mkdir()
    command = " ".join([sys.executable, "-m", "mspgt.run", "model=tiny_llama", *TINY, "tracking.mode=disabled",
                        f"hydra.run.dir={out}"])
    env = dict(os.environ, MSPGT_CACHE_DIR=str(cache), WANDB_MODE="offline", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    copy = f"cp -r {seed}/tokenizers {cache}/ && " if seed else ""
    script = (f"mount -t tmpfs -o size={size} tmpfs {cache} && {copy}{{ {command}; rc=$?; "
              f"find {cache} -name '.*' ! -name '*.lock' ! -name '*.holder' | sed 's/^/{LEFTOVER}/'; exit $rc; }}")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    return proc, cache, out


@pytest.mark.slow  # a process of its own in a mount namespace: CI runs it
@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -rm` for a small tmpfs")
def test_a_tokenizer_cache_on_a_full_disk_is_one_message_naming_it_and_leaves_no_temp_folder(tmp_path):
    """The first thing a run writes is the tokenizer's cached copy (~2 MB): on a 256 kB disk the tokenizer
    library's own `Exception: No space left on device (os error 28)` escaped, with a temp folder left behind."""
    proc, cache, out = _run_on_tmpfs(tmp_path, 256 * 1024, seed=None)
    text = log_text(proc)
    assert proc.returncode == 2, text[-3000:]
    assert f"{cache / 'tokenizers' / 'smollm2'}: No space left on device" in text, text[-3000:]
    assert "fix: free space there" in text, text[-3000:]
    assert "Traceback" not in text and "Exception:" not in text, text[-3000:]
    assert LEFTOVER not in proc.stdout, proc.stdout[-3000:]
    assert not (out / "results.json").exists()


@pytest.mark.slow  # a process of its own in a mount namespace: CI runs it
@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -rm` for a small tmpfs")
def test_a_full_disk_mid_run_names_the_file_it_could_not_write(tmp_path):
    """Room for the tokenizer and about one chunk of statistics: a later chunk fills the disk. The message was
    'a file: No space left on device' (a write into an open file names no file)."""
    from omegaconf import OmegaConf

    from mspgt.model.loading import _tiny_tokenizer

    seed = tmp_path / "seed"
    _tiny_tokenizer(OmegaConf.create({}), seed)  # the tokenizer the tiny model borrows, cached
    size = sum(f.stat().st_size for f in (seed / "tokenizers").rglob("*") if f.is_file())
    proc, cache, out = _run_on_tmpfs(tmp_path, size + 200_000, seed=seed)
    text = log_text(proc)
    assert proc.returncode == 2, text[-3000:]
    assert re.search(re.escape(str(cache / "stats")) + r"/\w+/[\w.]+: No space left on device", text), text[-3000:]
    assert "fix: free space there" in text and "Traceback" not in text, text[-3000:]
    assert LEFTOVER not in proc.stdout, proc.stdout[-3000:]
    assert not (out / "results.json").exists()


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write into an open file raises it: no file name


def test_a_streamed_file_on_a_full_disk_names_itself_and_leaves_no_temp_file(tmp_path):
    from mspgt.files import write_stream_atomic

    def fill(stream) -> None:
        stream.write(b"x" * 1000)
        raise _enospc()

    with pytest.raises(OSError) as err:
        write_stream_atomic(tmp_path / "chunk_00001.npz", fill)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "chunk_00001.npz")
    assert list(tmp_path.iterdir()) == []


def test_a_small_file_on_a_full_disk_names_itself_and_leaves_no_temp_file(tmp_path, monkeypatch):
    from mspgt import files

    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fd: int, mode: str) -> None:
            self.file = real_fdopen(fd, mode)

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

        def write(self, data: bytes) -> int:
            raise _enospc()

    monkeypatch.setattr(files.os, "fdopen", FullDisk)
    with pytest.raises(OSError) as err:
        files.write_bytes_atomic(tmp_path / "chunk_00001.sha256", b"digest")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "chunk_00001.sha256")
    assert list(tmp_path.iterdir()) == []


def test_a_cached_folder_on_a_full_disk_is_an_oserror_naming_it_and_leaves_no_temp_folder(tmp_path):
    """What the tokenizers library raises on a full disk: a plain Exception with the OS's words, no errno."""
    from mspgt.files import publish_folder

    def fill(folder: Path) -> None:
        (folder / "tokenizer_config.json").write_text("{}")
        raise Exception("No space left on device (os error 28)")  # the library's own type

    with pytest.raises(OSError) as err:
        publish_folder(tmp_path / "smollm2", fill, "ok")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "smollm2")
    assert list(tmp_path.iterdir()) == []
