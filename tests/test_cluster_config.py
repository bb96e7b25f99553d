"""Launcher configs compose (shipped ones and a user's own file); the pre-flight checks, the watchdog's
verdicts and the sweep summary on planted inputs; pre-flight errors against the real dev cluster
(those tests are marked `slurm` and skipped when it is not up)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from mspgt.cluster.preflight import (
    ResourceRequest,
    check_request_fits,
    check_slurm_launcher,
    resource_request,
)
from mspgt.cluster.slurm import (
    NodeInfo,
    PartitionInfo,
    parse_gres_gpus,
    parse_key_values,
    parse_memory_mb,
    parse_node_line,
    parse_partition,
    parse_slurm_minutes,
)
from mspgt.cluster.summary import main as summary_main
from mspgt.cluster.summary import summary_markdown, table_rows, write_sweep_summary
from mspgt.cluster.watchdog import classify, parse_squeue, submitit_root
from mspgt.errors import MspgtError
from tests.conftest import REPO

CONF = REPO / "conf"


def _dev_cluster_problem() -> str | None:
    if not os.environ.get("SLURM_CONF"):
        return 'SLURM_CONF is not set: start the dev cluster with eval "$(bash launch/slurm_dev_cluster.sh start)"'
    try:
        proc = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"no Slurm client or controller ({err}): bash launch/install_slurm.sh, then start the dev cluster"
    if " is UP" not in proc.stdout:
        return f"the Slurm controller of {os.environ['SLURM_CONF']} does not answer: bash launch/slurm_dev_cluster.sh start"
    return None


@pytest.fixture(scope="session")
def dev_cluster() -> None:
    """Skip where the dev cluster is not up; fail instead under MSPGT_REQUIRE_SLURM=1 (CI must run these)."""
    problem = _dev_cluster_problem()
    if problem is None:
        return
    if os.environ.get("MSPGT_REQUIRE_SLURM") == "1":
        pytest.fail(f"MSPGT_REQUIRE_SLURM=1 but the dev Slurm cluster is not usable: {problem}")
    pytest.skip(f"dev Slurm cluster: {problem}")


needs_dev_cluster = pytest.mark.usefixtures("dev_cluster")


def _hydra_cfg(overrides: list[str]):
    """The composed `hydra` node, with Hydra's config set so `${hydra:...}` interpolations resolve."""
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg.hydra


# -- launcher configs ------------------------------------------------------------------------------

def test_a100_launcher_asks_one_gpu_per_job_eight_at_once_and_requeues():
    h = _hydra_cfg(["hydra/launcher=slurm_a100"])
    launcher = OmegaConf.to_container(h.launcher, resolve=True)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["gpus_per_node"] == 1 and launcher["nodes"] == 1 and launcher["tasks_per_node"] == 1
    assert launcher["array_parallelism"] == 8
    assert launcher["max_num_timeout"] >= 1 and launcher["signal_delay_s"] > 0
    assert {"partition", "account", "qos", "cpus_per_task", "mem_gb", "timeout_min", "setup"} <= set(launcher)
    assert f"export OMP_NUM_THREADS={launcher['cpus_per_task']}" in launcher["setup"]
    assert h.callbacks.slurm_preflight._target_ == "mspgt.cluster.callbacks.SlurmPreflight"
    request = resource_request(launcher)
    assert request == ResourceRequest(nodes=1, cpus_per_node=launcher["cpus_per_task"],
                                      memory_mb_per_node=launcher["mem_gb"] * 1024, gpus_per_node=1, gpu_type=None,
                                      time_min=launcher["timeout_min"])


def test_dev_launcher_fits_the_dev_cluster_without_gpus():
    h = _hydra_cfg(["hydra/launcher=slurm_dev"])
    launcher = OmegaConf.to_container(h.launcher, resolve=True)
    assert launcher["partition"] == "debug" and launcher["gpus_per_node"] is None
    assert launcher["cpus_per_task"] == 1 and launcher["array_parallelism"] == 8
    assert resource_request(launcher).gpus_per_node == 0


def test_local_default_has_no_slurm_preflight():
    h = _hydra_cfg([])
    assert "slurm_preflight" not in (h.callbacks or {})
    assert not str(h.launcher._target_).endswith("SlurmLauncher")


def test_a_users_own_file_extends_the_a100_launcher(tmp_path):
    """The README's recipe: copy launch/my_cluster out of the repo, edit it, pass --config-dir."""
    mine = tmp_path / "mspgt-cluster"
    shutil.copytree(REPO / "launch" / "my_cluster", mine)
    path = mine / "hydra" / "launcher" / "my_cluster.yaml"
    path.write_text(path.read_text().replace("partition: gpu", "partition: a100-long")
                    .replace("account: my_lab", "account: lab42"))
    proc = subprocess.run([sys.executable, "-m", "mspgt.run", "--config-dir", str(mine), "hydra/launcher=my_cluster",
                           "hydra.launcher.qos=high", "--cfg", "hydra"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    h = yaml.safe_load(proc.stdout)["hydra"]
    launcher = h["launcher"]
    assert (launcher["partition"], launcher["account"], launcher["qos"]) == ("a100-long", "lab42", "high")
    assert launcher["gpus_per_node"] == 1 and launcher["array_parallelism"] == 8  # inherited from slurm_a100
    assert any(line.startswith("module load") for line in launcher["setup"])
    assert h["callbacks"]["slurm_preflight"]["_target_"] == "mspgt.cluster.callbacks.SlurmPreflight"


# -- parsers of Slurm's output ---------------------------------------------------------------------

@pytest.mark.parametrize("text, minutes", [
    ("UNLIMITED", None), ("INFINITE", None), ("1-00:00:00", 1440), ("2-12", 3600), ("04:00:00", 240),
    ("30:00", 30), ("90", 90), ("00:00:30", 1), ("1-02:03:04", 1564),
])
def test_slurm_durations_in_minutes(text, minutes):
    assert parse_slurm_minutes(text) == minutes


@pytest.mark.parametrize("gres, count, types", [
    ("(null)", 0, ()), ("gpu:4", 4, ()), ("gpu:a100:8(S:0,1),nvme:1", 8, ("a100",)),
    ("gpu:a100:4,gpu:v100:2", 6, ("a100", "v100")), ("gpu:a100", 1, ("a100",)), ("nvme:1", 0, ()),
])
def test_gpus_in_generic_resources(gres, count, types):
    assert parse_gres_gpus(gres) == (count, types)


@pytest.mark.parametrize("text, mb", [("4000", 4000), ("4000M", 4000), ("64G", 65536), ("1T", 1048576), (512, 512)])
def test_memory_sizes_in_mb(text, mb):
    assert parse_memory_mb(text) == mb


def test_a_bad_memory_size_names_the_format():
    with pytest.raises(MspgtError, match="64G"):
        parse_memory_mb("lots")


def test_partition_and_node_lines_parse():
    fields = parse_key_values("PartitionName=gpu Default=NO State=UP MaxTime=2-00:00:00 MaxNodes=4 "
                              "MaxCPUsPerNode=UNLIMITED MaxMemPerNode=512000 Nodes=g[01-02]")
    nodes = (parse_node_line("g01|128|1000000|gpu:a100:8(S:0-1)|mix"), parse_node_line("g02|128|1000000|gpu:a100:8|down*"))
    p = parse_partition(fields, nodes)
    assert (p.name, p.state, p.is_default, p.max_time_min, p.max_nodes) == ("gpu", "UP", False, 2880, 4)
    assert p.max_cpus_per_node is None and p.max_mem_per_node_mb == 512000
    assert nodes[0] == NodeInfo("g01", 128, 1000000, 8, ("a100",), "mix") and nodes[0].usable
    assert not nodes[1].usable  # down and not responding


# -- the request against a partition (planted clusters) --------------------------------------------

def _a100_partition(state: str = "UP", node_states: tuple[str, ...] = ("idle", "mix")) -> PartitionInfo:
    nodes = tuple(NodeInfo(f"g{i}", 64, 1_000_000, 8, ("a100",), s) for i, s in enumerate(node_states))
    return PartitionInfo("gpu", state, True, 2880, None, None, None, nodes)


def _request(**kw) -> ResourceRequest:
    base = dict(nodes=1, cpus_per_node=8, memory_mb_per_node=65536, gpus_per_node=1, gpu_type=None, time_min=240)
    return ResourceRequest(**{**base, **kw})


def test_the_shipped_a100_request_fits_an_a100_partition():
    check_request_fits(_request(), _a100_partition())
    check_request_fits(_request(gpus_per_node=8, gpu_type="a100", cpus_per_node=64), _a100_partition())


@pytest.mark.parametrize("change, message", [
    (dict(cpus_per_node=65), "65 CPUs per node, but the largest node .* has 64"),
    (dict(memory_mb_per_node=2_000_000), "2000000 MB of memory per node, but the largest node"),
    (dict(gpus_per_node=9), "9 GPU\\(s\\) per node, but the nodes .* have at most 8"),
    (dict(gpu_type="h100"), "GPU type 'h100' is not in partition"),
    (dict(time_min=2881), "timeout_min=2881 exceeds partition 'gpu'"),
    (dict(nodes=3), "needs 3 node\\(s\\)"),
])
def test_a_request_larger_than_the_partition_is_named(change, message):
    with pytest.raises(MspgtError, match=message) as err:
        check_request_fits(_request(**change), _a100_partition())
    assert "fix:" in str(err.value)


def test_a_partition_that_is_down_or_whose_nodes_are_down_is_an_error():
    with pytest.raises(MspgtError, match="is DOWN"):
        check_request_fits(_request(), _a100_partition(state="DOWN"))
    with pytest.raises(MspgtError, match="not usable now"):
        check_request_fits(_request(), _a100_partition(node_states=("down*", "drain")))
    check_request_fits(_request(), _a100_partition(node_states=("down*", "idle~")))  # powered-off nodes resume


def test_launcher_keys_become_a_per_node_request():
    r = resource_request({"nodes": 2, "tasks_per_node": 4, "cpus_per_task": 2, "gpus_per_node": "a100:4",
                          "mem_per_cpu": "4G", "timeout_min": 30})
    assert r == ResourceRequest(nodes=2, cpus_per_node=8, memory_mb_per_node=8 * 4096, gpus_per_node=4,
                                gpu_type="a100", time_min=30)
    assert resource_request({"gres": "gpu:a100:2", "cpus_per_gpu": 6}).cpus_per_node == 12
    assert resource_request({"gpus_per_task": 1, "tasks_per_node": 2}).gpus_per_node == 2
    with pytest.raises(MspgtError, match="cpus_per_task=0"):
        resource_request({"cpus_per_task": 0})
    with pytest.raises(MspgtError, match="mem_gb"):
        resource_request({"mem_gb": -1})


# -- the watchdog's verdicts -----------------------------------------------------------------------

@pytest.mark.parametrize("state, reason, has_result, verdict", [
    ("RUNNING", "None", False, "ok"),
    ("PENDING", "Resources", False, "ok"),
    ("PENDING", "BeginTime", False, "ok"),           # a requeued job waits for its new begin time
    ("PENDING", "PartitionTimeLimit", False, "hopeless"),
    ("PENDING", "InvalidAccount", False, "hopeless"),
    ("CANCELLED", "None", False, "ended"),
    ("TIMEOUT", "None", False, "ended"),
    ("COMPLETED", "None", True, "ok"),
    (None, "", False, "ended"),                       # purged from the controller without a result
    (None, "", True, "ok"),
])
def test_watchdog_verdicts(state, reason, has_result, verdict):
    assert classify(state, reason, has_result) == verdict


def test_squeue_lines_and_submitit_folders():
    table = parse_squeue("12_0|RUNNING|None\n12_1|PENDING|Priority\nbroken line\n")
    assert table == {"12_0": ("RUNNING", "None"), "12_1": ("PENDING", "Priority")}
    assert submitit_root("/s/.submitit/%j") == Path("/s/.submitit")
    assert submitit_root("/s/.submitit/job_%j") == Path("/s/.submitit")
    assert submitit_root("/s/logs") == Path("/s/logs")


# -- the sweep summary (planted job folders) -------------------------------------------------------

def _plant_job(sweep: Path, name: str, model: str, family: str, li: int | None, ig: int) -> None:
    folder = sweep / name
    folder.mkdir(parents=True)

    def boundary(layer: int | None) -> dict:
        if layer is None:
            return {"layer": None, "relative": None, "ci_low": None, "ci_high": None, "width": None,
                    "accepted": False, "n_missing": 50, "n_resamples": 50}
        return {"layer": layer, "relative": layer / 6, "ci_low": layer - 1, "ci_high": layer + 1, "width": 2,
                "accepted": True, "n_missing": 0, "n_resamples": 50, "selection_frequency": {str(layer): 50}}

    (folder / "results.json").write_text(json.dumps({
        "experiment": "boundary", "model": {"name": model, "family": family, "n_blocks": 6},
        "data": {"key": "bbc-12345678"}, "boundaries": {"L-I": boundary(li), "I-G": boundary(ig)}}))


def test_sweep_summary_lists_every_job_side_by_side(tmp_path):
    sweep = tmp_path / "2026-01-01_00-00-00"
    _plant_job(sweep, "0-tiny_llama", "tiny_llama", "llama", 2, 4)
    _plant_job(sweep, "1-tiny_qwen2", "tiny_qwen2", "qwen", None, 5)
    (sweep / "2-smollm2").mkdir()
    (sweep / "2-smollm2" / "error.txt").write_text("Traceback ...\nMspgtError: out of memory | try less\n")
    (sweep / ".submitit" / "3_0").mkdir(parents=True)
    summary = write_sweep_summary(sweep, tracking=None)
    assert summary is not None
    assert [r["job"] for r in summary["jobs"]] == ["0", "1", "2"]
    assert [r["status"] for r in summary["jobs"]] == ["done", "done", "failed"]
    assert json.loads((sweep / "sweep_summary.json").read_text()) == summary
    md = (sweep / "sweep_summary.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 3  # header and one row per job
    assert "| 0 | tiny_llama | llama | 6 | bbc-12345678 | none | 2 (0.33) | [1, 3] | 2 | yes | 0/50 | 4 (0.67) |" in md
    assert "| 1 | tiny_qwen2 | qwen | 6 | bbc-12345678 | none | none |  |  | false | 50/50 | 5 (0.83) |" in md
    assert "failed: MspgtError: out of memory \\| try less" in md
    assert summary_markdown(sweep.name, summary["jobs"]) == md
    columns, data = table_rows(summary["jobs"])
    assert len(data) == 3 and all(len(row) == len(columns) for row in data)
    assert data[0][columns.index("L-I_ci_low")] == 1 and data[1][columns.index("L-I_layer")] is None
    # a Fisher job finds no boundaries: its boundary cells say "-", not "none ... no"
    (sweep / "4-fisher").mkdir()
    (sweep / "4-fisher" / "fisher.json").write_text(json.dumps({
        "experiment": "fisher", "model": {"name": "tiny_llama", "family": "llama", "n_blocks": 6},
        "data": {"key": "bbc-12345678"}}))
    md = (sweep / "sweep_summary.md").read_text() if write_sweep_summary(sweep, tracking=None) else ""
    assert "| 4 | tiny_llama | llama | 6 | bbc-12345678 | none | - | - | - | - | - | - | - | - | - | - |" in md


def test_summary_by_hand_for_a_sweep_that_stopped(tmp_path, capsys):
    """`python -m mspgt.cluster.summary <sweep dir>`: what to run when a failed job kept Hydra from it."""
    sweep = tmp_path / "sweep"
    _plant_job(sweep, "0-tiny_llama", "tiny_llama", "llama", 2, 4)
    summary_main([str(sweep), "--wandb-mode", "disabled"])
    assert "| 0 | tiny_llama | llama |" in capsys.readouterr().out
    assert (sweep / "sweep_summary.json").exists() and not (sweep / "wandb").exists()
    with pytest.raises(SystemExit, match="no job"):
        summary_main([str(tmp_path), "--wandb-mode", "disabled"])


def test_summary_of_a_sweep_without_results_is_none(tmp_path):
    assert write_sweep_summary(tmp_path, tracking=None) is None
    with pytest.raises(MspgtError, match="not a folder"):
        write_sweep_summary(tmp_path / "missing", tracking=None)


# -- pre-flight against the real dev cluster -------------------------------------------------------

def _dev_launcher(**changes) -> dict:
    launcher = OmegaConf.to_container(_hydra_cfg(["hydra/launcher=slurm_dev"]).launcher, resolve=False)
    launcher.update(changes)
    return launcher


@pytest.mark.slurm
@needs_dev_cluster
def test_preflight_accepts_the_dev_launcher():
    summary = check_slurm_launcher(_dev_launcher())
    assert "partition 'debug'" in summary and "1/1 nodes usable" in summary


@pytest.mark.slurm
@needs_dev_cluster
@pytest.mark.parametrize("changes, message", [
    (dict(partition="no_such_partition"), "unknown Slurm partition 'no_such_partition'"),
    (dict(cpus_per_task=4096), "4096 CPUs per node, but the largest node of partition 'debug'"),
    (dict(mem_gb=100_000), "MB of memory per node, but the largest node of partition 'debug'"),
    (dict(gpus_per_node=1), "1 GPU\\(s\\) per node, but the nodes of partition 'debug' have none"),
    (dict(partition=None, cpus_per_task=4096), "largest node of partition 'debug'"),  # the default partition
])
def test_preflight_names_what_the_dev_cluster_cannot_give(changes, message):
    with pytest.raises(MspgtError, match=message):
        check_slurm_launcher(_dev_launcher(**changes))


@pytest.mark.slurm
@needs_dev_cluster
def test_preflight_without_a_slurm_configuration(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "nowhere.conf"))
    with pytest.raises(MspgtError, match="SLURM_CONF=.*nowhere.conf is not a readable file"):
        check_slurm_launcher(_dev_launcher())
    if not any(Path(p).exists() for p in ("/etc/slurm/slurm.conf", "/etc/slurm-llnl/slurm.conf")):
        monkeypatch.delenv("SLURM_CONF")
        with pytest.raises(MspgtError, match="SLURM_CONF is not set"):
            check_slurm_launcher(_dev_launcher())
