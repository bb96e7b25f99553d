"""Score a finished intervention run again from its samples: per-prompt scores and the brittleness null.

`python -m mspgt.interventions.rescore FOLDER...` reads each run's samples.jsonl (the prompts and both
conditions' continuations) and intervention.json (the metric settings it ran with), scores both conditions
again with the same SBERT model and grammar checker, and checks that every metric's clean and noised means
equal the ones the run recorded (to 1e-6 relative): a run that does not reproduce is left as it is and named.
Where they agree, it adds what a run made before these fields existed lacks: `per_prompt` (every metric per
prompt and condition) and `brittleness.null` (the sign-flip permutation null, paired_stats.py), written
atomically. No model is loaded and nothing is sampled. A run that has both already is skipped (--force
scores it again).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mspgt.errors import MspgtError
from mspgt.files import write_json_atomic
from mspgt.interventions.grammar import make_grammar_checker
from mspgt.interventions.paired_stats import brittleness_null, compare_paired, per_prompt_record
from mspgt.interventions.text_metrics import METRICS, load_sbert, score_prompts

log = logging.getLogger(__name__)

RTOL = 1e-6  # how closely the scores made again must match the recorded means
# the run's metrics.brittleness settings -> brittleness_null's arguments (a run made before they existed gets
# brittleness_null's defaults, those of conf/metrics/default.yaml)
NULL_SETTINGS = {"null_permutations": "n_permutations", "null_seed": "seed"}


def intervention_folders(paths: list[str | Path]) -> list[Path]:
    """Every folder holding an intervention.json, at or under `paths`."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise MspgtError(f"{p} does not exist", "name run folders (or a sweep folder) of experiment=intervention")
        found += sorted({f.parent for f in ([p / "intervention.json"] if (p / "intervention.json").exists()
                                            else p.rglob("intervention.json"))})
    if not found:
        raise MspgtError(f"no intervention.json under {[str(p) for p in paths]}",
                         "name run folders (or a sweep folder) of experiment=intervention")
    return found


def read_samples(folder: Path) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Prompts, clean continuations and noised continuations from samples.jsonl."""
    path = folder / "samples.jsonl"
    if not path.exists():
        raise MspgtError(f"{path} is missing", "rescore needs the run's samples.jsonl as the run wrote it")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["prompt"] for r in rows], [r["clean"] for r in rows], [r["noised"] for r in rows]


def _same(recorded: float | None, now: float) -> bool:
    """The recorded mean (None or nan: undefined) equals the one computed now, to RTOL."""
    undefined = recorded is None or not math.isfinite(recorded), not math.isfinite(now)
    if any(undefined):
        return all(undefined)
    return math.isclose(recorded, now, rel_tol=RTOL, abs_tol=1e-12)


def rescore(folder: Path, force: bool = False, sbert: Any = None) -> dict[str, Any] | None:
    """Score one run again, check it against its record, add `per_prompt` and `brittleness.null`; return the
    updated record, or None where it already had both (and not `force`)."""
    path = folder / "intervention.json"
    record = json.loads(path.read_text())
    if not force and record.get("per_prompt") and record.get("brittleness", {}).get("null"):
        log.info("%s: already has per_prompt and brittleness.null, skipped", folder)
        return None
    metric_cfg = record["settings"]["metrics"]
    prompts, clean, noised = read_samples(folder)
    if len(prompts) != record["generation"]["n_prompts"]:
        raise MspgtError(f"{folder}: samples.jsonl has {len(prompts)} prompts, the run recorded "
                         f"{record['generation']['n_prompts']}", "rescore a run folder as the run left it")
    sbert = sbert or load_sbert(str(metric_cfg["sbert"]))
    checker = make_grammar_checker(OmegaConf.create(metric_cfg["grammar"]))
    try:
        scores = {"clean": score_prompts(prompts, clean, sbert, checker),
                  "noised": score_prompts(prompts, noised, sbert, checker)}
    finally:
        checker.close()
    differ = []
    for m in METRICS:
        c = compare_paired(scores["clean"][m], scores["noised"][m])
        stored = record["metrics"][m]
        if not (_same(stored["clean_mean"], c.clean_mean) and _same(stored["noised_mean"], c.noised_mean)):
            differ.append(f"{m}: recorded {stored['clean_mean']} / {stored['noised_mean']}, "
                          f"now {c.clean_mean} / {c.noised_mean}")
    if differ:
        raise MspgtError(f"{folder}: the samples do not score as the run recorded ({'; '.join(differ)})",
                         "rescore on the machine and with the packages (SBERT, grammar checker) the run used, "
                         "or run the job again")
    britt = record["brittleness"]
    null_args = {arg: int(v) for key, arg in NULL_SETTINGS.items()
                 if (v := metric_cfg.get("brittleness", {}).get(key)) is not None}
    null = brittleness_null(scores["clean"], scores["noised"], list(britt["metrics"]), **null_args)
    if not math.isclose(null["observed"], britt["value"], rel_tol=1e-9, abs_tol=1e-12):
        raise MspgtError(f"{folder}: brittleness now {null['observed']}, recorded {britt['value']}",
                         "run the job again")
    record["brittleness"]["null"] = null
    record["per_prompt"] = per_prompt_record(prompts, scores)
    record["rescored"] = {"by": "python -m mspgt.interventions.rescore", "checked_rtol": RTOL}
    write_json_atomic(path, record)
    log.info("%s: brittleness %.3g, null floor %.3g, p %.3g", folder, britt["value"], null["floor"], null["p"])
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="intervention run folders, or a sweep folder holding them")
    parser.add_argument("--force", action="store_true", help="score runs again that already have the fields")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        encoders: dict[str, Any] = {}  # one SBERT per source, loaded once
        for f in intervention_folders(args.folders):
            source = str(json.loads((f / "intervention.json").read_text())["settings"]["metrics"]["sbert"])
            rescore(f, args.force, encoders.get(source) or encoders.setdefault(source, load_sbert(source)))
    except MspgtError as e:
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main()
