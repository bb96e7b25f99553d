"""extraction.cache=false recomputes the statistics without reading the cache and without destroying it: the
finished entry's chunks stay as they were (a run stopped part-way loses nothing), the recomputation lives in
a scratch entry that is gone afterwards, and the results equal the cached run's. A chunk deleted while the
builder runs is named, and the same command recomputes only it."""

from __future__ import annotations

import pytest

from tests.conftest import TINY, read_results, run_mspgt


@pytest.mark.slow  # two runs: CI runs it
def test_cache_false_recomputes_beside_the_finished_entry(tmp_path, shared_cache):
    cache = tmp_path / "cache"
    for sub in ("tokenizers", "models"):  # the tokenizer parsed once per session, not again here
        if (shared_cache / sub).is_dir():
            (cache / sub).parent.mkdir(parents=True, exist_ok=True)
            (cache / sub).symlink_to(shared_cache / sub)
    args = ["model=tiny_llama", *TINY, "tracking.mode=disabled"]
    run_mspgt([*args, f"hydra.run.dir={tmp_path / 'a'}"], tmp_path, cache=cache)
    (entry,) = (cache / "stats").iterdir()
    before = {p.name: p.stat().st_mtime_ns for p in entry.glob("chunk_*")}
    assert before
    proc = run_mspgt([*args, "extraction.cache=false", f"hydra.run.dir={tmp_path / 'b'}"], tmp_path, cache=cache)
    assert "extraction.cache=false: recomputing in" in proc.stdout
    assert {p.name: p.stat().st_mtime_ns for p in entry.glob("chunk_*")} == before  # untouched
    assert not any((cache / "recompute").iterdir()) if (cache / "recompute").exists() else True
    a, b = read_results(tmp_path / "a"), read_results(tmp_path / "b")
    assert a["boundaries"] == b["boundaries"] and a["signals"] == b["signals"]
    assert "extract_s" in b["timings"]  # it did recompute


@pytest.mark.parametrize("cached", ["true", "false"])
def test_a_chunk_deleted_while_the_builder_runs_is_named_and_only_it_is_recomputed(cached, tmp_path, shared_cache,
                                                                                   monkeypatch):
    """Something else deletes a finished chunk while the run builds the entry (a cleanup script, a colleague):
    the run says which chunk disappeared and that the same command recomputes only it (the message was 'check
    the disk'); the same command then does exactly that, the other chunks untouched. With extraction.cache=false
    (a scratch entry) the message names that one chunk too, not every chunk of the removed scratch entry."""
    from mspgt.extraction.cache import StatisticsCache

    cache = tmp_path / "cache"
    for sub in ("tokenizers", "models"):  # the tokenizer parsed once per session, not again here
        if (shared_cache / sub).is_dir():
            cache.mkdir(exist_ok=True)
            (cache / sub).symlink_to(shared_cache / sub)
    save_chunk = StatisticsCache.save_chunk

    def save_and_delete_the_first(self: StatisticsCache, i: int, arrays: dict) -> None:
        save_chunk(self, i, arrays)
        if i == 2:  # the builder is at its third chunk: the first one goes (its checksum file stays)
            self.chunk_path(0).unlink()

    args = ["model=tiny_llama", *TINY, "tracking.mode=disabled", f"extraction.cache={cached}"]
    with monkeypatch.context() as patch:
        patch.setattr(StatisticsCache, "save_chunk", save_and_delete_the_first)
        proc = run_mspgt([*args, f"hydra.run.dir={tmp_path / 'a'}"], tmp_path, cache=cache, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-3000:]
    assert "1 chunk(s)" in text and "(chunk_00000.npz)" in text, text[-3000:]
    assert "disappeared while this run built it" in text and "run the same command again" in text, text[-3000:]
    assert "check the disk" not in text and "Traceback" not in text, text[-3000:]
    assert not (tmp_path / "a" / "results.json").exists()
    if cached == "false":
        return
    assert "only the missing chunks are recomputed" in text, text[-3000:]
    (entry,) = (cache / "stats").iterdir()
    kept = {p.name: p.stat().st_mtime_ns for p in entry.glob("chunk_*.npz")}
    assert "chunk_00000.npz" not in kept and len(kept) >= 2
    run_mspgt([*args, f"hydra.run.dir={tmp_path / 'b'}"], tmp_path, cache=cache)
    assert (entry / "chunk_00000.npz").exists()
    assert {name: (entry / name).stat().st_mtime_ns for name in kept} == kept  # only the missing chunk rebuilt
    assert (tmp_path / "b" / "results.json").exists()
