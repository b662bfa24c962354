"""fedrs on Flower's deployment runtime against the Ray simulation, on the same loopback workload.

    fedrs bench deploy [--set name=value ...] --json out.json

Workload: ``method`` (PromptFL) on the synthetic default build with ``sites`` partitions,
``rounds`` rounds of every client, 1 local epoch. Two sides on the same config and build, one
after the other in one process:

- simulation: ``fedrs run`` (Ray, ``sites`` client actors);
- deployment: ``fedrs deploy local --sites N`` (a SuperLink and N SuperNodes on 127.0.0.1,
  TLS and registered site keys, every process stopped at the end);
- secure: the same deployment with ``secagg.enabled`` (Flower's SecAgg+).

Preconditions: the deployment computed what the simulation did (final global tensors
bit-identical), and the secure one the same up to quantization (every round the same clients
accepted, final tensors within ``SECURE_TOL``: the stated per-round bound is about 1e-6 here,
and three rounds of training may grow it); else those figures are not compared. Figures::

    overhead = median round wall (deployment) / median round wall (simulation)
    secure overhead = median round wall (secure) / median round wall (deployment)
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
SECURE_TOL = 1e-5  # the secure run's final tensors against the plain deployment's


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
        sec = root / "secure"
        local(cfg.replace(**{"secagg.enabled": True}), int(o["sites"]), out=str(sec), console=quiet)
        a, b, c = (checkpoint.load(d)[1] for d in (sim, dep, sec))
        same = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        secure_diff = max(float(np.abs(b[k].astype(np.float64) - c[k]).max()) for k in b)
        sides = {"simulation": sim, "deployment": dep, "secure": sec}
        recs = {side: _records(d, "metrics.jsonl") for side, d in sides.items()}
        walls = {side: [r["wall_s"] for r in rs] for side, rs in recs.items()}
        wire = {side: _records(sides[side], "wire.jsonl") for side in ("deployment", "secure")}
    finally:
        tmp.cleanup()
    medians = {k: statistics.median(v) for k, v in walls.items()}
    accepted = [[r["clients_ok"] for r in recs[s]] for s in ("deployment", "secure")]
    secure_same = accepted[0] == accepted[1] and secure_diff <= SECURE_TOL
    accounted = [r["bytes_up"] + r["bytes_down"] for r in recs["deployment"]]
    on_wire = {k: [w["sent"] + w["received"] for w in v] for k, v in wire.items()}
    rows = [{"side": k, "median_round_s": medians[k], "rounds": len(walls[k])} for k in medians]
    ratio = medians["deployment"] / medians["simulation"] if same else None
    secure_ratio = medians["secure"] / medians["deployment"] if secure_same else None
    print_table(f"deployment / simulation: {ratio}; secure / deployment: {secure_ratio}", rows)
    result = {
        "benchmark": "deploy",
        "same_final_tensors": same,
        "secure_max_abs_diff": secure_diff,
        "secure_same_clients": accepted[0] == accepted[1],
        "overhead": ratio,
        "secure_overhead": secure_ratio,
        "median_round_s": medians,
        "round_walls_s": walls,
        "accounted_bytes_per_round": accounted,
        "wire_bytes_per_round": on_wire["deployment"],
        "secure_wire_bytes_per_round": on_wire["secure"],
        "wire_over_accounted": [
            w / a for w, a in zip(on_wire["deployment"], accounted, strict=False) if a
        ],
        "setup": o,
        "wall_s": time.perf_counter() - t0,
        "machine": machine_info(),
    }
    write_result(result, json_path)
    return result
