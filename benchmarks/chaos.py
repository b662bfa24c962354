"""Chaos: faults during a federation, and what survives them.

    fedrs bench chaos [--set name=value ...] --json out.json

Workload: PromptFL on the tiny CLIP and the synthetic default data (``clients`` clients, all
of them every round, ``rounds`` rounds, 2 client actors), on a two-node
``ray.cluster_utils.Cluster`` (head + one worker node, ``cpus`` each) started here. Faults
come from ``federation.faults`` (``fedrs/faults.py``) or from the cluster itself:

* ``actor_killed``: each (round, client) kills its actor's process with probability
  ``1 / clients`` (about one kill a round; Ray restarts the actor);
* ``driver_killed``: the driver actor's process dies mid-round 2 (updates in, aggregate not
  made); then ``--resume``;
* ``node_removed``: the worker node (holding one client actor) leaves after round 1;
* ``straggler``: a client sleeps past ``federation.round_timeout_s`` in round 2;
* ``disk_full``: writing round 2's checkpoint fails with ENOSPC; then ``--resume``.

Per scenario: ``completed`` (every round done, after the resume where there is one),
``rounds``, ``clients_dropped``, ``seconds`` and ``state_matches``: the final global tensors
equal (bit for bit) the uninterrupted run's where the maths says they must (the driver and
disk faults: no client's work is lost), null where clients were dropped (no equality
expected). ``error``: what stopped a scenario that did not complete.

Options (``--set``): ``rounds`` (3), ``clients`` (6), ``timeout_s`` (30), ``cpus`` (4),
``scenarios`` (all, comma-separated).
"""

from __future__ import annotations

import io
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedrs.benchmarks.common import machine_info, print_table, write_result
from fedrs.benchmarks.sweep import _list

log = logging.getLogger(__name__)
SCENARIOS = ("actor_killed", "driver_killed", "node_removed", "straggler", "disk_full")


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    import json

    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def _same(a: Path, b: Path) -> bool:
    from fedrs.orchestrator import checkpoint

    ra, rb = checkpoint.load(a), checkpoint.load(b)
    if ra is None or rb is None or ra[0] != rb[0] or set(ra[1]) != set(rb[1]):
        return False
    return all(np.array_equal(ra[1][k], rb[1][k]) for k in ra[1])


def scenario(name: str, cfg: Any, root: Path, reference: Path, cluster: Any) -> dict[str, Any]:
    """Run one scenario; its row of the report."""
    from rich.console import Console

    from fedrs.errors import FedrsError
    from fedrs.orchestrator.runner import run

    quiet = Console(file=io.StringIO())
    out = root / name
    n = cfg.federation.clients_per_round
    faults = {
        "actor_killed": f"fit@*:p{1 / n:.3f}=exit",
        "driver_killed": "aggregate@2=exit",
        "straggler": f"fit@2:1=sleep:{3 * cfg.federation.round_timeout_s:g}",
        "disk_full": "checkpoint@2=enospc",
    }.get(name, "")
    sets: dict[str, Any] = {"federation.faults": faults, "resources.max_actor_restarts": -1}
    if name == "node_removed":
        sets["resources.placement_strategy"] = "SPREAD"
    run_cfg = cfg.replace(**sets)
    t0, error, resumed = time.perf_counter(), None, False
    remover = None
    if name == "node_removed":  # the worker node leaves once round 1 is recorded
        worker = cluster.list_all_nodes()[1]

        def remove() -> None:
            while len(_metrics(out)) < 1:
                time.sleep(0.2)
            cluster.remove_node(worker)

        remover = threading.Thread(target=remove, daemon=True)
        remover.start()
    try:
        run(run_cfg, out=str(out), console=quiet)
    except (FedrsError, Exception) as exc:  # the fault stopped it: resume without the fault
        log.info("%s stopped: %s", name, str(exc).splitlines()[0])
        try:
            resumed = True
            run(resume=str(out), overrides=["federation.faults="], console=quiet)
        except Exception as exc2:
            error = str(exc2).splitlines()[0]
    m = _metrics(out)
    completed = error is None and [r["round"] for r in m] == list(
        range(1, cfg.federation.rounds + 1)
    )
    dropped = sum(r.get("clients_failed", 0) + r.get("clients_rejected", 0) for r in m)
    exact = name in ("driver_killed", "disk_full")
    return {
        "name": name,
        "completed": bool(completed),
        "rounds": len(m),
        "clients_dropped": int(dropped),
        "resumed": resumed,
        "state_matches": (_same(reference, out) if completed else False) if exact else None,
        "seconds": round(time.perf_counter() - t0, 1),
        "error": error,
    }


def main(json_path: str | None = None, data: str | None = None, **options: Any) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster
    from rich.console import Console

    from fedrs.core.config import RunConfig
    from fedrs.orchestrator.runner import run

    o = {"rounds": 3, "clients": 6, "timeout_s": 30.0, "cpus": 4, "scenarios": list(SCENARIOS)}
    unknown = set(options) - set(o)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; known: {sorted(o)}")
    o.update(options)
    o["scenarios"] = _list(o["scenarios"], str)
    t0 = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="fedrs-chaos-")
    root = Path(tmp.name)
    if ray.is_initialized():
        ray.shutdown()
    node = {"num_cpus": int(o["cpus"]), "object_store_memory": 200 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    rows = []
    try:
        cfg = RunConfig().replace(
            **{
                "method.name": "promptfl",
                "data.path": "",
                "data.num_clients": int(o["clients"]),
                "data.per_class": 8,
                "data.image_size": 32,
                "federation.rounds": int(o["rounds"]),
                "federation.clients_per_round": int(o["clients"]),
                "federation.round_timeout_s": float(o["timeout_s"]),
                "client.local_epochs": 1,
                "resources.num_actors": 2,
            }
        )
        reference = root / "reference"
        run(cfg, out=str(reference), console=Console(file=io.StringIO()))
        data = str(reference / "data")  # every scenario on the same build
        cfg = cfg.replace(**{"data.path": data})
        for name in o["scenarios"]:
            if name not in SCENARIOS:
                raise ValueError(f"unknown scenario {name!r}; choose from {SCENARIOS}")
            rows.append(scenario(name, cfg, root, reference, cluster))
            log.info("%s", rows[-1])
    finally:
        ray.shutdown()
        cluster.shutdown()
        tmp.cleanup()
    result = {
        "benchmark": "chaos",
        "scenarios": rows,
        "all_completed": all(r["completed"] for r in rows),
        "setup": o,
        "wall_s": time.perf_counter() - t0,
        "machine": machine_info(),
    }
    print_table("chaos: every scenario", [{k: r[k] for k in r if k != "error"} for r in rows])
    write_result(result, json_path)
    return result
