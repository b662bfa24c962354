"""Preflight of the cluster: ``RAY_ADDRESS`` answers within seconds, and the client actors'
bundles can ever be placed on the cluster's nodes (on this machine before a local Ray starts; on
the joined cluster after connecting). On an autoscaling cluster ``resources.autoscale_wait_s``
bounds the wait for nodes that could host them."""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from fedrs.actors.placement import client_bundle, driver_bundle
from fedrs.core.config import RunConfig
from fedrs.errors import FedrsError
from fedrs.orchestrator.weights import PROBE_TIMEOUT_S  # one probe timeout for every preflight

log = logging.getLogger(__name__)


class ClusterError(FedrsError):
    """The cluster cannot be reached, or can never host the requested client actors."""


def check_ray_address(address: str | None = None) -> None:
    """``RAY_ADDRESS`` (host:port, ray://host:port) must answer a TCP connect within seconds:
    a wrong address is one line, not minutes of connection retries."""
    address = address if address is not None else os.environ.get("RAY_ADDRESS", "")
    if address in ("", "auto", "local"):
        return
    target = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        host, port = target.hostname or "127.0.0.1", target.port
    except ValueError:
        port = None
    if port is None:
        raise ClusterError(f"RAY_ADDRESS={address!r} is not host:port (e.g. 127.0.0.1:6379)")
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterError(
            f"RAY_ADDRESS={address}: no Ray cluster answers there "
            f"({exc.strerror or type(exc).__name__}); start one with `ray start --head` or "
            f"unset RAY_ADDRESS to run on a local Ray"
        ) from None


def local_capacity() -> dict[str, float]:
    """What a local Ray started on this machine will offer: CPUs (affinity and cgroup quota)
    and the GPUs torch sees."""
    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1.0, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    gpus = 0.0
    try:
        import torch

        gpus = float(torch.cuda.device_count())
    except Exception:  # no usable CUDA
        pass
    return {"CPU": cpus, "GPU": gpus}


def _fits(node: dict[str, float], bundle: dict[str, float]) -> int:
    """How many bundles one node can ever hold (a fractional GPU share packs per GPU)."""
    eps = 1e-9
    n = math.inf
    for res, need in bundle.items():
        if need <= 0:
            continue
        have = float(node.get(res, 0.0))
        if res == "GPU" and need < 1:
            n = min(n, math.floor(1 / need + eps) * math.floor(have + eps))
        else:
            n = min(n, math.floor(have / need + eps))
    return int(n) if n != math.inf else 1 << 30


def _room(fits: list[int], strategy: str) -> int:
    """How many client bundles nodes with ``fits`` room each can take under ``strategy``."""
    if strategy == "STRICT_PACK":
        return max(fits, default=0)
    if strategy == "STRICT_SPREAD":
        return sum(1 for f in fits if f >= 1)
    return sum(fits)


def placement_problem(
    cfg: RunConfig, nodes: list[dict[str, float]], driver_in_group: bool = False
) -> str | None:
    """Why the client actors' placement group can never be placed on ``nodes``, or None.
    With ``driver_in_group`` (a sweep trial's one group) the driver's own reservation
    (``resources.server_num_cpus`` / ``server_num_gpus``) is a bundle of the same group: it
    needs a node too, under the same strategy."""
    res = cfg.resources
    bundle, server = client_bundle(cfg), driver_bundle(cfg)  # the bundles the run reserves
    strategy, count = res.placement_strategy, res.num_actors
    if not server:
        possible = _room([_fits(n, bundle) for n in nodes], strategy)
    else:  # try each node as the driver's; the best choice decides
        possible = 0
        for i, host in enumerate(nodes):
            if _fits(host, server) < 1:
                continue
            left = {k: float(host.get(k, 0)) - server.get(k, 0.0) for k in ("CPU", "GPU")}
            rest = [left if j == i else n for j, n in enumerate(nodes)]
            if driver_in_group and strategy == "STRICT_SPREAD":
                rest = [n for j, n in enumerate(nodes) if j != i]
            fits = [_fits(n, bundle) for n in rest]
            if driver_in_group and strategy == "STRICT_PACK":
                fits = [_fits(left, bundle)]
            possible = max(possible, _room(fits, strategy))
    if possible >= count:
        return None
    have = {
        "CPU": sum(float(n.get("CPU", 0)) for n in nodes),
        "GPU": sum(float(n.get("GPU", 0)) for n in nodes),
    }
    asked = {k: v for k, v in bundle.items() if v > 0}
    hint = (
        "set resources.num_gpus_per_client=0 (no GPU here)"
        if bundle.get("GPU", 0) > 0 and have["GPU"] == 0
        else "lower resources.num_actors or the per-client share"
    )
    if server:
        hint = f"the driver's {server} counted; {hint}"
    return (
        f"cannot place {count} client actors of {asked} ({strategy}): the cluster has "
        f"{len(nodes)} node(s) with {have['CPU']:g} CPU and {have['GPU']:g} GPU in all, room "
        f"for {possible}; {hint}"
    )


def cluster_nodes() -> list[dict[str, float]]:
    """Total resources of each live node of the connected Ray cluster."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def check_cluster(cfg: RunConfig, connect: Callable[[], None] | None = None) -> None:
    """Fail within seconds when the actors can never be placed. Before a local Ray starts the
    check uses this machine's capacity; after ``connect`` (or when Ray is already up), the
    cluster's live nodes. ``resources.autoscale_wait_s > 0`` asks the autoscaler for the
    bundles and waits that long for nodes that fit them."""
    import ray

    if not ray.is_initialized():
        if not os.environ.get("RAY_ADDRESS"):
            problem = placement_problem(cfg, [local_capacity()])
            if problem:
                raise ClusterError(problem)
        else:
            check_ray_address()
        if connect is None:
            return
        connect()
    problem = placement_problem(cfg, cluster_nodes())
    wait = cfg.resources.autoscale_wait_s
    if problem and wait > 0:
        res, bundle = cfg.resources, client_bundle(cfg)
        from ray.autoscaler.sdk import request_resources

        log.warning(
            "%s; waiting up to %.0f s (resources.autoscale_wait_s) for the autoscaler to add "
            "nodes for %d x %s",
            problem,
            wait,
            res.num_actors,
            bundle,
        )
        request_resources(bundles=[dict(bundle) for _ in range(res.num_actors)])
        deadline = time.monotonic() + wait
        try:
            while problem and time.monotonic() < deadline:
                time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
                problem = placement_problem(cfg, cluster_nodes())
        finally:  # the actors' own demand keeps the nodes; a standing request would pin them
            request_resources(bundles=[])
        if problem:
            problem = f"{problem} (waited {wait:.0f} s for the autoscaler)"
    if problem:
        raise ClusterError(problem)
