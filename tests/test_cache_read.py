"""Reading the statistics cache back: every member bit-identical to what was written, the probe sample read
straight into its place in the assembled arrays, and a chunk that does not fit is dropped, never used."""

from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mspgt.extraction.cache import StatisticsCache


def _members() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "train_feat": rng.standard_normal((7, 3, 5)).astype(np.float16),
        "hsic_raw": rng.standard_normal((2, 4, 4)),
        "fortran": np.asfortranarray(rng.standard_normal((3, 4)).astype(np.float32)),
        "flags": rng.random(9) > 0.5,
        "count": np.array(41),
        "empty": np.zeros((0, 3, 5), np.float16),
        "labels": rng.integers(-1, 17, 11).astype(np.int64),
    }


def test_a_chunk_reads_back_bitwise_whatever_its_members(tmp_path: Path) -> None:
    cache = StatisticsCache(tmp_path, {"test": "read"})
    written = _members()
    cache.save_chunk(0, written)
    read = cache.load_chunk(0)
    assert read is not None and set(read) == set(written)
    with np.load(cache.chunk_path(0), allow_pickle=False) as reference:
        for name, value in written.items():
            for got in (read[name], reference[name]):
                assert got.dtype == value.dtype and got.shape == value.shape, name
                assert got.tobytes() == value.tobytes(), name
    assert read["fortran"].flags.f_contiguous  # the layout it was written in


def test_named_members_go_straight_into_their_destination(tmp_path: Path) -> None:
    cache = StatisticsCache(tmp_path, {"test": "into"})
    written = _members()
    cache.save_chunk(0, written)
    assembled = np.full((12, 3, 5), np.float16(-7.0))  # the chunk's 7 rows go to rows 2..8
    read = cache.load_chunk(0, into={"train_feat": assembled[2:9], "empty": assembled[9:9]})
    assert read is not None
    assert np.shares_memory(read["train_feat"], assembled)
    assert assembled[2:9].tobytes() == written["train_feat"].tobytes()
    assert (assembled[:2] == -7).all() and (assembled[9:] == -7).all()  # nothing written outside its rows
    assert read["hsic_raw"].tobytes() == written["hsic_raw"].tobytes()


def test_a_member_unlike_its_destination_drops_the_chunk(tmp_path: Path) -> None:
    cache = StatisticsCache(tmp_path, {"test": "unlike"})
    cache.save_chunk(0, _members())
    for wrong in (np.empty((7, 3, 4), np.float16), np.empty((7, 3, 5), np.float32), np.empty((6, 3, 5), np.float16)):
        cache.save_chunk(0, _members())
        assert cache.load_chunk(0, into={"train_feat": wrong}) is None
        assert not cache.chunk_path(0).exists() and not cache.chunk_path(0).with_suffix(".sha256").exists()


def test_assembled_statistics_equal_the_chunks_concatenated(tmp_path: Path, shared_cache: Path) -> None:
    """load_statistics (features read into place) against every chunk read by numpy and concatenated; then a
    chunk whose features have another width, or more rows than it has words (each with a valid checksum), is
    dropped (and rebuilt), the others kept."""
    from mspgt.extraction import extract
    from mspgt.extraction.assemble import load_statistics
    from tests.test_probe_sample import tiny_chunked_pass

    cfg, loaded, corpus = tiny_chunked_pass(shared_cache, 40)  # 10 groups: 5 chunks
    cache = StatisticsCache(tmp_path, {"test": "assemble"})
    extract.build_statistics(loaded, corpus, cache, cfg)
    stats = load_statistics(cache)
    assert stats is not None

    def numpy_read(i: int) -> dict[str, np.ndarray]:
        with np.load(cache.chunk_path(i), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    chunks = [numpy_read(i) for i in range(5)]

    def cat(key: str) -> np.ndarray:
        return np.concatenate([c[key] for c in chunks])

    sizes = {len(c["train_feat"]) for c in chunks}
    assert len(sizes) > 1 and min(sizes) > 0  # chunks of different sizes, each in its own rows
    for name, sample in (("train", stats.probe_train), ("eval", stats.probe_eval)):
        assert sample.features.dtype == np.float16 and sample.features.flags.c_contiguous
        assert sample.features.tobytes() == cat(f"{name}_feat").tobytes()
        np.testing.assert_array_equal(sample.labels["pos"], cat(f"{name}_lab_pos"))
        np.testing.assert_array_equal(sample.group, cat(f"{name}_group"))
    for v, hsic in stats.hsic.items():
        assert hsic.tobytes() == cat(f"hsic_{v}").tobytes()

    narrow = dict(chunks[3], train_feat=chunks[3]["train_feat"][:, :, :-1])  # another width, a valid digest
    cache.save_chunk(3, narrow)
    assert load_statistics(cache) is None
    assert not cache.chunk_path(3).exists() and all(cache.chunk_path(i).exists() for i in (0, 1, 2, 4))
    extract.build_statistics(loaded, corpus, cache, cfg)  # rebuilds chunk 3 only
    again = load_statistics(cache)
    assert again is not None and again.probe_train.features.tobytes() == stats.probe_train.features.tobytes()

    longer = dict(chunks[1], train_feat=np.concatenate([chunks[1]["train_feat"], chunks[1]["train_feat"][:1]]))
    cache.save_chunk(1, longer)  # one feature row more than the chunk has words: its headers disagree
    assert load_statistics(cache) is None
    assert not cache.chunk_path(1).exists() and all(cache.chunk_path(i).exists() for i in (0, 2, 3, 4))


def _set_rows(path: Path, member: str, rows: int) -> None:
    """Rewrite the row count in the .npy header of `member` of the .npz at `path`, as a flipped bit could:
    the same header length, the data and the zip's checksums untouched."""
    with zipfile.ZipFile(path) as z:
        local = z.getinfo(f"{member}.npy").header_offset  # local file header: 30 bytes, name, extra field
    data = bytearray(path.read_bytes())
    start = local + 30 + int.from_bytes(data[local + 26 : local + 28], "little") + int.from_bytes(
        data[local + 28 : local + 30], "little")  # the .npy stream
    assert data[start : start + 8] == b"\x93NUMPY\x01\x00"  # format 1.0: magic, version, header length
    size = int.from_bytes(data[start + 8 : start + 10], "little")
    header = bytes(data[start + 10 : start + 10 + size]).decode("latin1")
    flipped = re.sub(r"'shape': \((\d+),", f"'shape': ({rows},", header)
    flipped = flipped.rstrip().ljust(size - 1) + "\n"  # the padding gives way
    assert flipped != header and len(flipped) == size
    data[start + 10 : start + 10 + size] = flipped.encode("latin1")
    path.write_bytes(bytes(data))


def test_a_flipped_row_count_drops_the_chunk_before_anything_is_allocated(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The assembled arrays are sized from the chunks' headers, before their checksums are checked: a header
    claiming 10^12 words (in a member too large for the zip's CRC to be reached by reading the header) is
    caught by the headers disagreeing, not by an allocation of petabytes."""
    from mspgt.extraction.assemble import _feature_rows

    cache = StatisticsCache(tmp_path, {"test": "flip"})
    words = {"train": 700, "eval": 300}  # int64 groups: 5.6 and 2.4 kB, past the zip reader's 4 kB first read
    chunk = {}
    for split, n in words.items():
        chunk[f"{split}_feat"] = np.zeros((n, 3, 4), np.float16)
        chunk[f"{split}_group"] = np.arange(n, dtype=np.int64)
    cache.save_chunk(0, chunk)
    assert _feature_rows(cache, 0, (3, 4)) == {"train": 700, "eval": 300}
    assert _feature_rows(cache, 0, (3, 5)) is None and not cache.chunk_path(0).exists()  # another width
    cache.save_chunk(0, chunk)
    _set_rows(cache.chunk_path(0), "train_group", 10**12)
    with caplog.at_level(logging.WARNING, logger="mspgt.extraction.cache"):
        assert _feature_rows(cache, 0, (3, 4)) is None
    assert "beside [1000000000000] words" in caplog.text
    assert not cache.chunk_path(0).exists() and not cache.chunk_path(0).with_suffix(".sha256").exists()


def test_chunks_swapped_with_their_checksums_are_dropped_not_used(tmp_path: Path, shared_cache: Path) -> None:
    """Two chunks exchanged together with their .sha256 files pass the checksums; the group range each holds
    does not match its place, so both are dropped and rebuilt (also for chunks written before the range was
    stored: their probe words' group numbers say it), and the statistics equal the original ones."""
    from mspgt.extraction import extract
    from mspgt.extraction.assemble import load_statistics
    from tests.test_probe_sample import tiny_chunked_pass

    cfg, loaded, corpus = tiny_chunked_pass(shared_cache, 40)  # 10 groups: 5 chunks of 2
    cache = StatisticsCache(tmp_path, {"test": "swap"})
    extract.build_statistics(loaded, corpus, cache, cfg)
    stats = load_statistics(cache)
    assert stats is not None

    def swap(i: int, j: int) -> None:
        for suffix in (".npz", ".sha256"):
            a, b = cache.chunk_path(i).with_suffix(suffix), cache.chunk_path(j).with_suffix(suffix)
            tmp = a.with_name("swap")
            a.rename(tmp)
            b.rename(a)
            tmp.rename(b)

    swap(1, 2)
    assert load_statistics(cache) is None
    assert not cache.chunk_path(1).exists()
    extract.build_statistics(loaded, corpus, cache, cfg)  # the resume check drops chunk 2 too, then rebuilds
    again = load_statistics(cache)
    assert again is not None and again.probe_train.features.tobytes() == stats.probe_train.features.tobytes()
    np.testing.assert_array_equal(again.probe_train.group, stats.probe_train.group)

    for i in (3, 4):  # chunks as written before group_range existed, then swapped
        with np.load(cache.chunk_path(i), allow_pickle=False) as z:
            old = {k: z[k] for k in z.files if k != "group_range"}
        cache.save_chunk(i, old)
    swap(3, 4)
    assert load_statistics(cache) is None
    assert not cache.chunk_path(3).exists()
