"""Peaks at block 1 and block L (fusion.edges) and the edge check: planted edge peaks, identities of the
interior rule, and the record a boundary run writes (mspgt/fusion/edge_check.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mspgt.errors import MspgtError
from mspgt.fusion.bootstrap import bootstrap_boundaries
from mspgt.fusion.edge_check import edge_boundaries, edge_check, edge_check_text, interior_candidates
from mspgt.fusion.fuse import minmax_normalise
from mspgt.fusion.peaks import BoundaryPick, detect_boundaries, detect_boundaries_batch, find_evidence_peaks

N_BLOCKS = 20


def _curve(centres: list[int], heights: list[float], width: float = 0.7) -> np.ndarray:
    """Gaussian bumps over blocks 1..L (index l - 1)."""
    layers = np.arange(1, N_BLOCKS + 1)
    return sum(h * np.exp(-0.5 * ((layers - c) / width) ** 2) for c, h in zip(centres, heights, strict=True))


def _group_curves(base: np.ndarray, n_groups: int = 150, noise: float = 0.3, seed: int = 0) -> np.ndarray:
    return base + noise * np.random.default_rng(seed).normal(size=(n_groups, len(base)))  # [G, L]


def _bootstrap_of(curves: np.ndarray, n_resamples: int = 300):
    def evidence_fn(counts: np.ndarray) -> np.ndarray:  # [b, G] -> [b, L]
        return minmax_normalise(counts @ curves / counts.sum(axis=1, keepdims=True))

    def run(point: BoundaryPick, edges: str):
        return bootstrap_boundaries(evidence_fn, len(curves), curves.shape[1], point, n_resamples=n_resamples,
                                    edges=edges)

    return evidence_fn(np.ones((1, len(curves))))[0], run


def test_interior_drops_only_the_edge_candidates_and_keeps_every_prominence() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        e = rng.random(N_BLOCKS)
        blocks, prom = find_evidence_peaks(e, 0.0)
        inner_blocks, inner_prom = find_evidence_peaks(e, 0.0, edges="interior")
        keep = (blocks > 1) & (blocks < N_BLOCKS)
        np.testing.assert_array_equal(inner_blocks, blocks[keep])
        np.testing.assert_array_equal(inner_prom, prom[keep])  # identical, not approximately equal


def test_a_planted_edge_peak_is_found_padded_and_the_interior_pair_behind_it() -> None:
    e = minmax_normalise(_curve([4, 12, 20], [0.9, 0.6, 1.0]))  # L-I 4, I-G 12, and a taller peak at L
    padded = detect_boundaries(e)
    assert (padded.li, padded.ig) == (4, 20)
    inner = detect_boundaries(e, edges="interior")
    assert (inner.li, inner.ig) == (4, 12)
    assert detect_boundaries_batch(e[None], point=(4, 12), edges="interior").ig.tolist() == [12]
    # a curve without edge peaks: both rules agree
    e2 = minmax_normalise(_curve([5, 14], [1.0, 0.8]))
    assert detect_boundaries(e2).peaks == detect_boundaries(e2, edges="interior").peaks == [5, 14]


def test_edges_must_be_one_of_the_choices() -> None:
    with pytest.raises(MspgtError, match="fusion.edges=padded"):
        detect_boundaries(np.zeros(5), edges="both")
    with pytest.raises(MspgtError, match="fusion.edges"):
        detect_boundaries_batch(np.zeros((2, 5)), edges="")


def test_edge_check_finds_the_displaced_interior_boundary() -> None:
    evidence, run = _bootstrap_of(_group_curves(_curve([4, 12, 20], [0.9, 0.6, 1.0])))
    pick = detect_boundaries(evidence)
    assert edge_boundaries(pick, N_BLOCKS) == {"I-G": N_BLOCKS}
    check = edge_check(evidence, pick, 0.3, False, run)
    assert check is not None and check["found_two_peaks"] and list(check["edge_blocks"]) == ["I-G"]
    ig = check["boundaries"]["I-G"]
    assert ig["layer"] == 12 and ig["ci_low"] <= 12 <= ig["ci_high"] and ig["accepted"]
    assert check["boundaries"]["L-I"]["layer"] == 4
    assert check["candidates"]["layers"][:2] == [4, 12]
    text = edge_check_text(check, N_BLOCKS)
    assert "an interior pair" in text and "I-G 12" in text


def test_edge_check_says_when_a_boundary_exists_only_as_an_edge_peak() -> None:
    # one interior bump, a peak at L, and a small interior bump far below the threshold
    evidence, run = _bootstrap_of(_group_curves(_curve([4, 11, 20], [1.0, 0.15, 0.9]), noise=0.05))
    pick = detect_boundaries(evidence)
    assert (pick.li, pick.ig) == (4, 20)
    raw = {"attention_drift": 3.0 * evidence + 1.0, "probe_jump": -evidence}  # what each contributes at L
    check = edge_check(evidence, pick, 0.3, False, run, raw)
    assert check is not None and not check["found_two_peaks"] and check["peaks"]["layers"] == [4]
    assert check["edge_blocks"] == {"I-G": N_BLOCKS}
    at_l = check["normalised_signals_at_edge"]["I-G"]
    assert at_l["attention_drift"] == pytest.approx(minmax_normalise(evidence)[-1])
    assert at_l["probe_jump"] == pytest.approx(1.0 - minmax_normalise(evidence)[-1])
    assert check["boundaries"]["I-G"]["layer"] is None and not check["boundaries"]["I-G"]["accepted"]
    layers, prominences = check["candidates"]["layers"], check["candidates"]["prominences"]
    assert layers[0] == 4 and 11 in layers
    assert prominences == sorted(prominences, reverse=True) and prominences[layers.index(11)] < 0.3
    text = edge_check_text(check, N_BLOCKS)
    assert "only as an edge peak" in text and "I-G at block 20 of 20" in text and "attention_drift" in text
    ig = check["boundaries"]["I-G"]
    assert f"two interior peaks: {ig['n_resamples'] - ig['n_missing'] - ig['n_undefined']} of 300" in text


def test_no_edge_no_check() -> None:
    evidence, run = _bootstrap_of(_group_curves(_curve([5, 14], [1.0, 0.8])))

    def never(point: BoundaryPick, edges: str):
        raise AssertionError("the interior bootstrap must not run without an edge boundary")

    assert edge_check(evidence, detect_boundaries(evidence), 0.3, False, never) is None


def test_candidates_list_every_interior_local_maximum_by_prominence() -> None:
    e = np.array([0.9, 0.1, 0.5, 0.2, 0.8, 0.0, 0.3, 0.25, 1.0])
    c = interior_candidates(e, False)
    assert c["layers"] == [5, 3, 7]  # blocks 1 and 9 are edges
    np.testing.assert_allclose(c["prominences"], [0.7, 0.3, 0.05])  # 5: down to 0.1 before block 1 (0.9)


def test_the_edge_check_reaches_summary_robustness_and_the_tables(tmp_path) -> None:
    """A result whose I-G is a planted edge peak: every report says what the interior detection found."""
    import json

    from mspgt.reports.boundary_report import boundary_markdown
    from mspgt.reports.robustness import write_robustness
    from mspgt.reports.tables import render
    from mspgt.results import BoundaryResult

    evidence, run = _bootstrap_of(_group_curves(_curve([4, 11, 20], [1.0, 0.15, 0.9]), noise=0.05))
    pick = detect_boundaries(evidence)
    check = edge_check(evidence, pick, 0.3, False, run)
    record = BoundaryResult(
        model={"name": "planted", "family": "qwen", "n_blocks": N_BLOCKS},
        data={"name": "bbc", "key": "bbc-1", "n_sentences": 10, "n_groups": 150, "group_size": 1},
        boundaries=run(pick, "padded"), found_two_peaks=True,
        peaks={"layers": pick.peaks, "prominences": pick.prominences}, edge_check=check,
        layers=list(range(1, N_BLOCKS + 1)), signals={"attention_drift": evidence.tolist()},
        evidence=evidence.tolist())
    said = edge_check_text(check, N_BLOCKS)
    assert said in boundary_markdown(record)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(record.to_json()))
    assert BoundaryResult.from_json(json.loads((folder / "results.json").read_text())).edge_check == check
    write_robustness([folder], tmp_path / "out")
    assert f"- planted: {said}" in (tmp_path / "out" / "robustness.md").read_text()
    assert f"planted: {said}" in render([folder])
