"""Parallel efficiency of fedrs against the sequential single-process loop of prompt-FL research
code (PromptFL, FedOTP, FedPGP: one process, build the method once, train the round's clients
one after another, aggregate).

    fedrs bench vs-sequential [--data DIR] [--rounds N] [--set name=value ...] --json out.json

Both sides run the same client code (``fedrs.methods``), the same data, the same sampled clients
(``orchestrator.sampling.sample_clients``), the same ``FitOptions`` and the same strategy
(``orchestrator.strategies.make_strategy``), so they compute the same global tensors (checked:
``max_abs_diff`` of the final tensors). The sequential loop runs with ``torch.set_num_threads(1)``
per worker-equivalent; fedrs runs ``resources.num_actors=workers`` actors with one CPU (one torch
thread) each.

    efficiency = sequential time / (fedrs time x workers)          (1.0 = perfect scaling)

Per round both sides time the same span: sample -> train every sampled client -> aggregate.
By default the two sides alternate round by round (``interleave``): sequential round r, then
fedrs round r (one ``run_round`` call on the driver actor that ``runner.run`` starts, timed from
this process, so it counts dispatch, object-store transfers, validation, the metrics line and
the checkpoint). This machine's speed drifts by tens of percent within a minute, and alternating
rounds makes the drift hit both sides alike; fedrs's actors sit idle while the sequential round
runs. With ``interleave=false`` the whole sequential loop runs first and then fedrs through
``runner.run``, timed by the interval between its round lines reaching the console.

Only the last round evaluates (``federation.eval_every`` > rounds), on both sides identically
(global test split + every client's local split). Steady state = rounds 2..R-1 (no first-round
warm-up, no evaluation); fixed costs (Ray start, driver and actor spawn, first round, evaluation
round, finish) are reported separately and included in the totals.

The machine is shared in development, so the JSON also says who used the cores (from /proc):
``other_cores_*`` is what other users' processes took while each side ran (0 on a quiet
machine), and ``cpu_efficiency`` = the sequential loop's CPU seconds / fedrs's (client actors +
Ray's daemons + driver) per steady round, which other users' load does not move.

A control, ``ceiling``: the same steady-state clients split statically over ``workers`` plain
processes (no Ray, no orchestrator, a barrier per round) - what this machine itself gives for
``workers`` concurrent one-thread trainers (shared caches and memory bandwidth, vCPUs, other
load). ``efficiency_vs_ceiling`` = fedrs's efficiency / the ceiling's.

Default size: the model and image size ``vs-flower`` uses (``fedrs-small``, 128 px: a 0.7 s
client fit here), sized to finish in about 6 minutes. ``--set arch=fedrs-tiny --set
image_size=64 --set clients_per_round=10 --set local_epochs=2 --set rounds=8 --set
per_class=40`` is the stress case (the default until 2026-11-23): 0.13 s fits, where
orchestration's fixed costs and two trainers sharing the VM's caches weigh the most.

Options (``--set``): ``method`` (fedrsclip), ``strategy`` (prompt_avg), ``arch``
(fedrs-small), ``image_size`` (128), ``clients`` (14 data clients), ``per_class`` (24: ~31
training examples per IID client), ``clients_per_round`` (6), ``local_epochs`` (1),
``batch_size`` (32), ``workers`` (2), ``rounds`` (4: steady state = rounds 2..3), ``noniid`` (true:
also a Dirichlet row), ``alpha`` (0.5), ``seed`` (0), ``feature_cache`` (false), ``ceiling``
(true), ``keep`` (a folder to keep the run directories in), ``repeats`` (3: the whole
comparison runs this many times, each on a fresh Ray shut down before the next repeat's
ceiling; ``ratio`` is the median), ``interleave`` (true), ``retain_freed_memory`` (true:
fedrs's actors keep freed heap memory, ``resources.retain_freed_memory``),
``baseline_retain_freed_memory`` (false: research code's loop runs with the C allocator's
defaults; true gives the sequential loop and the ceiling the same tuning, which separates the
allocator's share of the efficiency from parallelism's).
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedrs.benchmarks import plots
from fedrs.benchmarks.common import machine_info, plot_path, print_table, write_result
from fedrs.benchmarks.harness import (
    actor_pids,
    build_data,
    cpu_between,
    cpu_snapshot,
    max_abs_diff,
    merge_cpu,
    run_fedrs,
    steady_index,
    transpose_rows,
)
from fedrs.benchmarks.research_loop import (
    SequentialLoop,
    private_example,
    run_ceiling,
    run_sequential,
    state_store_cost,
)

log = logging.getLogger(__name__)
TARGET = 0.85


# ---------------------------------------------------------------------------------------------
# data and config


# ---------------------------------------------------------------------------------------------
# CPU accounting from /proc (Linux): who used the cores while a phase ran


# ---------------------------------------------------------------------------------------------
# the sequential baseline


# ---------------------------------------------------------------------------------------------
# the machine's own ceiling: the same clients in plain processes, no orchestrator


# ---------------------------------------------------------------------------------------------
# fedrs, timed from outside


def run_interleaved(cfg: Any, data_path: str, run_dir: Path) -> tuple[dict, dict[str, Any]]:
    """Both sides round by round: sequential round r, then fedrs round r (the driver actor's
    ``run_round``, what ``runner.run`` streams), so a machine whose speed drifts over seconds
    slows both sides alike. Returns (sequential result, fedrs result) shaped for ``compare``.
    While the sequential loop runs, fedrs's actors are up and idle."""
    import ray

    from fedrs.methods import method_class
    from fedrs.orchestrator.runner import shutdown_pool, spawn_driver

    t0 = time.perf_counter()
    driver, pool = spawn_driver(cfg, run_dir, method_class(cfg.method.name))
    try:
        ray.get(driver.describe_actors.remote())  # the client actors are up
        spawn_s = time.perf_counter() - t0
        seq = SequentialLoop(cfg, data_path)
        periods, records, snaps = [], [], []
        for rnd in range(1, cfg.federation.rounds + 1):
            seq.round(rnd)
            a = cpu_snapshot()
            t = time.perf_counter()  # after the /proc scan: only the round is timed
            records.append(ray.get(driver.run_round.remote(rnd)))
            periods.append(time.perf_counter() - t)
            snaps.append((a, cpu_snapshot()))
        t = time.perf_counter()
        summary = ray.get(driver.finish.remote())
        finish_s = time.perf_counter() - t
        params = ray.get(driver.params_snapshot.remote())
    finally:
        ray.kill(driver)
        shutdown_pool(pool)
    actors = actor_pids(records)
    steady = [cpu_between(*snaps[i], actors) for i in steady_index(len(records))]
    fedrs = {
        "cpu_steady": merge_cpu([c for c in steady if c]),
        "spawn_s": spawn_s,
        "finish_s": finish_s,
        "periods": periods,
        "records": records,
        "summary": summary,
        "params": params,
    }
    return seq.result(), fedrs


# ---------------------------------------------------------------------------------------------
# comparison


def _worker_busy(rec: dict[str, Any]) -> dict[str, float]:
    busy: dict[str, float] = {}
    for c in rec.get("clients", {}).values():
        busy[str(c.get("worker"))] = busy.get(str(c.get("worker")), 0.0) + float(c["fit_s"] or 0)
    return busy


def compare(
    seq: dict[str, Any], fr: dict[str, Any], workers: int, ray_start_s: float
) -> dict[str, Any]:
    """Efficiencies, fixed costs and where fedrs's steady-state round goes."""
    s_rounds, f_recs, periods = seq["rounds"], fr["records"], fr["periods"]
    steady = steady_index(len(s_rounds))
    s_round = [r["round_s"] for r in s_rounds]
    seq_steady = float(np.mean([s_round[i] for i in steady]))
    fed_steady = float(np.mean([periods[i] for i in steady]))
    seq_total = seq["build_s"] + sum(s_round)
    fed_total = ray_start_s + fr["spawn_s"] + sum(periods) + fr["finish_s"]

    def mean(values: list[float]) -> float:
        return float(np.mean(values))

    seq_client = mean([sum(s_rounds[i]["clients"].values()) for i in steady])
    fed_client = mean(
        [sum(float(c["fit_s"] or 0) for c in f_recs[i]["clients"].values()) for i in steady]
    )
    makespan = mean([max(_worker_busy(f_recs[i]).values()) for i in steady])
    fit_s = mean([f_recs[i]["fit_s"] for i in steady])
    wall_s = mean([f_recs[i]["wall_s"] for i in steady])
    profile = {
        # what the clients themselves cost inside the actors vs in one process
        "client_fit_sum_s": {"sequential": seq_client, "fedrs_actors": fed_client},
        "compute_inflation": fed_client / seq_client,
        # ideal round with fedrs's own client times spread evenly over the workers
        "ideal_round_s": fed_client / workers,
        "busiest_worker_s": makespan,  # minus ideal: load imbalance (whole clients per worker)
        "load_imbalance_s": makespan - fed_client / workers,
        # driver's fit span minus the busiest worker: put/get, dispatch, pool.map, validation
        "dispatch_collect_s": fit_s - makespan,
        "aggregate_record_s": wall_s - fit_s,  # aggregate, server update, the metrics record
        # metrics.jsonl append, checkpoint, streaming the record back to runner.run
        "after_round_s": fed_steady - wall_s,
        "round_s": fed_steady,
    }
    phases: dict[str, float] = {}
    for i in steady:  # the actors' own split of a client's time, when the driver records it
        for c in f_recs[i]["clients"].values():
            for k, v in (c.get("phases") or {}).items():
                phases[k] = phases.get(k, 0.0) + float(v) / len(steady)
    if phases:
        profile["actor_phases_s"] = phases
    # CPU seconds per round instead of wall seconds: what fedrs spends (client actors + Ray's
    # daemons + driver) for the sequential loop's work; insensitive to other users' load
    cpu = fr.get("cpu_steady") or {}
    seq_cpu = mean([s_rounds[i]["cpu_s"] for i in steady])
    fed_cpu = (cpu.get("client_actors_cores", 0) + cpu.get("orchestration_cores", 0)) * fed_steady
    return {
        "efficiency_steady": seq_steady / (workers * fed_steady),
        "cpu_efficiency_steady": seq_cpu / fed_cpu if fed_cpu > 0 else float("nan"),
        "efficiency_total": seq_total / (workers * fed_total),
        "efficiency_driver_wall": seq_steady / (workers * wall_s),
        "speedup_steady": seq_steady / fed_steady,
        "seq_steady_round_s": seq_steady,
        "fedrs_steady_round_s": fed_steady,
        "seq_total_s": seq_total,
        "fedrs_total_s": fed_total,
        "steady_rounds": [i + 1 for i in steady],
        "fixed_costs_s": {
            "fedrs_ray_start": ray_start_s,
            "fedrs_spawn": fr["spawn_s"],
            "fedrs_first_round": periods[0],
            "fedrs_eval_round": periods[-1],
            "fedrs_finish": fr["finish_s"],
            "seq_build": seq["build_s"],
            "seq_first_round": s_round[0],
            "seq_eval_round": s_round[-1],
            "seq_eval_only": s_rounds[-1].get("eval_s", 0.0),
        },
        "profile_steady_per_round": profile,
    }


def summarize(details: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per partition, the efficiencies of every repeat and their median (the machine is noisy:
    one steady window is a few seconds)."""
    out = []
    for label in dict.fromkeys(d["partition"] for d in details):
        runs = [d for d in details if d["partition"] == label]
        row: dict[str, Any] = {"partition": label, "repeats": len(runs)}
        for key in ("efficiency_steady", "cpu_efficiency_steady", "efficiency_total"):
            values = [round(float(d[key]), 3) for d in runs]
            row[key] = values
            row[f"{key}_median"] = round(float(np.median(values)), 3)
        for side in ("sequential", "one_process_all_threads", "fedrs"):
            values = [d["eval_s"][side] for d in runs if d["eval_s"].get(side) is not None]
            if values:
                row[f"eval_s_{side}_median"] = round(float(np.median(values)), 3)
        ceil = [d["ceiling"]["efficiency"] for d in runs if "ceiling" in d]
        if ceil:
            row["ceiling_efficiency"] = [round(float(c), 3) for c in ceil]
            row["ceiling_efficiency_median"] = round(float(np.median(ceil)), 3)
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------


def run(
    data: str | None = None,
    rounds: int = 4,
    method: str = "fedrsclip",
    strategy: str = "prompt_avg",
    arch: str = "fedrs-small",
    image_size: int = 128,
    clients: int = 14,
    per_class: int = 24,
    clients_per_round: int = 6,
    local_epochs: int = 1,
    batch_size: int = 32,
    workers: int = 2,
    noniid: bool = True,
    alpha: float = 0.5,
    seed: int = 0,
    feature_cache: bool = False,
    keep: str | None = None,
    ceiling: bool = True,
    repeats: int = 3,
    interleave: bool = True,
    retain_freed_memory: bool = True,
    baseline_retain_freed_memory: bool = False,
) -> dict[str, Any]:
    import ray

    from fedrs.orchestrator.config import RunConfig
    from fedrs.orchestrator.runner import connect_ray

    t_start = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="fedrs-vsseq-")
    root = Path(keep) if keep else Path(tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    if data:
        datasets = [("given", str(Path(data).resolve()))]
    else:
        parts = [("iid", None)] + ([("dirichlet", alpha)] if noniid else [])
        datasets = [
            (
                p if a is None else f"dirichlet({a})",
                build_data(root / f"data-{p}", p, clients, per_class, image_size, seed, a),
            )
            for p, a in parts
        ]
    base = {
        "method.name": method,
        "strategy.name": strategy,
        "model.arch": arch,
        "data.feature_cache": feature_cache,
        "client.local_epochs": local_epochs,
        "client.batch_size": batch_size,
        "federation.rounds": rounds,
        "federation.clients_per_round": clients_per_round,
        "federation.eval_every": rounds + 1,  # only the final round evaluates
        "federation.seed": seed,
        "resources.num_actors": workers,
        "resources.num_cpus_per_client": 1.0,
        "resources.retain_freed_memory": retain_freed_memory,
    }
    if baseline_retain_freed_memory:  # this process runs the sequential loop: for the whole run
        from fedrs.actors.allocator import retain_freed_memory as tune_allocator

        tune_allocator()
    started_ray = not ray.is_initialized()
    rows, details = [], []
    ray_start_s = store_s = 0.0
    shutdown_s: list[float] = []
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    from fedrs.methods import method_class

    head = method_class(method).headline
    if not method_class(method).trains:
        raise ValueError(f"method {method!r} does not train: there are no rounds to compare")
    try:
        for rep, (i, (label, path)) in itertools.product(range(repeats), enumerate(datasets)):
            cfg = RunConfig().replace(**base, **{"data.path": path})
            steady = [j + 1 for j in steady_index(rounds)]
            run_dir = root / f"run-{label}-{rep + 1}"
            load = {"before_ceiling": os.getloadavg()[0]}
            ceil = (
                run_ceiling(cfg, path, steady, workers, baseline_retain_freed_memory)
                if ceiling
                else None
            )
            if not interleave:  # the sequential loop, then fedrs through runner.run
                load["before_sequential"] = os.getloadavg()[0]
                log.info("%s, repeat %d: sequential loop (1 torch thread)", label, rep + 1)
                seq = run_sequential(cfg, path)
            # a fresh Ray per repeat, shut down after it: the ceiling (and, not interleaved,
            # the sequential loop) never run beside Ray's daemons
            load["before_fedrs"] = os.getloadavg()[0]
            t = time.perf_counter()
            if started_ray:
                connect_ray()
            ray_start_s = time.perf_counter() - t
            log.info("%s, repeat %d: fedrs (%d actors x 1 CPU)", label, rep + 1, workers)
            if interleave:
                seq, fr = run_interleaved(cfg, path, run_dir)
            else:
                fr = run_fedrs(cfg, run_dir)
            if started_ray:
                t = time.perf_counter()
                ray.shutdown()
                shutdown_s.append(time.perf_counter() - t)
            load["after_fedrs"] = os.getloadavg()[0]
            cmp_ = compare(seq, fr, workers, ray_start_s)
            if ceil is not None:
                seq_fit = np.mean([seq["rounds"][r - 1]["fit_s"] for r in ceil["rounds"]])
                ceil["efficiency"] = float(seq_fit / (workers * np.mean(ceil["round_s"])))
                cmp_["ceiling"] = ceil
                # fedrs against what plain processes get from this machine
                cmp_["efficiency_vs_ceiling"] = cmp_["efficiency_steady"] / ceil["efficiency"]
            diff = max_abs_diff(seq["params"], fr["params"])
            sizes = [
                int(c["num_examples"] or 0) for r in fr["records"] for c in r["clients"].values()
            ]
            rows.append(
                {
                    "partition": label,
                    "repeat": rep + 1,
                    "seq_s_per_round": round(cmp_["seq_steady_round_s"], 3),
                    "fedrs_s_per_round": round(cmp_["fedrs_steady_round_s"], 3),
                    "efficiency_steady": round(cmp_["efficiency_steady"], 3),
                    "cpu_efficiency": round(cmp_["cpu_efficiency_steady"], 3),
                    "ceiling_efficiency": round(ceil["efficiency"], 3) if ceil else None,
                    "seq_total_s": round(cmp_["seq_total_s"], 1),
                    "fedrs_total_s": round(cmp_["fedrs_total_s"], 1),
                    "efficiency_total": round(cmp_["efficiency_total"], 3),
                    # cores other users' processes took meanwhile (noise; 0 on a quiet machine)
                    "other_cores_seq": round(
                        float(np.mean([seq["rounds"][r - 1]["other_cores"] for r in steady])), 2
                    ),
                    "other_cores_ceiling": round(ceil["other_cores"], 2) if ceil else None,
                    "other_cores_fedrs": round(fr["cpu_steady"].get("other_users_cores", -1), 2),
                    "ray_daemons_cores": round(fr["cpu_steady"].get("orchestration_cores", -1), 3),
                    "examples_per_client": f"{min(sizes)}-{max(sizes)}",
                    "max_abs_diff": diff,
                }
            )
            details.append(
                {
                    "partition": label,
                    "repeat": rep + 1,
                    "data": path,
                    **cmp_,
                    "seq_rounds": seq["rounds"],
                    "fedrs_periods_s": fr["periods"],
                    "fedrs_records": [
                        {
                            k: r.get(k)
                            for k in ("round", "fit_s", "wall_s", "eval_s", "clients", "accuracy")
                            if k in r
                        }
                        for r in fr["records"]
                    ],
                    "accuracy": {
                        "sequential": seq["rounds"][-1].get("accuracy"),
                        "fedrs": fr["records"][-1].get("accuracy"),
                    },
                    # the method's headline (accuracy, or mR for retrieval methods)
                    "final_metric": {
                        "name": head,
                        "sequential": seq["rounds"][-1].get(head),
                        "fedrs": fr["records"][-1].get(head),
                    },
                    # the final evaluation (global split + every client's local split): in one
                    # process, and gathered from the actors' chunks
                    "eval_s": {
                        "sequential": seq["rounds"][-1].get("eval_s"),
                        "one_process_all_threads": seq["rounds"][-1].get("eval_s_all_threads"),
                        "fedrs": fr["records"][-1].get("eval_s"),
                    },
                    "final_params_max_abs_diff": diff,
                    # steady state, fedrs: cores used by the client actors, by the rest of this
                    # process tree (Ray's GCS/raylet/agents, driver actor, this process) and by
                    # other users' processes
                    "fedrs_cpu_steady": fr["cpu_steady"],
                    # other processes on the machine: 1-minute load average, and the share of
                    # a core the sequential loop got in its steady rounds (1.0 = undisturbed)
                    "load_1min": load,
                    "seq_cpu_share": sum(seq["rounds"][r - 1]["cpu_s"] for r in steady)
                    / sum(seq["rounds"][r - 1]["round_s"] for r in steady),
                }
            )
            if i == 0 and rep == 0:
                store_s = state_store_cost(
                    private_example(cfg, path) if method == "fedrsclip" else {}
                )
    finally:
        if started_ray and ray.is_initialized():  # an error left it running
            ray.shutdown()
        tmp.cleanup()
    summary = summarize(details)
    head = summary[0]
    result = {
        "benchmark": "vs-sequential",
        "ratio": head["efficiency_steady_median"],
        "ratio_meaning": (
            f"parallel efficiency, steady state ({head['partition']}), median of {repeats} "
            f"repeats: sequential time / (fedrs time x {workers} workers); 1.0 = perfect"
        ),
        "target": TARGET,
        "efficiency_total": head["efficiency_total_median"],
        "summary": summary,
        "rows": rows,
        "details": details,
        "state_store_save_load_s_per_client": store_s,
        "ray_shutdown_s": float(np.mean(shutdown_s)) if shutdown_s else 0.0,
        "setup": {
            "method": method,
            "strategy": strategy,
            "arch": arch,
            "image_size": image_size,
            "data_clients": clients,
            "per_class": per_class,
            "clients_per_round": clients_per_round,
            "local_epochs": local_epochs,
            "batch_size": batch_size,
            "rounds": rounds,
            "workers": workers,
            "sequential_torch_threads": 1,
            "fedrs_resources": {"num_actors": workers, "num_cpus_per_client": 1.0},
            # glibc malloc keeps freed memory (actors/allocator.py): fedrs's actors by default;
            # the sequential loop and the ceiling's processes only when asked
            "retain_freed_memory": {
                "fedrs_actors": retain_freed_memory,
                "sequential_and_ceiling": baseline_retain_freed_memory,
            },
            "feature_cache": feature_cache,
            "evaluation": "final round only, both sides (global split + every local split)",
            "seed": seed,
            "repeats": repeats,
            "interleave": interleave,
            "order": (
                "per repeat and partition: ceiling, then on a fresh Ray sequential round r and "
                "fedrs round r alternately"
                if interleave
                else "per repeat and partition: ceiling, sequential, then fedrs on a fresh Ray"
            ),
        },
        "wall_s": round(time.perf_counter() - t_start, 1),
        "machine": machine_info(),
    }
    return result


PROFILE_NOTES = {
    "client_fit_sum_s": "clients' time: sequential / in actors",
    "compute_inflation": "in actors / sequential",
    "ideal_round_s": "actors' client time / workers",
    "busiest_worker_s": "busiest actor's client time",
    "load_imbalance_s": "busiest actor - ideal",
    "dispatch_collect_s": "driver fit span - busiest actor",
    "aggregate_record_s": "aggregate, server update, record",
    "after_round_s": "jsonl, checkpoint, stream to runner",
    "round_s": "fedrs round seen by runner.run",
}


def main(json_path: str | None = None, data: str | None = None, **options: Any) -> dict[str, Any]:
    result = run(data=data, **options)
    setup = result["setup"]
    runs = [{"run": f"{r['partition']} #{r['repeat']}", **r} for r in result["rows"]]
    for r in runs:
        del r["partition"], r["repeat"]
    print_table(
        f"vs sequential: {setup['method']}, {setup['arch']}, {setup['workers']} workers "
        f"(steady state = rounds {result['details'][0]['steady_rounds']})",
        transpose_rows(runs, "run"),
    )
    print_table(
        "parallel efficiency per repeat and median",
        [
            {k: v for k, v in row.items() if k.startswith(("partition", "efficiency", "ceiling"))}
            for row in result["summary"]
        ],
    )
    for d in result["details"]:
        if d.get("repeat", 1) != 1:  # where the time goes: the first repeat's breakdown
            continue
        prof = d["profile_steady_per_round"]
        rows = []
        for k, note in PROFILE_NOTES.items():
            v = prof[k]
            value = (
                f"{v['sequential']:.3f} / {v['fedrs_actors']:.3f}"
                if isinstance(v, dict)
                else round(v, 4)
            )
            rows.append({"item": k, "value": value, "what": note})
        for k, v in prof.get("actor_phases_s", {}).items():
            rows.append({"item": f"  {k}", "value": round(v, 4), "what": "actors, per round"})
        print_table(f"where a steady-state fedrs round goes, s ({d['partition']})", rows)
        print_table(
            f"fixed costs, s ({d['partition']}; counted in the totals)",
            [{"cost": k, "s": round(v, 3)} for k, v in d["fixed_costs_s"].items()],
        )
    path = plot_path(json_path, "vs_sequential")
    plots.vs_sequential(result, path)
    result["plot"] = path
    log.info(
        "efficiency %.3f steady state (target %.2f), %.3f total; plot %s",
        result["ratio"],
        TARGET,
        result["efficiency_total"],
        path,
    )
    write_result(result, json_path)
    return result
