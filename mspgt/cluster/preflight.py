"""Pre-flight checks of a Slurm launcher config, run before any job is submitted (our code).

A sweep that asks for what the cluster cannot give either fails at `sbatch` (clusters with
EnforcePartLimits) or pends forever. These checks turn both into one clear error, before submission:
Slurm configured and its controller up; the partition exists and is up; the request (nodes, CPUs,
memory, GPUs per node, time) fits the partition's limits and at least one of its usable nodes.
Every Slurm command has a timeout (mspgt/cluster/slurm.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mspgt.cluster.slurm import (
    DEFAULT_TIMEOUT_S,
    DEV_CLUSTER_HINT,
    PartitionInfo,
    check_slurm_config,
    controller_answers,
    parse_gres_gpus,
    parse_memory_mb,
    query_partition,
)
from mspgt.errors import MspgtError

log = logging.getLogger(__name__)

FIX_SUFFIX = "in your launcher file (docs/slurm.md), or pick another partition (`sinfo -s`)"


@dataclass(frozen=True)
class ResourceRequest:
    """What one job of the sweep asks Slurm for, per node (memory None: Slurm's default per CPU)."""

    nodes: int
    cpus_per_node: int
    memory_mb_per_node: int | None
    gpus_per_node: int
    gpu_type: str | None
    time_min: int

    def per_node(self) -> str:
        mem = "default memory" if self.memory_mb_per_node is None else f"{self.memory_mb_per_node} MB"
        gpu = f"{self.gpus_per_node} GPU" + (f" ({self.gpu_type})" if self.gpu_type else "")
        return f"{self.cpus_per_node} CPUs, {mem}, {gpu}"

    def describe(self) -> str:
        return f"{self.nodes} node(s) x [{self.per_node()}] for {self.time_min} min"


def _positive_int(launcher: Mapping[str, Any], key: str, default: int | None, minimum: int = 1) -> int | None:
    value = launcher.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MspgtError(f"hydra.launcher.{key}={value!r} is not a whole number >= {minimum}",
                         f"set hydra.launcher.{key} to an integer >= {minimum}, or null")
    return value


def _gpu_request(launcher: Mapping[str, Any], tasks: int) -> tuple[int, str | None]:
    """GPUs per node and their type, from gpus_per_node (int or `type:n`), gpus_per_task or gres."""
    per_node = launcher.get("gpus_per_node")
    if isinstance(per_node, str):
        n, types = parse_gres_gpus(f"gpu:{per_node}")
        return n, (types[0] if types else None)
    if per_node is not None:
        return _positive_int(launcher, "gpus_per_node", 0, minimum=0) or 0, None
    per_task = _positive_int(launcher, "gpus_per_task", None)
    if per_task is not None:
        return per_task * tasks, None
    gres = launcher.get("gres")
    if gres:
        n, types = parse_gres_gpus(str(gres))
        return n, (types[0] if types else None)
    return 0, None


def resource_request(launcher: Mapping[str, Any]) -> ResourceRequest:
    """The per-node request of a submitit_slurm launcher config (keys as in hydra-submitit-launcher 1.2)."""
    nodes = _positive_int(launcher, "nodes", 1) or 1
    tasks = _positive_int(launcher, "tasks_per_node", 1) or 1
    gpus, gpu_type = _gpu_request(launcher, tasks)
    cpus_per_gpu = _positive_int(launcher, "cpus_per_gpu", None)
    cpus_per_task = _positive_int(launcher, "cpus_per_task", 1) or 1
    cpus = max(cpus_per_task * tasks, (cpus_per_gpu or 0) * gpus)
    memory: int | None = None
    if launcher.get("mem_gb") is not None:
        mem_gb = launcher["mem_gb"]
        if isinstance(mem_gb, bool) or not isinstance(mem_gb, (int, float)) or mem_gb <= 0:
            raise MspgtError(f"hydra.launcher.mem_gb={mem_gb!r} is not a positive number", "set it in GB, e.g. 64")
        memory = int(mem_gb * 1024)
    elif launcher.get("mem_per_cpu") is not None:
        memory = parse_memory_mb(launcher["mem_per_cpu"]) * cpus
    elif launcher.get("mem_per_gpu") is not None and gpus:
        memory = parse_memory_mb(launcher["mem_per_gpu"]) * gpus
    time_min = _positive_int(launcher, "timeout_min", 60) or 60
    return ResourceRequest(nodes=nodes, cpus_per_node=cpus, memory_mb_per_node=memory, gpus_per_node=gpus,
                           gpu_type=gpu_type, time_min=time_min)


def check_request_fits(request: ResourceRequest, partition: PartitionInfo) -> None:
    """Raise MspgtError where the partition's limits or nodes cannot run this request."""
    p = partition.name
    if partition.state != "UP":
        raise MspgtError(f"partition {p!r} is {partition.state}: jobs would wait until an admin brings it up",
                         f"pick a partition that is up (`sinfo -s`){'; ' + DEV_CLUSTER_HINT if p == 'debug' else ''}")
    if partition.max_time_min is not None and request.time_min > partition.max_time_min:
        raise MspgtError(f"hydra.launcher.timeout_min={request.time_min} exceeds partition {p!r}'s time limit "
                         f"of {partition.max_time_min} min",
                         f"set hydra.launcher.timeout_min<={partition.max_time_min} {FIX_SUFFIX}")
    if partition.max_nodes is not None and request.nodes > partition.max_nodes:
        raise MspgtError(f"hydra.launcher.nodes={request.nodes} exceeds partition {p!r}'s MaxNodes={partition.max_nodes}",
                         f"set hydra.launcher.nodes<={partition.max_nodes} {FIX_SUFFIX}")
    if partition.max_cpus_per_node is not None and request.cpus_per_node > partition.max_cpus_per_node:
        raise MspgtError(f"{request.cpus_per_node} CPUs per node exceed partition {p!r}'s MaxCPUsPerNode="
                         f"{partition.max_cpus_per_node}",
                         f"lower hydra.launcher.cpus_per_task {FIX_SUFFIX}")
    if (partition.max_mem_per_node_mb is not None and request.memory_mb_per_node is not None
            and request.memory_mb_per_node > partition.max_mem_per_node_mb):
        raise MspgtError(f"{request.memory_mb_per_node} MB per node exceed partition {p!r}'s MaxMemPerNode="
                         f"{partition.max_mem_per_node_mb} MB",
                         f"lower hydra.launcher.mem_gb {FIX_SUFFIX}")
    if not partition.nodes:
        raise MspgtError(f"partition {p!r} has no nodes", "pick another partition (`sinfo -s`)")
    _check_node_resources(request, partition)


def _check_node_resources(request: ResourceRequest, partition: PartitionInfo) -> None:
    """Name the first resource that no node has, else require enough usable nodes that fit."""
    p, nodes = partition.name, partition.nodes
    largest = max(n.cpus for n in nodes)
    if request.cpus_per_node > largest:
        raise MspgtError(f"each job asks for {request.cpus_per_node} CPUs per node, but the largest node of "
                         f"partition {p!r} has {largest}",
                         f"set hydra.launcher.cpus_per_task<={largest} {FIX_SUFFIX}")
    most_mem = max(n.memory_mb for n in nodes)
    if request.memory_mb_per_node is not None and request.memory_mb_per_node > most_mem:
        raise MspgtError(f"each job asks for {request.memory_mb_per_node} MB of memory per node, but the largest "
                         f"node of partition {p!r} has {most_mem} MB",
                         f"set hydra.launcher.mem_gb<={most_mem // 1024} {FIX_SUFFIX}")
    most_gpus = max(n.gpus for n in nodes)
    if request.gpus_per_node > most_gpus:
        fix = (f"set hydra.launcher.gpus_per_node<={most_gpus} {FIX_SUFFIX}" if most_gpus else
               "pick a partition with GPUs (`sinfo -o '%P %G'`), or set hydra.launcher.gpus_per_node=null "
               "(and gres=null) to run on CPUs")
        raise MspgtError(f"each job asks for {request.gpus_per_node} GPU(s) per node, but the nodes of partition "
                         f"{p!r} have {f'at most {most_gpus}' if most_gpus else 'none'}", fix)
    if request.gpu_type is not None and not any(request.gpu_type in n.gpu_types for n in nodes):
        types = sorted({t for n in nodes for t in n.gpu_types})
        raise MspgtError(f"GPU type {request.gpu_type!r} is not in partition {p!r} (it has {types or 'untyped GPUs'})",
                         f"request one of {types} or an untyped count {FIX_SUFFIX}")
    fitting = [n for n in nodes if n.cpus >= request.cpus_per_node and n.gpus >= request.gpus_per_node
               and (request.memory_mb_per_node is None or n.memory_mb >= request.memory_mb_per_node)
               and (request.gpu_type is None or request.gpu_type in n.gpu_types)]
    if len(fitting) < request.nodes:
        raise MspgtError(f"each job needs {request.nodes} node(s) with [{request.per_node()}] but partition {p!r} "
                         f"has {len(fitting)} such node(s)", f"lower the request {FIX_SUFFIX}")
    usable = [n for n in fitting if n.usable]
    if len(usable) < request.nodes:
        states = sorted({n.state for n in fitting})
        raise MspgtError(f"the nodes of partition {p!r} that fit the request are not usable now (states {states}): "
                         "jobs would wait until an admin returns them",
                         f"pick a partition whose nodes are up (`sinfo -N -p {p}`), or lower the request")


def check_slurm_launcher(launcher: Mapping[str, Any], timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """Every pre-flight check for a submitit_slurm launcher config; returns a one-line summary for the log."""
    conf = check_slurm_config()
    if not controller_answers(timeout_s):
        raise MspgtError(f"the Slurm controller does not answer `scontrol ping` (configuration: {conf})",
                         f"check that slurmctld runs and SLURM_CONF points at its slurm.conf; {DEV_CLUSTER_HINT}")
    request = resource_request(launcher)
    partition = query_partition(launcher.get("partition"), timeout_s)
    check_request_fits(request, partition)
    usable = sum(n.usable for n in partition.nodes)
    return (f"Slurm pre-flight ok: partition {partition.name!r} ({usable}/{len(partition.nodes)} nodes usable) "
            f"fits {request.describe()}")
