"""Sweep efficiency: the same trials run concurrently by ``fedrs sweep`` and one after another.

    fedrs bench sweep [--set name=value ...] --json out.json

Workload: ``alphas x methods x seeds`` trials (default 2 x 2 x 2 = 8), each a short federation
of the tiny random CLIP on the synthetic default data (one build per alpha x seed, made before
either side is timed and shared by both).

- sequential: one process, Ray started once, ``runner.run`` for every trial in turn, each
  given the whole machine (``workers`` client actors of one CPU) - the hand-written loop a
  sweep replaces;
- sweep: ``fedrs sweep`` of the same trials, each with one client actor of one CPU, so Tune
  runs ``workers`` trials at once in the same total resources.

    ratio = sequential seconds / sweep seconds      (>= 2.5 is the target; 1.0 = no loss)

The sweep's trials take over the actors of the trial before them (``sweep.warm``, the default:
issue 33); the target was 0.85 before (issue 15).

Both sides compute the same trials (same configs, data and seeds; only ``num_actors`` differs,
which does not change results): ``final_accuracy`` per trial is compared. Beside the totals,
each trial's fixed cost is reported (``sweep.progress.RunClock``): ``start_s`` (preflight,
driver and actor spawn, backbone, first parameters), ``rounds_s`` and ``finish_s``; a sweep of
many short trials pays the start again and again, so that is where it has to be cut.

Options (``--set``): ``alphas`` (0.1,0.5), ``methods`` (promptfl,fedrsclip), ``seeds`` (0,1),
``rounds`` (3), ``clients`` (6), ``clients_per_round`` (3), ``per_class`` (10), ``image_size``
(32), ``local_epochs`` (1), ``workers`` (2), ``order`` (sweep-first | sequential-first: which
side runs first), ``keep`` (keep the sweep and run folders here).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedrs.benchmarks.common import machine_info, print_table, write_result
from fedrs.benchmarks.harness import machine_cpu

log = logging.getLogger(__name__)
TARGET = 2.5


def _list(value: Any, cast: type) -> list[Any]:
    if isinstance(value, list | tuple):
        return [cast(v) for v in value]
    return [cast(v) for v in str(value).split(",") if str(v).strip()]


def sweep_table(
    alphas: list[float],
    methods: list[str],
    seeds: list[int],
    base: dict[str, Any],
) -> dict[str, Any]:
    return {
        "base": base,
        "grid": {"data.alpha": alphas, "method.name": methods, "federation.seed": seeds},
    }


def run_sequential(trials: list[Any], builds: Path, workers: int, root: Path) -> dict[str, Any]:
    """Every trial with ``workers`` actors, one after another in this process."""
    from rich.console import Console

    from fedrs.orchestrator.runner import run
    from fedrs.orchestrator.sweep.builds import ensure_build
    from fedrs.orchestrator.sweep.progress import RunClock

    out, t0 = [], time.perf_counter()
    for t in trials:
        clock = RunClock()
        cfg = t.cfg.replace(
            **{
                "data.path": ensure_build(t.cfg, {}, builds),
                "resources.num_actors": workers,
            }
        )
        clock.data_s = time.perf_counter() - clock.t0
        summary = run(
            cfg, out=str(root / t.name), on_round=clock.on_round, console=Console(quiet=True)
        )
        out.append(
            {
                "trial": t.name,
                "final_accuracy": summary["final"].get("accuracy"),
                **clock.split(),
            }
        )
    return {"wall_s": time.perf_counter() - t0, "trials": out}


def run_concurrent(spec: dict[str, Any], sweep_dir: Path, builds: Path) -> dict[str, Any]:
    """``fedrs sweep`` of ``spec``, its builds already made (linked into the sweep folder)."""
    import json

    from rich.console import Console

    from fedrs.orchestrator.sweep.results import read_results
    from fedrs.orchestrator.sweep.run import run_sweep
    from fedrs.orchestrator.sweep.spec import BUILDS, expand, parse_sweep
    from fedrs.orchestrator.sweep.store import write_spec

    sweep = parse_sweep(spec)
    sweep_dir.mkdir(parents=True)
    (sweep_dir / BUILDS).symlink_to(builds, target_is_directory=True)
    trials = expand(sweep)
    write_spec(sweep_dir, sweep, trials)
    t0 = time.perf_counter()
    run_sweep(resume=str(sweep_dir), console=Console(quiet=True))
    wall = time.perf_counter() - t0
    rows = {r["trial"]: r for r in read_results(sweep_dir)}
    out = []
    for t in trials:
        status = json.loads((sweep_dir / "status" / f"{t.name}.json").read_text())
        out.append(
            {
                "trial": t.name,
                "status": rows[t.name]["status"],
                "final_accuracy": rows[t.name].get("final_accuracy"),
                **status.get("timing", {}),
            }
        )
    return {"wall_s": wall, "trials": out}


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else float("nan")


def run(
    alphas: Any = (0.1, 0.5),
    methods: Any = ("promptfl", "fedrsclip"),
    seeds: Any = (0, 1),
    rounds: int = 3,
    clients: int = 6,
    clients_per_round: int = 3,
    per_class: int = 10,
    image_size: int = 32,
    local_epochs: int = 1,
    workers: int = 2,
    order: str = "sweep-first",
    keep: str | None = None,
) -> dict[str, Any]:
    from fedrs.orchestrator.spawn import connect_ray
    from fedrs.orchestrator.sweep.builds import ensure_build
    from fedrs.orchestrator.sweep.spec import expand, parse_sweep

    if order not in ("sweep-first", "sequential-first"):
        raise ValueError(f"order must be sweep-first or sequential-first, got {order!r}")
    tmp = tempfile.TemporaryDirectory(prefix="fedrs-bench-sweep-")
    root = Path(keep) if keep else Path(tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    base = {
        "model": {"arch": "fedrs-tiny"},
        "data": {
            "partition": "dirichlet",
            "num_clients": clients,
            "per_class": per_class,
            "image_size": image_size,
        },
        "federation": {"rounds": rounds, "clients_per_round": clients_per_round},
        "client": {"local_epochs": local_epochs},
        "resources": {"num_actors": 1, "num_cpus_per_client": 1.0},
    }
    spec = sweep_table(_list(alphas, float), _list(methods, str), _list(seeds, int), base)
    trials = expand(parse_sweep(spec))
    builds = (root / "builds").resolve()
    t_build = time.perf_counter()
    for t in trials:  # untimed: both sides find their data built
        ensure_build(t.cfg, {}, builds)
    build_s = time.perf_counter() - t_build
    connect_ray()
    sides: dict[str, dict[str, Any]] = {}
    busy: dict[str, float] = {}
    for side in ("sweep", "sequential") if order == "sweep-first" else ("sequential", "sweep"):
        log.info("%s: %d trials", side, len(trials))
        before = machine_cpu()
        if side == "sweep":
            sides[side] = run_concurrent(spec, root / "sweep", builds)
        else:
            sides[side] = run_sequential(trials, builds, workers, root / "sequential")
        after = machine_cpu()
        busy[side] = (after.get("busy", 0) - before.get("busy", 0)) / sides[side]["wall_s"]
    seq, swp = sides["sequential"], sides["sweep"]
    diffs = [
        abs(a["final_accuracy"] - b["final_accuracy"])
        for a, b in zip(seq["trials"], swp["trials"], strict=True)
        if a.get("final_accuracy") is not None and b.get("final_accuracy") is not None
    ]
    rows = [
        {
            "side": name,
            "wall_s": round(s["wall_s"], 1),
            "trials": len(s["trials"]),
            "start_s_mean": round(_mean(s["trials"], "start_s"), 2),
            "rounds_s_mean": round(_mean(s["trials"], "rounds_s"), 2),
            "finish_s_mean": round(_mean(s["trials"], "finish_s"), 2),
            "trial_total_s_mean": round(_mean(s["trials"], "total_s"), 2),
            "cores_busy": round(busy[name], 2),
        }
        for name, s in sides.items()
    ]
    ratio = seq["wall_s"] / swp["wall_s"]
    print_table(f"sweep vs sequential: {len(trials)} trials, {workers} CPUs", rows)
    log.info("efficiency %.3f (target %.2f)", ratio, TARGET)
    tmp.cleanup()
    return {
        "benchmark": "sweep",
        "ratio": round(ratio, 3),
        "ratio_meaning": (
            "sequential seconds / sweep seconds for the same trials in the same total "
            f"resources ({workers} CPUs): 1.0 = no loss, > 1 = the sweep also overlaps fixed costs"
        ),
        "target": TARGET,
        "rows": rows,
        "sequential": seq,
        "sweep": swp,
        "final_accuracy_max_abs_diff": max(diffs) if diffs else None,
        "setup": {
            "trials": len(trials),
            "alphas": _list(alphas, float),
            "methods": _list(methods, str),
            "seeds": _list(seeds, int),
            "rounds": rounds,
            "clients": clients,
            "clients_per_round": clients_per_round,
            "per_class": per_class,
            "image_size": image_size,
            "local_epochs": local_epochs,
            "sequential": f"{workers} client actors x 1 CPU per trial, trials one after another",
            "sweep": f"1 client actor x 1 CPU per trial, Tune runs up to {workers} at once",
            "order": order,
            "build_s_untimed": round(build_s, 1),
        },
        "machine": machine_info(),
    }


def main(json_path: str | None = None, **options: Any) -> dict[str, Any]:
    result = run(**options)
    write_result(result, json_path)
    return result
