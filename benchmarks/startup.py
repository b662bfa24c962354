"""Where a run's fixed start goes, and what warm actors save (issue 33).

    fedrs bench startup [--set name=value ...] --json out.json

Workload: the default run (``fedrs run`` with no options: PromptFL, ``fedrs-tiny``, the
synthetic default data, 20 rounds), 2 client actors of 1 CPU; every side in a fresh child
process with its own local Ray, one after the other.

- ``floor``: Ray up, then one Ray task that imports torch (its wall time, submit to result):
  the least any run on Ray pays before it can train.
- ``run``: ``runner.run`` of the default config, with the parts ``summary.json`` records
  (``startup``: preflight, Ray, spawn, actors up, process + imports, setup, backbone, first
  parameters, until round 1), and the same rounds by the sequential loop of prompt-FL research
  code (``research_loop``, one process, one torch thread, the model built in-process)::

      run efficiency = sequential loop total / (workers x fedrs run total)       (target >= 0.8)

  (the loop's total: building the model and every round; fedrs's: ``run`` from its call, Ray
  start, actors and the rounds; both after the child's imports).
- ``kept``: the same default run twice on a Ray cluster that stays up (one started by the
  benchmark, as ``ray start`` would), with ``resources.keep_warm_s``: the second run (Ray
  joined again, the actors the first kept re-initialised) against the sequential loop, as
  above::

      kept-run efficiency = sequential loop total / (workers x second run total)

  Both runs compute the same thing as a cold run (``tests/test_warm.py``); their accuracies
  are compared with the ``run`` side's (``same_results``).
- ``sweep``: a sweep of ``trials`` trials of the same config (seeds 0..), one at a time
  (``sweep.max_concurrent = 1``), once with warm actors and once cold (``sweep.warm``). The
  n-th trial's start: from the end of trial n - 1 to the beginning of trial n's round 1 (Tune's
  hand-over included)::

      warm start ratio = the last warm trial's start / floor                    (target <= 1.5)

  Both sweeps compute the same trials: their final accuracies are compared
  (``same_results``).

Options (``--set``): ``rounds`` (20: the default run's; the sweep's trials too), ``trials``
(4), ``workers`` (2).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from fedrs.benchmarks.common import machine_info, print_table, write_result
from fedrs.benchmarks.harness_proc import child_main, run_child

log = logging.getLogger(__name__)
WARM_TARGET, RUN_TARGET = 1.5, 0.8


def _config(rounds: int, workers: int, seed: int = 0, data: str = "") -> Any:
    from fedrs.core.config import RunConfig

    return RunConfig().replace(
        **{
            "federation.rounds": rounds,
            "federation.seed": seed,
            "resources.num_actors": workers,
            "resources.num_cpus_per_client": 1.0,
            **({"data.path": data} if data else {}),
        }
    )


def _floor() -> dict[str, Any]:
    import ray

    from fedrs.orchestrator.spawn import connect_ray

    t = time.perf_counter()
    connect_ray()
    ray_s = time.perf_counter() - t

    @ray.remote(num_cpus=1)
    def import_torch() -> str:
        import torch

        return torch.__version__

    t = time.perf_counter()
    ray.get(import_torch.remote())
    return {"ray_s": ray_s, "floor_s": time.perf_counter() - t}


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    """``runner.run`` of the short default run, then the sequential loop on its data."""
    from rich.console import Console

    from fedrs.benchmarks.research_loop import run_sequential
    from fedrs.orchestrator.runner import run

    cfg = _config(spec["rounds"], spec["workers"])
    out = Path(spec["work"]) / "run"
    t = time.perf_counter()
    summary = run(cfg, out=str(out), console=Console(quiet=True))
    run_s = time.perf_counter() - t
    data = str(out / "data")  # the synthetic default, built inside the run
    seq = run_sequential(cfg.replace(**{"data.path": data}), data)
    seq_s = seq["build_s"] + sum(r["round_s"] for r in seq["rounds"])
    return {
        "run_s": run_s,
        "startup": summary["startup"],
        "rounds_s": sum(
            json.loads(x)["wall_s"] for x in (out / "metrics.jsonl").read_text().splitlines()
        ),
        "sequential_s": seq_s,
        "sequential_build_s": seq["build_s"],
        "accuracy": summary["final"].get("accuracy"),
    }


def _kept(spec: dict[str, Any]) -> dict[str, Any]:
    """The default run twice on the up cluster at ``spec["address"]``, its actors kept between
    them; then the sequential loop on the same data."""
    import os

    import ray
    from rich.console import Console

    from fedrs.benchmarks.research_loop import run_sequential
    from fedrs.orchestrator import warm
    from fedrs.orchestrator.runner import run

    os.environ["RAY_ADDRESS"] = spec["address"]
    cfg = _config(spec["rounds"], spec["workers"], data=spec["data"]).replace(
        **{"resources.keep_warm_s": 600.0}
    )
    runs = []
    for i in range(2):
        t = time.perf_counter()
        summary = run(cfg, out=str(Path(spec["work"]) / f"kept-{i}"), console=Console(quiet=True))
        runs.append(
            {
                "run_s": time.perf_counter() - t,
                "startup": summary["startup"],
                "accuracy": summary["final"].get("accuracy"),
                "pids": sorted(a["pid"] for a in summary["actors"]),
            }
        )
        ray.shutdown()  # the next run joins the cluster again, as a new `fedrs run` would
    ray.init(address=spec["address"])
    ray.get(warm.registry().evict.remote())
    ray.shutdown()
    seq = run_sequential(cfg, spec["data"])
    return {
        "runs": runs,
        "reused": runs[0]["pids"] == runs[1]["pids"],
        "sequential_s": seq["build_s"] + sum(r["round_s"] for r in seq["rounds"]),
    }


def _up_cluster(workers: int) -> Any:
    """A one-node Ray cluster on this machine that outlives the runs joining it (stopped by
    the caller: ``shutdown``). Ray picks this machine's address: a head pinned to 127.0.0.1
    by ``cluster_utils`` cannot be joined from another process (Ray 2.60; measured)."""
    from ray.cluster_utils import Cluster

    return Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": workers, "include_dashboard": False},
    )


def _sweep(spec: dict[str, Any]) -> dict[str, Any]:
    """The same ``trials`` trials swept warm, then cold; per trial its start."""
    from rich.console import Console

    from fedrs.orchestrator.sweep.results import read_results
    from fedrs.orchestrator.sweep.run import run_sweep
    from fedrs.orchestrator.sweep.spec import STATUS

    work = Path(spec["work"])
    out: dict[str, Any] = {}
    for warm in (True, False):
        name = "warm" if warm else "cold"
        path = work / f"{name}.toml"
        path.write_text(
            "[base]\n"
            f"federation.rounds = {spec['rounds']}\n"
            f"resources.num_actors = {spec['workers']}\n"
            "resources.num_cpus_per_client = 1.0\n"
            f'data.path = "{spec["data"]}"\n'
            "[grid]\n"
            f'"federation.seed" = {list(range(spec["trials"]))}\n'
            "[sweep]\nmax_concurrent = 1\n"
            f"warm = {str(warm).lower()}\n"
        )
        t = time.perf_counter()
        run_sweep(str(path), out=str(work / name), console=Console(quiet=True))
        wall = time.perf_counter() - t
        rows = sorted(read_results(work / name), key=lambda r: r["trial"])
        trials, ended = [], None
        for r in rows:
            st = json.loads((work / name / STATUS / f"{r['trial']}.json").read_text())
            timing = st.get("timing", {})
            round_1 = st["started"] + timing.get("data_s", 0.0) + timing.get("start_s", 0.0)
            trials.append(
                {
                    "trial": r["trial"],
                    "status": r["status"],
                    "accuracy": r.get("final_accuracy"),
                    "start_s": timing.get("start_s"),
                    # from the previous trial's end: Tune's hand-over, data, start
                    "handover_start_s": None if ended is None else round_1 - ended,
                    "total_s": timing.get("total_s"),
                }
            )
            ended = st["started"] + timing.get("total_s", 0.0)
        out[name] = {"wall_s": wall, "trials": trials}
    return out


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """A child's side: one of floor / run / sweep."""
    side = spec["side"]
    if side == "floor":
        result = _floor()
    elif side == "run":
        result = _run(spec)
    elif side == "kept":
        result = _kept(spec)
    else:
        result = _sweep(spec)
    return {**result, "params": {}}


def main(json_path: str | None = None, **options: Any) -> dict[str, Any]:
    o = {"rounds": 20, "trials": 4, "workers": 2}
    unknown = set(options) - set(o)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; known: {sorted(o)}")
    o.update({k: int(v) for k, v in options.items()})
    if o["trials"] < 2:
        raise ValueError("trials must be >= 2 (the n-th trial is one after another)")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedrs-bench-startup-") as tmp:
        work = Path(tmp)
        floor = run_child(__name__, {"side": "floor"}, work, "floor")
        run = run_child(__name__, {"side": "run", "work": str(work), **o}, work, "run")
        data = str(work / "run" / "data")
        sweep = run_child(
            __name__, {"side": "sweep", "work": str(work), "data": data, **o}, work, "sweep"
        )
        cluster = _up_cluster(o["workers"])
        try:
            kept = run_child(
                __name__,
                {"side": "kept", "work": str(work), "data": data, "address": cluster.address, **o},
                work,
                "kept",
            )
        finally:
            cluster.shutdown()
    for side in (floor, run, sweep, kept):
        side.pop("params", None)
    warm, cold = sweep["warm"]["trials"], sweep["cold"]["trials"]
    same = [a["accuracy"] for a in warm] == [b["accuracy"] for b in cold] and all(
        r["accuracy"] == run["accuracy"] for r in kept["runs"]
    )
    warm_ratio = warm[-1]["handover_start_s"] / floor["floor_s"]
    run_eff = run["sequential_s"] / (o["workers"] * run["run_s"])
    second = kept["runs"][1]
    kept_eff = kept["sequential_s"] / (o["workers"] * second["run_s"])
    parts = {k: v for k, v in run["startup"].items() if isinstance(v, float | int)}
    rows = [{"part": f"run: {k}", "seconds": round(v, 3)} for k, v in parts.items()] + [
        {"part": "floor: Ray task importing torch", "seconds": round(floor["floor_s"], 3)},
        {"part": "run: whole run() call", "seconds": round(run["run_s"], 3)},
        {"part": "run: its rounds", "seconds": round(run["rounds_s"], 3)},
        {"part": "sequential loop: build + rounds", "seconds": round(run["sequential_s"], 3)},
        *(
            {
                "part": f"sweep {name}: trial {i + 1} start (from trial {i}'s end)",
                "seconds": round(t["handover_start_s"], 3),
            }
            for name in ("warm", "cold")
            for i, t in enumerate(sweep[name]["trials"])
            if t["handover_start_s"] is not None
        ),
        {
            "part": "kept: first run() call (actors started, kept)",
            "seconds": round(kept["runs"][0]["run_s"], 3),
        },
        {
            "part": "kept: second run() call (Ray joined, kept actors)",
            "seconds": round(second["run_s"], 3),
        },
        {
            "part": "kept: second run, until round 1",
            "seconds": second["startup"]["until_round_1_s"],
        },
        {
            "part": "kept: sequential loop: build + rounds",
            "seconds": round(kept["sequential_s"], 3),
        },
        {"part": "sweep warm: wall", "seconds": round(sweep["warm"]["wall_s"], 2)},
        {"part": "sweep cold: wall", "seconds": round(sweep["cold"]["wall_s"], 2)},
    ]
    print_table("start-up: where the fixed cost goes", rows)
    log.info(
        "warm start ratio %.2f (target <= %.1f); run efficiency %.2f (target >= %.1f); "
        "second run on kept actors %.2f (reused: %s)",
        warm_ratio,
        WARM_TARGET,
        run_eff,
        RUN_TARGET,
        kept_eff,
        kept["reused"],
    )
    result = {
        "benchmark": "startup",
        "ratios": {
            "warm_start_vs_floor": round(warm_ratio, 3),
            "run_efficiency_vs_sequential": round(run_eff, 3),
            "kept_run_efficiency_vs_sequential": round(kept_eff, 3),
            "cold_vs_warm_trial_start": round(
                cold[-1]["handover_start_s"] / warm[-1]["handover_start_s"], 2
            ),
        },
        "targets": {
            "warm_start_vs_floor": WARM_TARGET,
            "run_efficiency_vs_sequential": RUN_TARGET,
            "kept_run_efficiency_vs_sequential": RUN_TARGET,
        },
        "same_results": same,
        "floor": floor,
        "run": run,
        "sweep": sweep,
        "kept": kept,
        "rows": rows,
        "setup": {**o, "wall_s": round(time.perf_counter() - t0, 1)},
        "machine": machine_info(),
    }
    write_result(result, json_path)
    return result


if __name__ == "__main__":
    child_main(measure)
