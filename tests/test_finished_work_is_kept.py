"""extraction.cache=false recomputes the statistics without reading the cache and without destroying it: the
finished entry's chunks stay as they were (a run stopped part-way loses nothing), the recomputation lives in
a scratch entry that is gone afterwards, and the results equal the cached run's."""

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
