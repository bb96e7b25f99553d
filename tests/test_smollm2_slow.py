"""The real pretrained default model (SmolLM2-135M) through the real entry point. Slow (minutes), in CI."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import read_results, run_cli, wandb_run_state

pytestmark = pytest.mark.slow


def test_smollm2_boundary_run(tmp_path, shared_cache):
    out = tmp_path / "run"
    run_cli(["data.n_sentences=240", "probes.epochs=10", "bootstrap.n_resamples=300", "extraction.progress=false",
               f"hydra.run.dir={out}"], tmp_path, cache=shared_cache, timeout=1800)
    res = read_results(out)
    L = res["model"]["n_blocks"]
    assert L == 30 and res["model"]["weights_id"].startswith("b179c952")
    assert res["data"]["n_sentences"] == 240 and res["data"]["n_groups"] == 15  # shuffled groups of 16 (the default)
    sig = {k: np.asarray(v) for k, v in res["signals"].items()}
    # adjacent residual states of a trained model are similar: 0 <= 1 - CKA < 1, and not all zero
    assert np.all(sig["representation_change"] > -1e-6) and np.all(sig["representation_change"] < 1)
    assert sig["representation_change"].max() > 0.05
    # JS divergence is in [0, ln 2]; block 1 replicates block 2 by default (our definition)
    assert np.all(sig["attention_drift"] >= 0) and np.all(sig["attention_drift"] <= np.log(2))
    assert sig["attention_drift"][0] == sig["attention_drift"][1]
    # probes read linguistic information from contextual states better than from the embeddings,
    # and better than a control task (Hewitt & Liang selectivity)
    f = np.asarray(res["probe_f1_by_state"])
    assert f.shape == (L + 1,) and f[1:].max() > f[0]
    assert np.mean(res["probe_selectivity_pos"]) > 0.05
    for name in ("L-I", "I-G"):
        b = res["boundaries"][name]
        assert sum(b["selection_frequency"].values()) + b["n_missing"] + b["n_undefined"] == 300
        if b["layer"] is not None:
            assert 1 <= b["layer"] <= L and b["ci_low"] <= b["ci_high"]
    assert wandb_run_state(out)["summary"]["n_blocks"] == 30
    print("\n" + (out / "summary.md").read_text().split("\n\n| block")[0])
