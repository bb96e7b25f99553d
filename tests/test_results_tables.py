"""`python -m mspgt.reports.tables` over real run folders: every cell it prints is the value in the run's result
file, the command and machine that made the run head each table, and LaTeX comes out with booktabs rules."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mspgt.reports.tables import MARKER, fmt, main

REPO = Path(__file__).resolve().parents[1]
# three real command-line runs (the provenance the tables print is the command as typed): ~1 min, so in CI's
# second half with the other command-line cases
pytestmark = pytest.mark.slow


def _run(args: list[str], tmp: Path) -> float:
    """`python -m mspgt.run ARGS` as typed, outputs and caches under `tmp`; returns its wall time in seconds."""
    env = dict(os.environ, MSPGT_CACHE_DIR=str(tmp / "cache"), WANDB_MODE="offline", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", WANDB_SILENT="true")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mspgt.run", *args], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return time.perf_counter() - t


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """debug=fast runs of the tiny model as typed on the command line: a boundary run, the same re-fused with
    other weights (from the cache, seconds), and a Fisher run."""
    tmp = tmp_path_factory.mktemp("tables")
    folders = {"boundary": tmp / "boundary", "cka_only": tmp / "variants" / "cka_only", "fisher": tmp / "fisher"}
    _run(["debug=fast", f"hydra.run.dir={folders['boundary']}"], tmp)
    _run(["debug=fast", "weights=cka_only", f"hydra.run.dir={folders['cka_only']}"], tmp)
    _run(["experiment=fisher", "debug=fast", f"hydra.run.dir={folders['fisher']}"], tmp)
    return folders


def _tables(text: str) -> dict[str, list[dict[str, str]]]:
    """The markdown tables of the command's output, by heading: a list of rows, each column -> cell."""
    out: dict[str, list[dict[str, str]]] = {}
    for block in text.split("### ")[1:]:
        title, *lines = block.splitlines()
        rows = [ln for ln in lines if ln.startswith("|")]
        split = [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in rows]
        header, body = split[0], split[2:]
        out[title] = [dict(zip(header, row, strict=True)) for row in body]
    return out


def _render(tmp_path: Path, *args: str) -> str:
    out = tmp_path / "tables.txt"
    main([*args, "--out", str(out)])
    return out.read_text()


def test_boundary_table_rows_are_the_results_json_values(runs, tmp_path):
    record = json.loads((runs["boundary"] / "results.json").read_text())
    text = _render(tmp_path, str(runs["boundary"]))
    (rows,) = [t for title, t in _tables(text).items() if title.startswith("Boundaries (")]
    assert [r["boundary"] for r in rows] == list(record["boundaries"])
    for row in rows:
        b = record["boundaries"][row["boundary"]]
        assert row["model"] == "tiny_llama" and row["blocks"] == str(record["model"]["n_blocks"]) == "6"
        assert row["block"] == fmt(b["layer"])
        assert row["95% CI"] == ("n/a" if b["ci_low"] is None else f"[{b['ci_low']}, {b['ci_high']}]")
        assert row["accepted"] == ("yes" if b["accepted"] else "no")
        assert row["missing / undefined / relabelled"] == f"{b['n_missing']} / {b['n_undefined']} / {b['n_relabelled']}"
        if b["layer"] is not None:
            assert row["relative"] == f"{b['layer'] / 6:.1%}"
    # headed by the command as typed, the run's folder, and the machine recorded in results.json
    assert f"`python -m mspgt.run debug=fast hydra.run.dir={runs['boundary']}`" in text
    assert record["machine"]["cpu"] in text and record["machine"]["date"] in text


def test_variant_table_has_a_row_per_run_of_one_model_labelled_by_what_differs(runs, tmp_path):
    tables = _tables(_render(tmp_path, str(runs["boundary"]), str(runs["cka_only"])))
    rows = tables["Boundaries per variant (runs of one model and corpus)"]
    assert [r["variant"] for r in rows] == ["(defaults)", "weights=cka_only"]  # debug=fast shared, hydra.* not shown
    for row, folder in zip(rows, (runs["boundary"], runs["cka_only"]), strict=True):
        b = json.loads((folder / "results.json").read_text())["boundaries"]["L-I"]
        ci = "n/a" if b["ci_low"] is None else f"[{b['ci_low']}, {b['ci_high']}]"
        assert row["L-I [95% CI]"] == f"{fmt(b['layer'])} {ci}"
    assert len(tables["Boundaries (experiment=boundary)"]) == 4  # two runs x two boundaries


def test_eq28_table_holds_every_curve_and_boundary_with_their_values(runs, tmp_path):
    record = json.loads((runs["boundary"] / "results.json").read_text())
    tests = record["information"]["eq28"]["tests"]
    rows = _tables(_render(tmp_path, str(runs["boundary"])))["Information curves: the eq. 28 test"]
    expected = [(c, n, b) for c, t in tests.items() for n, b in t["boundaries"].items()]
    assert [(r["curve"], r["boundary"]) for r in rows] == [(c, n) for c, n, _ in expected]
    for row, (_, _, b) in zip(rows, expected, strict=True):
        for key, value in b.items():
            if not isinstance(value, dict | list):
                assert row[key] == fmt(value), (key, row[key], value)


def test_fisher_table_and_verdicts_come_from_fisher_json(runs, tmp_path):
    record = json.loads((runs["fisher"] / "fisher.json").read_text())
    tables = _tables(_render(tmp_path, str(runs["fisher"].parent)))  # the parent: both runs, found by walking
    rows = tables["Appendix A.5: KL under small noise against the Fisher-trace prediction (experiment=fisher)"]
    assert [r["scale (blocks)"] for r in rows] == ["local (1-2)", "intermediate (3-4)", "global (5-6)"]
    for row, (name, s) in zip(rows, record["scales"].items(), strict=True):
        assert row["slope / predicted"] == fmt(s["fit_kl"]["slope_over_predicted"], ".3f"), name
        assert row["measured / predicted at smallest sigma"] == fmt(s["ratio_at_smallest_sigma"], ".3f")
        assert row["holds"] == ("yes" if s["holds"] else "no")
    verdicts = {r["tier"]: r for r in tables["The paper's predictions over these results (mspgt/reports/robustness.py)"]}
    assert verdicts["A.5"]["verdict"] == record["verdict"]["value"]
    assert "Boundaries (experiment=boundary)" in tables  # the boundary run under the same parent


def test_latex_output_uses_booktabs_and_escapes(runs, tmp_path):
    text = _render(tmp_path, str(runs["boundary"]), "--format", "latex")
    assert text.count("\\begin{tabular}") == text.count("\\bottomrule") == text.count("\\toprule") >= 2
    assert "\\midrule" in text and "|" not in text.replace("\\textbar", "")
    body = text.split("\\midrule", 1)[1].split("\\bottomrule", 1)[0]
    assert body.count("\\\\") == 2  # one row per boundary
    assert "v\\_info" in text and "% made by: python -m mspgt.reports.tables" in text


def test_out_keeps_a_documents_introduction_above_the_marker(runs, tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text(f"# Results\n\nHand-written introduction.\n\n{MARKER}\n\n| stale | table |\n")
    main([str(runs["boundary"]), "--out", str(doc)])
    text = doc.read_text()
    assert text.startswith("# Results\n\nHand-written introduction.\n\n" + MARKER)
    assert "stale" not in text and text.count(MARKER) == 1 and "### Boundaries (experiment=boundary)" in text


def test_compute_table_sums_each_runs_own_wall_time(runs, tmp_path):
    text = _render(tmp_path, *map(str, runs.values()))
    rows = _tables(text)["Compute: the runs' wall times"]
    seconds = {}
    for name, folder in runs.items():
        path = folder / ("fisher.json" if name == "fisher" else "results.json")
        record = json.loads(path.read_text())
        seconds[name] = (record.get("timings") or record.get("timing"))["total_s"]
    by = {(r["experiment"], r["model"]): r for r in rows}
    assert by["boundary", "tiny_llama"]["runs"] == "2"
    assert float(by["boundary", "tiny_llama"]["minutes (sum of the runs)"]) == pytest.approx(
        (seconds["boundary"] + seconds["cka_only"]) / 60, abs=0.051)
    assert by["all", ""]["runs"] == "3"
    assert float(by["all", ""]["minutes (sum of the runs)"]) == pytest.approx(sum(seconds.values()) / 60, abs=0.051)
    assert by["fisher", "tiny_llama"]["machine"].endswith(" CPUs")
    # the re-fused run read the extraction pass from the cache: the table says so (its minutes are not a fresh run's)
    assert by["boundary", "tiny_llama"]["reused from the cache"] == "extraction: 1 of 2"
    assert float(by["boundary", "tiny_llama"]["median minutes of a run without reuse"]) == pytest.approx(
        seconds["boundary"] / 60, abs=0.051)  # the re-fused run is left out
    assert by["fisher", "tiny_llama"]["reused from the cache"] == "none"


def test_intervention_rows_show_the_null_and_a_range_drawn_at_an_unaccepted_boundary(tmp_path):
    """Planted intervention.json files: the brittleness cell carries its null's floor and p where recorded, and
    a scale drawn at a boundary that failed the acceptance rule says so."""
    from mspgt.results import InterventionResult

    def write(name: str, accepted: bool, null: dict | None) -> None:
        record = InterventionResult(
            model={"name": name, "family": "qwen", "n_blocks": 24}, data={"key": "bbc-1"},
            scale={"name": "global", "first_last": [24, 24], "boundary": {"boundaries": {
                "L-I": {"layer": 3, "accepted": True}, "I-G": {"layer": 24, "accepted": accepted}}}},
            sigma=0.5, metrics={"self_bleu": {"relative_change_pct": -12.0, "p": 0.001, "column": "Self-BLEU"}},
            brittleness={"value": 12.0, **({"null": null} if null else {})}, machine={})
        (tmp_path / name).mkdir()
        (tmp_path / name / "intervention.json").write_text(json.dumps(record.to_json()))

    write("m_edge", False, {"floor": 6.62, "p": 0.0005})
    write("m_plain", True, None)
    rows = {r["model"]: r for r in _tables(_render(tmp_path, str(tmp_path)))["Scale interventions (experiment=intervention)"]}
    assert rows["m_edge"]["scale (blocks)"] == "global (24-24) (I-G not accepted)"
    assert rows["m_edge"]["brittleness"] == "12.00% (floor 6.62%, p=0.0005)"
    assert rows["m_plain"]["scale (blocks)"] == "global (24-24)" and rows["m_plain"]["brittleness"] == "12.00%"


def test_controls_table_gives_the_preregistered_verdicts(tmp_path):
    """Planted boundary results of one model under the three controls: the table's verdicts are the controls
    report's (the same rule), one row per real boundary."""
    from tests.test_controls import _result

    runs = {"none": _result("none", 3, 12, (2, 4), (11, 14)),
            "random_init": _result("random_init-seed0", 4, 25, (1, 9), (20, 28)),
            "shuffled_words": _result("shuffled_words-seed0", 13, 20)}
    for name, result in runs.items():
        folder = tmp_path / name
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(f"- model=m\n- control={name}\n")
        (folder / "results.json").write_text(json.dumps(result.to_json()))
    rows = _tables(_render(tmp_path, str(tmp_path)))["Controls: are the boundaries learnt, and do they need word order?"]
    by = {r["boundary"]: r for r in rows}
    assert by["L-I"]["block [95% CI]"] == "3 [2, 4]" and by["L-I"]["random_init reproduces it"] == "yes (random_init-seed0)"
    assert (by["L-I"]["learnt?"], by["L-I"]["word order?"]) == ("architecture", "needs word order")
    assert (by["I-G"]["learnt?"], by["I-G"]["word order?"]) == ("learnt", "survives shuffling")
    assert by["I-G"]["shuffled_words reproduces it"] == "yes (shuffled_words-seed0)"
