"""The typed result records (mspgt/results.py): a round trip keeps every field, an old file (no schema
version) loads, a file of an unknown version is an error naming it, NaN is written as null, and one flat
summary-key scheme."""

from __future__ import annotations

import json
import math

import pytest

from mspgt.errors import MspgtError
from mspgt.files import write_json_atomic
from mspgt.results import (
    SCHEMA_VERSION,
    BoundaryCI,
    BoundaryResult,
    FisherResult,
    InterventionResult,
    summary_key,
)


def _boundary() -> BoundaryResult:
    ci = BoundaryCI(layer=2, relative=2 / 30, ci_low=2, ci_high=3, width=1, accepted=True,
                    selection_frequency={2: 90, 3: 10}, n_resamples=100, n_relabelled=1)
    return BoundaryResult(model={"name": "m", "family": "llama", "n_blocks": 30, "weights_id": "w"},
                          data={"key": "bbc-1"}, boundaries={"L-I": ci, "I-G": BoundaryCI(None, None, None, None,
                                                                                          None, False)},
                          found_two_peaks=False, signals={"representation_change": [0.1, float("nan")]},
                          evidence=[0.0, 1.0], layers=[1, 2])


def test_a_boundary_result_round_trips_through_its_file(tmp_path):
    r = _boundary()
    write_json_atomic(tmp_path / "results.json", r.to_json())
    raw = json.loads((tmp_path / "results.json").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION and raw["experiment"] == "boundary"
    back = BoundaryResult.from_json(raw, "results.json")
    assert back.boundaries["L-I"] == r.boundaries["L-I"]  # selection_frequency keys back to int
    assert back.layer("I-G") is None and back.n_blocks == 30 and back.family == "llama"
    assert back.signals["representation_change"] == [0.1, None]  # NaN policy: null on disk, None read back


def test_nan_and_inf_are_written_as_null_everywhere(tmp_path):
    write_json_atomic(tmp_path / "x.json", {"a": float("nan"), "b": [float("inf"), 1.5], "c": (1, 2)})
    text = (tmp_path / "x.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": [1, 2]}


def test_a_file_without_a_schema_version_loads_as_version_1():
    old = _boundary().to_json()
    del old["schema_version"]
    assert BoundaryResult.from_json(old).schema_version == 1


@pytest.mark.parametrize("cls,experiment", [(BoundaryResult, "boundary"), (InterventionResult, "intervention"),
                                            (FisherResult, "fisher")])
def test_an_unknown_schema_version_is_an_error_naming_it(cls, experiment):
    record = {"experiment": experiment, "schema_version": 99, "model": {}, "data": {}, "boundaries": {},
              "scale": {}, "scales": {}, "verdict": {}}
    with pytest.raises(MspgtError, match="schema_version=99"):
        cls.from_json(record, "some/results.json")


def test_a_record_of_another_experiment_is_refused():
    with pytest.raises(MspgtError, match="not an experiment=boundary result"):
        BoundaryResult.from_json({"experiment": "intervention", "model": {}, "data": {}})


def test_one_flat_summary_key_scheme():
    s = _boundary().flat_summary()
    assert summary_key("L-I", "ci_low") == "li_ci_low" and s["li_ci_low"] == 2 and s["ig_layer"] is None
    assert s["model"] == "m" and s["n_blocks"] == 30 and not any(math.isnan(v) for v in s.values()
                                                                  if isinstance(v, float))
