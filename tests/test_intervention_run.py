"""experiment=intervention end to end: the real entry point on tiny_llama (fast) and SmolLM2 (slow), the
clean baseline, sigma=0, layers from a stored boundary result, and every bad input failing before
generation starts."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import mspgt.experiments.intervention as intervention
from mspgt.errors import MspgtError
from mspgt.model.identity import model_identity
from mspgt.model.loading import load_model
from mspgt.reports.store import boundary_path, data_key, save_boundary
from mspgt.results import BoundaryResult
from tests.conftest import TINY as BOUNDARY_TINY
from tests.conftest import run_cli, run_mspgt

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Small, fast settings. temperature 0.005 makes the tiny random model (flat logits) sample almost greedily,
# so its clean samples of a prompt agree and noise visibly breaks that agreement.
TINY = [
    "model=tiny_llama",
    "data.n_sentences=120",
    "bootstrap.group_size=4",
    "generation.n_prompts=6",
    "generation.samples_per_prompt=3",
    "generation.prompt_words=8",
    "generation.max_new_tokens=10",
    "generation.temperature=0.005",
    "experiment.activation_std.n_sentences=24",
    "tracking.mode=disabled",
]


@pytest.fixture()
def cache_dir(shared_cache) -> str:
    return str(shared_cache)


def make_cfg(tmp_path: Path, cache_dir: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(
            "config",
            overrides=[
                "experiment=intervention",
                *TINY,
                f"paths.outputs={tmp_path}/outputs",
                f"paths.cache_dir={cache_dir}",
                *overrides,
            ],
        )


def store_boundary(
    cfg: DictConfig, cache_dir: str, l_i: int | None, i_g: int | None, **model_changes
) -> None:
    """Write a boundary result the way the boundary experiment stores it."""
    loaded = load_model(cfg.model, cache_dir, need_attentions=False)
    model = {
        "name": loaded.name,
        "family": loaded.family,
        "n_blocks": loaded.n_blocks,
        "weights_id": loaded.weights_id,
        **model_changes,
    }
    scales = None
    if l_i is not None and i_g is not None:
        scales = {
            "local": list(range(1, l_i)),
            "intermediate": list(range(l_i, i_g)),
            "global": list(range(i_g, loaded.n_blocks + 1)),
        }
    result = BoundaryResult.from_json({
        "experiment": "boundary",
        "model": model,
        "data": {"key": data_key(cfg.data)},
        "boundaries": {"L-I": {"layer": l_i, "accepted": True}, "I-G": {"layer": i_g, "accepted": True}},
        "scales": scales,
        "activation_std_all_tokens": [1.0] * (loaded.n_blocks + 1),
    })
    save_boundary(cfg.paths.store_dir, cfg.model.name, cfg.data, result)


@pytest.fixture()
def no_generation(monkeypatch):
    """Bad input must fail before generation starts: generating fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("generation started despite bad input")

    monkeypatch.setattr(intervention, "sample_continuations", forbidden)


def read_result(out: Path) -> dict:
    return json.loads((out / "intervention.json").read_text())


# -- runs -----------------------------------------------------------------------------------------------


def test_sigma_zero_gives_identical_samples_and_zero_change(tmp_path, cache_dir):
    cfg = make_cfg(tmp_path, cache_dir, "scale=global", "scale.layers=[1,6]", "sigma=0")
    out = tmp_path / "run"
    summary = intervention.run_intervention(cfg, out)
    result = read_result(out)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(row["clean"] == row["noised"] for row in samples)
    for name, c in result["metrics"].items():
        assert c["relative_change_pct"] == 0.0, name
        assert (c["t"], c["p"]) == (0.0, 1.0)
    assert summary["brittleness"] == 0.0
    assert result["scale"]["blocks"] == [1, 2, 3, 4, 5, 6]
    assert all(v == 0.0 for v in result["noise"]["realised_std"].values())


def test_clean_baseline_replays_identically(tmp_path, cache_dir):
    cfg = make_cfg(tmp_path, cache_dir, "scale=none")
    out = tmp_path / "run"
    intervention.run_intervention(cfg, out)
    result = read_result(out)
    assert result["pairing"]["replay_identical"] is True
    assert result["sigma"] is None and result["scale"]["blocks"] == []
    assert all(c["relative_change_pct"] == 0.0 for c in result["metrics"].values())
    assert result["brittleness"]["value"] == 0.0
    assert (out / "intervention_table.md").exists() and (out / "intervention.png").stat().st_size > 0


def test_real_entry_point_tiny_llama_noise_changes_metrics(tmp_path, cache_dir):
    """`python -m mspgt.run experiment=intervention` with layers from a stored boundary result."""
    cfg = make_cfg(tmp_path, cache_dir)
    store_boundary(cfg, cache_dir, l_i=3, i_g=5)  # local 1-2, intermediate 3-4, global 5-6
    run_dir = tmp_path / "job"
    run_mspgt(
        [
            "experiment=intervention",
            *TINY,
            "tracking.mode=offline",
            "scale=local",
            "sigma=20",
            f"paths.outputs={tmp_path}/outputs",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
        cache=Path(cache_dir),
        env_extra={"OMP_NUM_THREADS": "1"},
    )
    result = read_result(run_dir)
    assert result["scale"]["blocks"] == [1, 2] and result["scale"]["source"] == "stored boundary result"
    assert result["grammar"]["backend"] == "harper"
    bleu = result["metrics"]["self_bleu"]
    assert bleu["relative_change_pct"] < -20 and bleu["p"] < 0.05  # noise breaks the near-greedy agreement
    for c in result["metrics"].values():
        assert {"t", "p", "cohens_dz", "relative_change_pct", "clean_mean", "noised_mean"} <= set(c)
    for layer, requested in result["noise"]["requested_std"].items():
        assert result["noise"]["realised_std"][layer] == pytest.approx(requested, rel=0.05)
    table = (run_dir / "intervention_table.md").read_text()
    assert "Self-BLEU" in table and "Brittleness" in table and "our definition" in table
    assert (run_dir / "wandb").exists()
    # the per-prompt scores reproduce the recorded means; the brittleness null is recorded beside the value
    per_prompt, britt = result["per_prompt"], result["brittleness"]
    assert per_prompt["n_prompts"] == 6
    for m, c in result["metrics"].items():
        clean = [v for v, x in zip(per_prompt["clean"][m], per_prompt["noised"][m], strict=True)
                 if v is not None and x is not None]
        assert c["clean_mean"] == pytest.approx(sum(clean) / len(clean), rel=1e-12)
    assert britt["null"]["observed"] == pytest.approx(britt["value"], rel=1e-12)
    assert britt["null"]["n_permutations"] == 2000 and 0 < britt["null"]["p"] <= 1
    # rescore (a run made before these fields existed): the same scores again, the same null, or a clear error
    from mspgt.interventions.rescore import main as rescore

    stripped = {k: v for k, v in result.items() if k != "per_prompt"}
    stripped["brittleness"] = {k: v for k, v in britt.items() if k != "null"}
    (run_dir / "intervention.json").write_text(json.dumps(stripped))
    rescore([str(tmp_path / "job")])
    again = read_result(run_dir)
    assert again["per_prompt"] == per_prompt and again["brittleness"]["null"] == britt["null"]
    samples = (run_dir / "samples.jsonl").read_text().splitlines()
    first = json.loads(samples[0])
    first["noised"] = ["an altered sample."] * len(first["noised"])
    (run_dir / "samples.jsonl").write_text("\n".join([json.dumps(first), *samples[1:]]) + "\n")
    before = (run_dir / "intervention.json").read_text()
    with pytest.raises(SystemExit, match="do not score as the run recorded"):
        rescore(["--force", str(run_dir)])
    assert (run_dir / "intervention.json").read_text() == before  # nothing written


def test_run_boundary_first_stores_a_result_and_uses_it(tmp_path, cache_dir):
    """experiment.run_boundary_first=true: no stored result, so the boundary experiment runs first."""
    run_dir = tmp_path / "job"
    args = [
        "experiment=intervention",
        "experiment.run_boundary_first=true",
        *TINY,
        *BOUNDARY_TINY,
        "fusion.prominence=0.01",  # random weights: a low threshold so that two peaks exist
        "scale=intermediate",
        "sigma=1",
        f"paths.outputs={tmp_path}/outputs",
        f"hydra.run.dir={run_dir}",
    ]
    proc = run_mspgt(args, tmp_path, cache=Path(cache_dir), check=False, env_extra={"OMP_NUM_THREADS": "1"})
    cfg = make_cfg(tmp_path, cache_dir, *BOUNDARY_TINY)
    stored = boundary_path(cfg.paths.store_dir, "tiny_llama", model_identity(cfg.model, cfg.paths.cache_dir), cfg.data)
    assert stored.exists(), proc.stderr[-4000:]
    assert (run_dir / "boundary" / "results.json").exists()
    boundary = json.loads(stored.read_text())
    assert boundary["found_two_peaks"] and boundary["scales"]["intermediate"], boundary["peaks"]
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert read_result(run_dir)["scale"]["blocks"] == boundary["scales"]["intermediate"]


@pytest.mark.slow
def test_real_entry_point_smollm2_noise_changes_metrics(tmp_path, cache_dir):
    """SmolLM2-135M through the real entry point: strong noise in blocks 1-10 against the clean run."""
    run_dir = tmp_path / "job"
    run_mspgt(
        [
            "experiment=intervention",
            "model=smollm2",
            "scale=local",
            "scale.layers=[1,10]",
            "sigma=4",
            "data.n_sentences=200",
            "generation.n_prompts=10",
            "generation.samples_per_prompt=3",
            "generation.max_new_tokens=20",
            "generation.batch_size=30",
            "experiment.activation_std.n_sentences=32",
            "tracking.mode=disabled",
            f"paths.outputs={tmp_path}/outputs",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
        cache=Path(cache_dir),
    )
    result = read_result(run_dir)
    assert result["model"]["n_blocks"] == 30 and result["scale"]["blocks"] == list(range(1, 11))
    grammar = result["metrics"]["grammar_errors"]
    assert grammar["relative_change_pct"] > 20 and grammar["p"] < 0.05  # noised text is full of errors
    coherence = result["metrics"]["coherence"]
    assert coherence["relative_change_pct"] < -10 and coherence["p"] < 0.05
    assert result["brittleness"]["value"] > 10


# -- bad input: clear errors before generation ----------------------------------------------------------


def test_negative_sigma(tmp_path, cache_dir, no_generation):
    cfg = make_cfg(tmp_path, cache_dir, "scale=local", "scale.layers=[1,2]", "sigma=-0.5")
    with pytest.raises(MspgtError, match="sigma") as err:
        intervention.run_intervention(cfg, tmp_path / "run")
    assert "sigma >= 0" in err.value.fix


def test_unknown_scale(tmp_path, cache_dir, no_generation):
    cfg = make_cfg(tmp_path, cache_dir, "scale=local", "scale.name=middle")
    with pytest.raises(MspgtError, match="unknown scale 'middle'"):
        intervention.run_intervention(cfg, tmp_path / "run")


def test_no_stored_boundary_names_the_command(tmp_path, cache_dir, no_generation):
    cfg = make_cfg(tmp_path, cache_dir, "scale=intermediate")
    with pytest.raises(MspgtError, match="no stored boundary result") as err:
        intervention.run_intervention(cfg, tmp_path / "run")
    assert "python -m mspgt.run experiment=boundary model=tiny_llama" in err.value.fix
    assert "experiment.run_boundary_first=true" in err.value.fix


def test_scale_with_no_layers_under_the_stored_boundaries(tmp_path, cache_dir, no_generation):
    cfg = make_cfg(tmp_path, cache_dir, "scale=local")
    store_boundary(cfg, cache_dir, l_i=1, i_g=4)  # L-I at block 1: Local is empty
    with pytest.raises(MspgtError, match="no layers") as err:
        intervention.run_intervention(cfg, tmp_path / "run")
    assert "scale.layers" in err.value.fix


def test_boundary_result_with_fewer_than_two_peaks(tmp_path, cache_dir, no_generation):
    cfg = make_cfg(tmp_path, cache_dir, "scale=global")
    store_boundary(cfg, cache_dir, l_i=None, i_g=None)
    with pytest.raises(MspgtError, match="fewer than two peaks"):
        intervention.run_intervention(cfg, tmp_path / "run")


def test_boundary_result_from_other_weights(tmp_path, cache_dir, no_generation):
    cfg = make_cfg(tmp_path, cache_dir, "scale=global")
    store_boundary(cfg, cache_dir, l_i=3, i_g=5, weights_id="tiny-llama-seed7")  # stored under those weights
    with pytest.raises(MspgtError, match="no stored boundary result .* with these weights") as err:
        intervention.run_intervention(cfg, tmp_path / "run")
    assert "experiment=boundary model=tiny_llama" in err.value.fix
    store_boundary(cfg, cache_dir, l_i=3, i_g=5)  # a file at this model's path that names other weights
    path = boundary_path(cfg.paths.store_dir, "tiny_llama", model_identity(cfg.model, cfg.paths.cache_dir), cfg.data)
    result = json.loads(path.read_text())
    result["model"]["weights_id"] = "tiny-llama-seed7"
    path.write_text(json.dumps(result))
    with pytest.raises(MspgtError, match="another model"):
        intervention.run_intervention(cfg, tmp_path / "run")


def test_boundary_result_from_another_corpus(tmp_path, cache_dir, no_generation):
    cfg = make_cfg(tmp_path, cache_dir, "scale=global")
    store_boundary(cfg, cache_dir, l_i=3, i_g=5)
    path = next(Path(cfg.paths.store_dir).rglob("*.json"))
    result = json.loads(path.read_text())
    result["data"]["key"] = "bbc-00000000"
    path.write_text(json.dumps(result))
    with pytest.raises(MspgtError, match="another model, corpus or control"):
        intervention.run_intervention(cfg, tmp_path / "run")


def test_explicit_layers_outside_the_model(tmp_path, cache_dir, no_generation):
    cfg = make_cfg(tmp_path, cache_dir, "scale=global", "scale.layers=[5,9]")
    with pytest.raises(MspgtError, match="outside 1..6"):
        intervention.run_intervention(cfg, tmp_path / "run")


def test_languagetool_server_that_does_not_answer(tmp_path, cache_dir, no_generation):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = make_cfg(
        tmp_path,
        cache_dir,
        "scale=none",
        "metrics.grammar.backend=languagetool",
        f"metrics.grammar.languagetool_url=http://127.0.0.1:{port}",
    )
    with pytest.raises(MspgtError, match="does not answer") as err:
        intervention.run_intervention(cfg, tmp_path / "run")
    assert "metrics.grammar.backend=harper" in err.value.fix


def test_unknown_brittleness_metric(tmp_path, cache_dir, no_generation):
    cfg = make_cfg(tmp_path, cache_dir, "scale=none", "metrics.brittleness.metrics=[self_bleu,fluency]")
    with pytest.raises(MspgtError, match="fluency"):
        intervention.run_intervention(cfg, tmp_path / "run")


def test_report_gathers_a_sweep(tmp_path, cache_dir):
    """The sweep gatherer makes one Table 2 from several runs' intervention.json."""
    from mspgt.reports.intervention_report import main

    for scale in ("none", "local"):
        extra = ["scale.layers=[1,2]", "sigma=0"] if scale == "local" else []
        cfg = make_cfg(tmp_path, cache_dir, f"scale={scale}", "generation.n_prompts=2", *extra)
        intervention.run_intervention(cfg, tmp_path / "sweep" / scale)
    main([str(tmp_path / "sweep")])
    table = (tmp_path / "sweep" / "intervention_summary.md").read_text()
    assert table.count("| tiny_llama |") == 2 and "local (1-2)" in table


@pytest.mark.slow  # processes of their own (a sweep, signals, a mount): CI runs it
def test_multirun_sweep_over_scales_and_sigmas_writes_one_table(tmp_path, cache_dir):
    """`python -m mspgt.run -m experiment=intervention ... sigma=a,b`: one job per setting, each in its own
    folder, and the sweep ends with one Table 2 over all of them (written by the sweep callback)."""
    sweep = tmp_path / "sweep"
    run_cli(
        ["-m", "experiment=intervention", *TINY, "scale=local,global", "scale.layers=[1,3]", "sigma=0,2",
         f"paths.outputs={tmp_path}/outputs", f"hydra.sweep.dir={sweep}"],
        tmp_path, cache=Path(cache_dir), env_extra={"OMP_NUM_THREADS": "1"},
    )
    jobs = sorted(p.parent for p in sweep.glob("*/intervention.json"))
    assert len(jobs) == 4
    sigmas = sorted(read_result(j)["sigma"] for j in jobs)
    assert sigmas == [0, 0, 2, 2]
    table = (sweep / "intervention_summary.md").read_text()
    assert table.count("| tiny_llama |") == 4 and (sweep / "intervention_summary.png").exists()


def test_the_clean_condition_is_made_once_and_reused_by_every_scale_and_sigma(tmp_path, cache_dir):
    """A study's jobs share one clean condition (mspgt/interventions/clean_condition.py): the second sigma reads
    it from the cache, and its result is exactly the one a run that samples the clean condition afresh gives."""
    def run(name: str, *overrides: str) -> dict:
        cfg = make_cfg(tmp_path, cache_dir, "scale=local", "scale.layers=[1,2]",
                       f"paths.cache_dir={tmp_path}/cache-{name.split('-')[0]}", *overrides)
        intervention.run_intervention(cfg, tmp_path / name)
        return json.loads((tmp_path / name / "intervention.json").read_text())

    first = run("shared-sigma1", "sigma=1.0")
    second = run("shared-sigma05", "sigma=0.5")
    fresh = run("fresh-sigma05", "sigma=0.5", "generation.reuse_clean=false")
    assert first["timing"]["clean_reused"] == 0 and second["timing"]["clean_reused"] == 1
    assert fresh["timing"]["clean_reused"] == 0
    assert not (tmp_path / "cache-fresh" / "clean_conditions").exists()  # reuse_clean=false stores nothing
    assert len(list((tmp_path / "cache-shared" / "clean_conditions").glob("*.json"))) == 1
    for m in second["metrics"]:
        for k in ("clean_mean", "noised_mean", "t", "p", "n"):
            assert second["metrics"][m][k] == fresh["metrics"][m][k] or (
                second["metrics"][m][k] != second["metrics"][m][k] and fresh["metrics"][m][k] != fresh["metrics"][m][k])
    assert second["brittleness"]["value"] == fresh["brittleness"]["value"]
    # another generation setting is another clean condition
    run("shared-tokens", "sigma=0.5", "generation.max_new_tokens=6")
    assert len(list((tmp_path / "cache-shared" / "clean_conditions").glob("*.json"))) == 2
    assert second["power"]["n_prompts"] == 6 and 1.0 < second["power"]["detectable_dz"] < 2.0
