"""The sweep summary: every job's boundaries and CIs side by side (our format), and Experiment 3 over them
(`robustness.{md,json}`: families, CVs, a verdict per prediction; mspgt/reports/robustness.py).

After a multirun, each job folder `<sweep dir>/<num>-<overrides>/` holds a results.json (or an error.txt).
This module gathers them into `sweep_summary.json` and `sweep_summary.md` in the sweep folder, and logs
the table to W&B in a run of its own (job_type `sweep_summary`, in the sweep's group, tagged with the
model families), beside the jobs' runs; where the sweep ran controls (control=none and another), the controls
comparison `controls.{md,json,png}` and its W&B run (mspgt/reports/controls.py). Runs at the end of a sweep (mspgt/cluster/callbacks.py), or by
hand for a sweep that ended with a failed job:

    python -m mspgt.cluster.summary <sweep dir> [--wandb-mode offline|online|disabled]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mspgt.errors import MspgtError
from mspgt.reports.controls import write_controls
from mspgt.reports.robustness import write_robustness
from mspgt.reports.store import write_json_atomic
from mspgt.reports.tracking import Tracker
from mspgt.results import BoundaryResult

log = logging.getLogger(__name__)

BOUNDARY_FIELDS = ("layer", "relative", "ci_low", "ci_high", "width", "accepted", "n_missing", "n_undefined",
                   "n_resamples")
SKIPPED_FOLDERS = (".submitit", "wandb")


def job_folders(sweep_dir: Path) -> list[Path]:
    """The sweep's job folders (those with a result file, an error.txt or Hydra's saved job config: a job
    that ended without either), in job-number order."""
    found = {p.parent for name in (*RESULT_FILES, "error.txt", ".hydra") for p in sweep_dir.glob(f"*/{name}")
             if p.parent.name not in SKIPPED_FOLDERS}

    def job_number(p: Path) -> tuple[int, str]:
        head = p.name.split("-", 1)[0]
        return (int(head) if head.isdigit() else 1 << 30, p.name)

    return sorted(found, key=job_number)


def job_overrides(folder: Path) -> dict[str, str]:
    """The job's command-line overrides (`key=value`, as Hydra saved them in .hydra/overrides.yaml)."""
    saved = folder / ".hydra" / "overrides.yaml"
    if not saved.exists():
        return {}
    out = {}
    for item in OmegaConf.load(saved):
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


SHOWN_GROUPS = ("model", "data", "control")  # config groups the summary shows in their own columns


def swept_keys(sweep_dir: Path, rows: list[dict[str, Any]]) -> list[str]:
    """The settings this sweep varies: sweep syntax in multirun.yaml (`a=1,2`, range(), choice(), glob()),
    and any override whose value differs between jobs. In command-line order."""
    keys: list[str] = []
    saved = sweep_dir / "multirun.yaml"
    if saved.exists():
        for item in OmegaConf.select(OmegaConf.load(saved), "hydra.overrides.task", default=[]) or []:
            key, _, value = str(item).partition("=")
            if "," in value or value.startswith(("range(", "choice(", "glob(", "interval(")):
                keys.append(key.lstrip("+~"))
    for row in rows:
        for key in row.get("overrides", {}):
            values = {r.get("overrides", {}).get(key) for r in rows}
            if len(values) > 1 and key not in keys:
                keys.append(key)
    return [k for k in keys if not k.startswith("hydra.") and k not in SHOWN_GROUPS and k != "study.job"]


RESULT_FILES = ("results.json", "intervention.json", "fisher.json")  # what a finished job of each experiment writes


def job_row(folder: Path) -> dict[str, Any]:
    """One job: its model, data and boundaries from results.json; or its status and last error line."""
    job = {"job": folder.name.split("-", 1)[0], "folder": folder.name, "overrides": job_overrides(folder)}
    results = next((folder / name for name in RESULT_FILES if (folder / name).exists()), None)
    if results is None:
        if not (folder / "error.txt").exists():
            return {**job, "status": "failed", "error": "ended without a result (results.json, intervention.json, "
                    "fisher.json) or error.txt (still running, or killed? see its log in .submitit/ or the job folder)",
                    "boundaries": {}}
        return {**job, "status": "failed", "error": error_line(folder / "error.txt"), "boundaries": {}}
    try:
        r = json.loads(results.read_text())
    except json.JSONDecodeError as err:
        return {**job, "status": "unreadable", "error": f"{results.name}: {err}", "boundaries": {}}
    if r.get("experiment") != "boundary":
        return {**job, "status": "done", "experiment": r.get("experiment"), "model": r.get("model", {}).get("name"),
                "family": r.get("model", {}).get("family"), "n_blocks": r.get("model", {}).get("n_blocks"),
                "data": r.get("data", {}).get("key"), "boundaries": {}}
    result = BoundaryResult.from_json(r, str(results))
    return {
        **job,
        "status": "done",
        "experiment": result.experiment,
        "model": result.model.get("name"),
        "family": result.model.get("family"),
        "n_blocks": result.model.get("n_blocks"),
        "data": result.data.get("key"),
        "control": result.control.get("key", "none"),
        "boundaries": {name: {k: getattr(b, k) for k in BOUNDARY_FIELDS} for name, b in result.boundaries.items()},
    }


def error_line(path: Path) -> str:
    """A job's error in one line: a traceback's last line (the exception), or a message with its fix."""
    lines = [line.strip() for line in path.read_text(errors="replace").strip().splitlines() if line.strip()]
    if not lines:
        return "error.txt is empty"
    return lines[-1] if lines[0].startswith("Traceback") else " ".join(lines)


def failed_jobs(summary: dict[str, Any]) -> list[str]:
    """`job <n> (<its swept settings>): <error>` for each job of a written summary that has no result."""
    def settings(row: dict[str, Any]) -> str:
        keys = [k for k in (*SHOWN_GROUPS, *summary.get("swept", [])) if k in row["overrides"]]
        swept = [k for k in keys if len({r["overrides"].get(k) for r in summary["jobs"]}) > 1] or keys
        return " ".join(f"{k}={row['overrides'][k]}" for k in swept)

    return [f"job {r['job']} ({settings(r)}): {r.get('error', '')}" for r in summary["jobs"] if r["status"] != "done"]


def boundary_names(rows: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for row in rows:
        names += [n for n in row["boundaries"] if n not in names]
    return names


def summary_markdown(sweep_name: str, rows: list[dict[str, Any]], swept: list[str] | None = None) -> str:
    """A markdown table: one row per job, its swept settings, per boundary its layer (relative depth), CI,
    width, accepted."""
    names = boundary_names(rows)
    swept = swept or []
    head = ["job", *swept, "model", "family", "blocks", "data", "control"]
    for n in names:
        head += [f"{n} layer (rel.)", f"{n} CI", f"{n} width", f"{n} accepted", f"{n} missing"]
    lines = [f"# Sweep {sweep_name}: boundaries side by side", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if row["status"] != "done":
            error = str(row.get("error", "")).replace("|", "\\|")
            cells = [row["job"], *_swept_cells(row, swept), f"{row['status']}: {error}"]
            cells += [""] * (len(head) - len(cells))
            lines.append("| " + " | ".join(cells) + " |")
            continue
        cells = [row["job"], *_swept_cells(row, swept), str(row["model"]), str(row["family"]), str(row["n_blocks"]),
                 str(row["data"]), str(row.get("control", "none"))]
        for n in names:
            b = row["boundaries"].get(n)
            if row.get("experiment") not in (None, "boundary"):  # a Fisher or intervention job finds no boundaries
                cells += ["-"] * 5
                continue
            if b is None or b["layer"] is None:
                cells += ["none", "", "", "no" if b is None else str(b["accepted"]).lower(),
                          "" if b is None else f"{b['n_missing']}/{b['n_resamples']}"]
                continue
            ci = "" if b["ci_low"] is None else f"[{b['ci_low']}, {b['ci_high']}]"
            cells += [f"{b['layer']} ({b['relative']:.2f})", ci, str(b["width"]), "yes" if b["accepted"] else "no",
                      f"{b['n_missing']}/{b['n_resamples']}" + (f" (+{b['n_undefined']} NaN)" if b.get("n_undefined") else "")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "CI: bootstrap percentile interval over sentence groups (layers are 1-based blocks); "
              "missing: resamples that found no such peak (NaN: resamples whose evidence was undefined); -: a job of "
              "another experiment (Fisher, interventions), which finds no boundaries. Each job folder holds its results.json, "
              "figure, logs and W&B run (wandb/)."]
    return "\n".join(lines) + "\n"


def _swept_cells(row: dict[str, Any], swept: list[str]) -> list[str]:
    return [str(row.get("overrides", {}).get(k, "(default)")).replace("|", "\\|") for k in swept]


def table_rows(rows: list[dict[str, Any]], swept: list[str] | None = None) -> tuple[list[str], list[list[Any]]]:
    """Flat columns and rows for a W&B table."""
    names = boundary_names(rows)
    swept = swept or []
    columns = ["job", "folder", "status", *swept, "model", "family", "n_blocks", "data", "control"]
    columns += [f"{n}_{f}" for n in names for f in BOUNDARY_FIELDS]
    data = []
    for row in rows:
        values = [row["job"], row["folder"], row["status"], *_swept_cells(row, swept), row.get("model"),
                  row.get("family"), row.get("n_blocks"), row.get("data"), row.get("control", "none")]
        for n in names:
            b = row["boundaries"].get(n, {})
            values += [b.get(f) for f in BOUNDARY_FIELDS]
        data.append(values)
    return columns, data


def write_sweep_summary(sweep_dir: str | Path, tracking: DictConfig | None) -> dict[str, Any] | None:
    """Write sweep_summary.{json,md} in the sweep folder and log the table to W&B; None if no job wrote anything."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise MspgtError(f"{sweep_dir} is not a folder", "pass the sweep folder (outputs/multirun/<date>)")
    record = write_robustness([sweep_dir], sweep_dir)  # Experiment 3 over this sweep's boundary and intervention jobs
    if record is not None:
        log.info("robustness (paper 4.3) and the predictions: %s", sweep_dir / "robustness.md")
    rows = [job_row(f) for f in job_folders(sweep_dir)]
    if not rows:
        return None
    controls = write_controls([sweep_dir], sweep_dir, tracking, group=sweep_dir.name)  # per boundary, per control
    swept = swept_keys(sweep_dir, rows)
    summary = {"sweep": sweep_dir.name, "sweep_dir": str(sweep_dir), "swept": swept, "jobs": rows,
               "controls": str(sweep_dir / "controls.md") if controls else None}
    write_json_atomic(sweep_dir / "sweep_summary.json", summary)
    (sweep_dir / "sweep_summary.md").write_text(summary_markdown(sweep_dir.name, rows, swept))
    log.info("sweep summary: %s", sweep_dir / "sweep_summary.md")
    if tracking is not None and tracking.mode != "disabled":
        families = sorted({r["family"] for r in rows if r.get("family")})
        tracker = Tracker(tracking, sweep_dir, job_type="sweep_summary", name=f"{sweep_dir.name}-summary",
                          group=sweep_dir.name, tags=families,
                          config={"sweep_dir": str(sweep_dir), "n_jobs": len(rows)})
        columns, data = table_rows(rows, swept)
        tracker.table("boundaries", columns, data)
        if record is not None:
            tracker.table("predictions", ["tier", "id", "verdict", "prediction"],
                          [[str(v["tier"]), v["id"], v["verdict"], v["prediction"]] for v in record["predictions"]])
            if (sweep_dir / "robustness.png").exists():
                tracker.image("robustness", sweep_dir / "robustness.png")  # the paper's Figure 10
        tracker.summary({"n_jobs": len(rows), "n_done": sum(r["status"] == "done" for r in rows)})
        summary["wandb_run"] = tracker.run_path
        tracker.finish()
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Gather a sweep's results.json files into sweep_summary.{md,json}")
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--wandb-mode", choices=["offline", "online", "disabled"], default=None,
                        help="default: tracking.mode of the sweep's multirun.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tracking = None
    saved = args.sweep_dir / "multirun.yaml"
    if saved.exists():
        tracking = OmegaConf.load(saved).tracking
    if args.wandb_mode is not None:
        tracking = tracking or OmegaConf.create({"project": "mspgt", "entity": None, "group": None, "tags": []})
        tracking.mode = args.wandb_mode
    summary = write_sweep_summary(args.sweep_dir, tracking)
    if summary is None:
        raise SystemExit(f"no job of {args.sweep_dir} wrote results.json or error.txt")
    print((args.sweep_dir / "sweep_summary.md").read_text())


if __name__ == "__main__":
    main()
