"""fedrs on Flower's deployment runtime against the Ray simulation, on the same loopback workload.

    fedrs bench deploy [--set name=value ...] --json out.json

Workload: ``method`` (PromptFL) on the synthetic default build with ``sites`` partitions,
``rounds`` rounds of every client, 1 local epoch. Two sides on the same config and build, one
after the other in one process:

- simulation: ``fedrs run`` (Ray, ``sites`` client actors);
- deployment: ``fedrs deploy local --sites N`` (a SuperLink and N SuperNodes on 127.0.0.1,
  TLS and registered site keys, every process stopped at the end).

Precondition: both sides computed the same thing (final global tensors bit-identical, else the
figures are not compared). Figures::

    overhead = median round wall (deployment) / median round wall (simulation)
    wire / accounted = bytes of message content per round (wire.jsonl: both ways, tensors and
                       the JSON of tasks and replies) / fedrs's own bytes_up + bytes_down

Options (``--set``): ``method`` (promptfl), ``sites`` (2), ``rounds`` (3).
"""

from __future__ import annotations

import io
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedrs.benchmarks.common import machine_info, print_table, write_result

log = logging.getLogger(__name__)


def _records(run_dir: Path, name: str) -> list[dict[str, Any]]:
    path = run_dir / name
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def main(json_path: str | None = None, data: str | None = None, **options: Any) -> dict[str, Any]:
    import ray
    from rich.console import Console

    from fedrs.core.config import from_dict
    from fedrs.orchestrator import checkpoint
    from fedrs.orchestrator.deploy import local
    from fedrs.orchestrator.runner import run

    o: dict[str, Any] = {"method": "promptfl", "sites": 2, "rounds": 3}
    unknown = set(options) - set(o)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; known: {sorted(o)}")
    o.update(options)
    t0 = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="fedrs-deploy-")
    root = Path(tmp.name)
    sets = [
        f"method.name={o['method']}",
        f"federation.rounds={int(o['rounds'])}",
        f"federation.clients_per_round={int(o['sites'])}",
        f"data.num_clients={int(o['sites'])}",
        f"resources.num_actors={int(o['sites'])}",
        "client.local_epochs=1",
    ]
    quiet = Console(file=io.StringIO())
    try:
        dep = root / "deploy"
        cfg = from_dict({}, sets + ([f"data.path={data}"] if data else []))
        local(cfg, int(o["sites"]), out=str(dep), console=quiet)
        build = data or str(dep / "data")  # the same build for the simulation
        cfg = from_dict({}, [*sets, f"data.path={build}"])
        sim = root / "sim"
        ray.init(include_dashboard=False)
        try:
            run(cfg, out=str(sim), console=quiet)
        finally:
            ray.shutdown()
        a, b = checkpoint.load(sim)[1], checkpoint.load(dep)[1]
        same = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        walls = {
            side: [r["wall_s"] for r in _records(d, "metrics.jsonl")]
            for side, d in (("simulation", sim), ("deployment", dep))
        }
        recs = _records(dep, "metrics.jsonl")
        wire = _records(dep, "wire.jsonl")
    finally:
        tmp.cleanup()
    medians = {k: statistics.median(v) for k, v in walls.items()}
    accounted = [r["bytes_up"] + r["bytes_down"] for r in recs]
    on_wire = [w["sent"] + w["received"] for w in wire]
    rows = [{"side": k, "median_round_s": medians[k], "rounds": len(walls[k])} for k in medians]
    ratio = medians["deployment"] / medians["simulation"] if same else None
    print_table(f"deployment / simulation per round: {ratio}", rows)
    result = {
        "benchmark": "deploy",
        "same_final_tensors": same,
        "overhead": ratio,
        "median_round_s": medians,
        "round_walls_s": walls,
        "accounted_bytes_per_round": accounted,
        "wire_bytes_per_round": on_wire,
        "wire_over_accounted": [w / a for w, a in zip(on_wire, accounted, strict=False) if a],
        "setup": o,
        "wall_s": time.perf_counter() - t0,
        "machine": machine_info(),
    }
    write_result(result, json_path)
    return result
