"""Slurm client commands, each bounded by a timeout, and parsers of their output (our code).

Every call here ends: a command that does not answer within its timeout raises MspgtError naming the fix.
The parsers are pure functions of the text that `scontrol -o` and `sinfo -o` print (Slurm >= 20.11).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mspgt.errors import MspgtError

DEFAULT_TIMEOUT_S = 30.0
# Where Slurm looks for its configuration when SLURM_CONF is not set (Debian, RHEL, source builds).
DEFAULT_CONF_PATHS = ("/etc/slurm/slurm.conf", "/etc/slurm-llnl/slurm.conf", "/usr/local/etc/slurm.conf")
NODE_FORMAT = "%N|%c|%m|%G|%t"  # sinfo -N: name, CPUs, memory (MB), generic resources, state
# Node states in which a node runs no new job (sinfo %t short names; `*` = not responding).
UNUSABLE_NODE_STATES = ("down", "drain", "drng", "fail", "failg", "maint", "futr", "inval", "pow_dn", "powered_down")
DEV_CLUSTER_HINT = 'on the dev cluster: eval "$(bash launch/slurm_dev_cluster.sh start)"'


def slurm_command(args: list[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run a Slurm client command; a missing command or one that hangs past `timeout_s` is an MspgtError."""
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError:
        raise MspgtError(
            f"the Slurm command `{args[0]}` is not installed on this machine",
            "submit from a machine with the Slurm client (a login node); for a local dev cluster run "
            "`bash launch/install_slurm.sh`",
        ) from None
    except subprocess.TimeoutExpired:
        raise MspgtError(
            f"`{' '.join(args)}` did not answer within {timeout_s:.0f} s: the Slurm controller is down or unreachable",
            f"check `scontrol ping` and SLURM_CONF; {DEV_CLUSTER_HINT}",
        ) from None


def check_slurm_config() -> str:
    """The Slurm configuration file in use (SLURM_CONF, else Slurm's default paths), or an MspgtError.

    Returns "configless" where no file exists but the controller answers (clusters run `configless`).
    """
    conf = os.environ.get("SLURM_CONF")
    if conf:
        path = Path(conf)
        if not path.is_file() or not os.access(path, os.R_OK):
            raise MspgtError(
                f"SLURM_CONF={conf} is not a readable file",
                f"export SLURM_CONF=<your cluster's slurm.conf>, or unset it to use Slurm's default; {DEV_CLUSTER_HINT}",
            )
        return str(path)
    for candidate in DEFAULT_CONF_PATHS:
        if Path(candidate).is_file():
            return candidate
    if controller_answers(timeout_s=10.0):
        return "configless"
    raise MspgtError(
        f"SLURM_CONF is not set, there is no {' or '.join(DEFAULT_CONF_PATHS)}, and no Slurm controller answers",
        f"export SLURM_CONF=<path of slurm.conf> in the shell that runs the sweep; {DEV_CLUSTER_HINT}",
    )


def controller_answers(timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """`scontrol ping` reports the controller UP (a missing client or a timeout count as no)."""
    try:
        proc = slurm_command(["scontrol", "ping"], timeout_s)
    except MspgtError:
        return False
    return proc.returncode == 0 and " is UP" in proc.stdout


@dataclass(frozen=True)
class NodeInfo:
    """One node as `sinfo -N -o NODE_FORMAT` describes it."""

    name: str
    cpus: int
    memory_mb: int
    gpus: int
    gpu_types: tuple[str, ...]
    state: str

    @property
    def usable(self) -> bool:
        """The node can start new jobs (not down, drained, failed or powered off)."""
        return self.state.rstrip("*~#!%$@^-+").lower() not in UNUSABLE_NODE_STATES and not self.state.endswith("*")


@dataclass(frozen=True)
class PartitionInfo:
    """A partition's state, limits (None = unlimited) and nodes."""

    name: str
    state: str
    is_default: bool
    max_time_min: int | None
    max_nodes: int | None
    max_cpus_per_node: int | None
    max_mem_per_node_mb: int | None
    nodes: tuple[NodeInfo, ...]


def parse_key_values(line: str) -> dict[str, str]:
    """`Key=Value Key=Value ...` (scontrol -o) into a dict; tokens without `=` are skipped."""
    return dict(token.split("=", 1) for token in line.split() if "=" in token)


def parse_slurm_minutes(text: str) -> int | None:
    """A Slurm duration (`UNLIMITED`, `D-HH:MM:SS`, `HH:MM:SS`, `MM:SS`, `MM`) in whole minutes (rounded up)."""
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:  # D-HH, D-HH:MM, D-HH:MM:SS
        parts += [0] * (3 - len(parts))
        hours, minutes, seconds = parts
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    elif len(parts) == 2:
        hours, (minutes, seconds) = 0, parts
    else:
        hours, minutes, seconds = 0, parts[0], 0
    total_s = ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds
    return -(-total_s // 60)


def parse_memory_mb(text: str | int | float) -> int:
    """A Slurm memory size (`4000`, `4000M`, `64G`, `1T`; plain numbers are MB) in MB."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(text).upper())
    if m is None:
        raise MspgtError(f"cannot read the memory size {text!r}", "write it like 4000M, 64G or 1T")
    factor = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2)]
    return int(float(m.group(1)) * factor)


def parse_gres_gpus(gres: str) -> tuple[int, tuple[str, ...]]:
    """GPUs in a generic-resource string (`gpu:a100:8(S:0-1),nvme:1`, `gpu:4`, `(null)`): count and types."""
    count, types = 0, []
    for entry in re.sub(r"\([^)]*\)", "", gres or "").split(","):
        parts = entry.strip().split(":")
        if parts[0] != "gpu":
            continue
        n = int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
        count += n
        if len(parts) >= 3 or (len(parts) == 2 and not parts[1].isdigit()):
            types.append(parts[1])
    return count, tuple(types)


def parse_node_line(line: str) -> NodeInfo:
    """One line of `sinfo -h -N -o NODE_FORMAT`."""
    name, cpus, memory, gres, state = line.strip().split("|")
    gpus, gpu_types = parse_gres_gpus(gres)
    return NodeInfo(name=name, cpus=int(cpus), memory_mb=int(memory.rstrip("+")), gpus=gpus, gpu_types=gpu_types,
                    state=state)


def _limit(value: str | None) -> int | None:
    if value is None or value.upper() in ("UNLIMITED", "INFINITE", "NONE"):
        return None
    return int(re.sub(r"\D.*$", "", value) or 0) or None


def parse_partition(fields: dict[str, str], nodes: tuple[NodeInfo, ...]) -> PartitionInfo:
    """A partition from its `scontrol -o show partition` fields and its nodes."""
    return PartitionInfo(
        name=fields["PartitionName"],
        state=fields.get("State", "UNKNOWN"),
        is_default=fields.get("Default", "NO") == "YES",
        max_time_min=parse_slurm_minutes(fields.get("MaxTime", "UNLIMITED")),
        max_nodes=_limit(fields.get("MaxNodes")),
        max_cpus_per_node=_limit(fields.get("MaxCPUsPerNode")),
        max_mem_per_node_mb=_limit(fields.get("MaxMemPerNode")),
        nodes=nodes,
    )


def list_partitions(timeout_s: float = DEFAULT_TIMEOUT_S) -> list[dict[str, str]]:
    """Every partition's `scontrol -o show partition` fields."""
    proc = slurm_command(["scontrol", "-o", "show", "partition"], timeout_s)
    if proc.returncode != 0:
        raise MspgtError(f"`scontrol show partition` failed: {proc.stderr.strip()}",
                         f"check that the Slurm controller is up (`scontrol ping`); {DEV_CLUSTER_HINT}")
    return [parse_key_values(line) for line in proc.stdout.splitlines() if line.startswith("PartitionName=")]


def query_partition(name: str | None, timeout_s: float = DEFAULT_TIMEOUT_S) -> PartitionInfo:
    """The named partition (None: the cluster's default one) with its nodes, or an MspgtError naming the choices."""
    partitions = list_partitions(timeout_s)
    names = [p["PartitionName"] for p in partitions]
    if name is None:
        found = [p for p in partitions if p.get("Default") == "YES"]
        if not found:
            raise MspgtError("the launcher names no partition and the cluster has no default partition",
                             f"set hydra.launcher.partition to one of {names}")
    else:
        found = [p for p in partitions if p["PartitionName"] == name]
        if not found:
            raise MspgtError(f"unknown Slurm partition {name!r}",
                             f"set hydra.launcher.partition to one of {names} (`sinfo -s` lists them)")
    fields = found[0]
    proc = slurm_command(["sinfo", "-h", "-N", "-p", fields["PartitionName"], "-o", NODE_FORMAT], timeout_s)
    if proc.returncode != 0:
        raise MspgtError(f"`sinfo -p {fields['PartitionName']}` failed: {proc.stderr.strip()}",
                         "check that the Slurm controller is up (`scontrol ping`)")
    nodes = {n.name: n for n in (parse_node_line(line) for line in proc.stdout.splitlines() if line.strip())}
    return parse_partition(fields, tuple(nodes.values()))
