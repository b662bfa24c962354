"""Parallel efficiency of fedrs against the sequential single-process loop of prompt-FL research
code (PromptFL, FedOTP, FedPGP; ``research_loop.py``), on the same client code, data, sampled
clients, ``FitOptions`` and strategy: the same global tensors (``final_params_max_abs_diff``).

    fedrs bench vs-sequential [--data DIR] [--rounds N] [--set name=value ...] --json out.json

    efficiency = sequential time / (fedrs time x workers)          (1.0 = perfect scaling)

The loop runs with one torch thread, fedrs with ``workers`` actors of one CPU each. Both time
sample -> train the sampled clients -> aggregate, alternating round by round (``interleave``:
the machine's drift hits both alike) or, with ``interleave=false``, the whole loop and then
``runner.run``. Only the last round evaluates. Steady state = rounds 2..R-1; fixed costs (Ray
start, spawn, first and evaluation rounds, finish) are reported apart and counted in the
totals. From /proc: ``other_cores_*`` (cores other users took meanwhile) and ``cpu_efficiency``
(CPU seconds per steady round, loop / fedrs: immune to other users). The ``ceiling`` trains the
same clients in ``workers`` plain processes (no Ray): what the machine itself gives.

Options (``--set``): the fields of ``Options``.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrs.benchmarks import plots
from fedrs.benchmarks.common import bench_result, print_table, save_outputs
from fedrs.benchmarks.harness import (
    datasets,
    max_abs_diff,
    run_fedrs,
    steady_index,
    transpose_rows,
)
from fedrs.benchmarks.harness_proc import own_ray
from fedrs.benchmarks.research_loop import run_ceiling, run_interleaved, run_sequential
from fedrs.benchmarks.state_stores import private_example, state_store_cost

log = logging.getLogger(__name__)
TARGET = 0.85
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


def _mean(values: Iterable[float]) -> float:
    return float(np.mean(list(values)))


def _busiest_worker(rec: dict[str, Any]) -> float:
    busy: Counter[str] = Counter()
    for c in rec.get("clients", {}).values():
        busy[str(c.get("worker"))] += float(c["fit_s"] or 0)
    return max(busy.values())


def compare(
    seq: dict[str, Any], fr: dict[str, Any], workers: int, ray_start_s: float
) -> dict[str, Any]:
    """Efficiencies, fixed costs and where fedrs's steady-state round goes."""
    s_rounds, f_recs, periods = seq["rounds"], fr["records"], fr["periods"]
    steady = steady_index(len(s_rounds))
    s_round = [r["round_s"] for r in s_rounds]
    seq_steady = _mean(s_round[i] for i in steady)
    fed_steady = _mean(periods[i] for i in steady)
    seq_total = seq["build_s"] + sum(s_round)
    fed_total = ray_start_s + fr["spawn_s"] + sum(periods) + fr["finish_s"]
    seq_client = _mean(sum(s_rounds[i]["clients"].values()) for i in steady)
    fed_client = _mean(
        sum(float(c["fit_s"] or 0) for c in f_recs[i]["clients"].values()) for i in steady
    )
    makespan = _mean(_busiest_worker(f_recs[i]) for i in steady)
    fit_s = _mean(f_recs[i]["fit_s"] for i in steady)
    wall_s = _mean(f_recs[i]["wall_s"] for i in steady)
    profile = {  # the terms from ideal_round_s on sum to round_s
        "client_fit_sum_s": {"sequential": seq_client, "fedrs_actors": fed_client},
        "compute_inflation": fed_client / seq_client,
        "ideal_round_s": fed_client / workers,
        "busiest_worker_s": makespan,
        "load_imbalance_s": makespan - fed_client / workers,
        "dispatch_collect_s": fit_s - makespan,  # put/get, dispatch, pool.map, validation
        "aggregate_record_s": wall_s - fit_s,
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
    # CPU seconds per round: what fedrs spends (client actors + Ray's daemons + driver) for the
    # loop's work; insensitive to other users' load
    cpu = fr.get("cpu_steady") or {}
    seq_cpu = _mean(s_rounds[i]["cpu_s"] for i in steady)
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
    """Per partition, the efficiencies of every repeat and their median (one steady window is a
    few seconds of a noisy machine)."""
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


def measure(
    cfg: Any, path: str, run_dir: Path, o: Options, head: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """One repeat on one dataset: the ceiling, then the loop and fedrs on a fresh Ray (the
    ceiling and a back-to-back loop never run beside Ray's daemons). (table row, full record,
    Ray's start / shutdown seconds)."""
    workers = cfg.resources.num_actors
    steady = [j + 1 for j in steady_index(cfg.federation.rounds)]
    load = {"before_ceiling": os.getloadavg()[0]}
    retain = o.baseline_retain_freed_memory
    ceil = run_ceiling(cfg, path, steady, workers, retain) if o.ceiling else None
    if not o.interleave:
        load["before_sequential"] = os.getloadavg()[0]
        log.info("%s: sequential loop (1 torch thread)", run_dir.name)
        seq = run_sequential(cfg, path)
    load["before_fedrs"] = os.getloadavg()[0]
    with own_ray() as ray_times:
        log.info("%s: fedrs (%d actors x 1 CPU)", run_dir.name, workers)
        if o.interleave:
            seq, fr = run_interleaved(cfg, path, run_dir)
        else:
            fr = run_fedrs(cfg, run_dir)
    load["after_fedrs"] = os.getloadavg()[0]
    cmp_ = compare(seq, fr, workers, ray_times["start_s"])
    if ceil is not None:
        seq_fit = np.mean([seq["rounds"][r - 1]["fit_s"] for r in ceil["rounds"]])
        ceil["efficiency"] = float(seq_fit / (workers * np.mean(ceil["round_s"])))
        cmp_["ceiling"] = ceil
        cmp_["efficiency_vs_ceiling"] = cmp_["efficiency_steady"] / ceil["efficiency"]
    return *records(cmp_, seq, fr, head, load), ray_times


def records(
    cmp_: dict[str, Any], seq: dict[str, Any], fr: dict[str, Any], head: str, load: dict
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A repeat's line of the results table and its full record."""
    ceil, steady, cpu = cmp_.get("ceiling"), cmp_["steady_rounds"], fr["cpu_steady"]
    sizes = [int(c["num_examples"] or 0) for r in fr["records"] for c in r["clients"].values()]
    diff = max_abs_diff(seq["params"], fr["params"])
    row = {
        "seq_s_per_round": round(cmp_["seq_steady_round_s"], 3),
        "fedrs_s_per_round": round(cmp_["fedrs_steady_round_s"], 3),
        "efficiency_steady": round(cmp_["efficiency_steady"], 3),
        "cpu_efficiency": round(cmp_["cpu_efficiency_steady"], 3),
        "ceiling_efficiency": round(ceil["efficiency"], 3) if ceil else None,
        "seq_total_s": round(cmp_["seq_total_s"], 1),
        "fedrs_total_s": round(cmp_["fedrs_total_s"], 1),
        "efficiency_total": round(cmp_["efficiency_total"], 3),
        # cores other users' processes took meanwhile (noise; 0 on a quiet machine)
        "other_cores_seq": round(_mean(seq["rounds"][r - 1]["other_cores"] for r in steady), 2),
        "other_cores_ceiling": round(ceil["other_cores"], 2) if ceil else None,
        "other_cores_fedrs": round(cpu.get("other_users_cores", -1), 2),
        "ray_daemons_cores": round(cpu.get("orchestration_cores", -1), 3),
        "examples_per_client": f"{min(sizes)}-{max(sizes)}",
        "max_abs_diff": diff,
    }
    last_seq, last_fed = seq["rounds"][-1], fr["records"][-1]
    keys = ("round", "fit_s", "wall_s", "eval_s", "clients", "accuracy")
    return row, {
        **cmp_,
        "seq_rounds": seq["rounds"],
        "fedrs_periods_s": fr["periods"],
        "fedrs_records": [{k: r.get(k) for k in keys if k in r} for r in fr["records"]],
        "accuracy": {"sequential": last_seq.get("accuracy"), "fedrs": last_fed.get("accuracy")},
        "final_metric": {
            "name": head,
            "sequential": last_seq.get(head),
            "fedrs": last_fed.get(head),
        },
        # the final evaluation: in one process (one thread, all threads), and by the actors
        "eval_s": {
            "sequential": last_seq.get("eval_s"),
            "one_process_all_threads": last_seq.get("eval_s_all_threads"),
            "fedrs": last_fed.get("eval_s"),
        },
        "final_params_max_abs_diff": diff,
        "fedrs_cpu_steady": cpu,  # cores used by the client actors, Ray + driver, other users
        "load_1min": load,
        # the share of a core the loop got in its steady rounds (1.0 = undisturbed)
        "seq_cpu_share": sum(seq["rounds"][r - 1]["cpu_s"] for r in steady)
        / sum(seq["rounds"][r - 1]["round_s"] for r in steady),
    }


@dataclass(frozen=True)
class Options:
    """The ``--set`` options. Defaults: the model and image size vs-flower uses (a 0.7 s client
    fit here), about 6 minutes. ``arch=fedrs-tiny image_size=64 clients_per_round=10
    local_epochs=2 rounds=8 per_class=40`` is the stress case: 0.13 s fits, where fixed costs
    weigh most."""

    rounds: int = 4  # steady state = rounds 2..R-1
    method: str = "fedrsclip"
    strategy: str = "prompt_avg"
    arch: str = "fedrs-small"
    image_size: int = 128
    clients: int = 14  # data clients
    per_class: int = 24  # ~31 training examples per IID client
    clients_per_round: int = 6
    local_epochs: int = 1
    batch_size: int = 32
    workers: int = 2
    noniid: bool = True  # a Dirichlet(alpha) row too
    alpha: float = 0.5
    seed: int = 0
    feature_cache: bool = False
    keep: str | None = None  # a folder to keep the run folders in
    ceiling: bool = True
    repeats: int = 3  # each on a fresh Ray; ratio = the median
    interleave: bool = True
    retain_freed_memory: bool = True  # fedrs's actors keep freed heap memory
    baseline_retain_freed_memory: bool = False  # the loop and the ceiling too
    config: str = ""  # more run-config settings for both sides: "method.rank=8;client.lr=0.05"


def config_overrides(text: str | list[Any]) -> dict[str, str]:
    """``"method.rank=8;client.lr=0.05"`` -> {"method.rank": "8", "client.lr": "0.05"}: the
    values as ``fedrs run --set`` takes them (typed by the config itself, lists as ``a,b``)."""
    if isinstance(text, list):  # the CLI's --set split a value at its commas
        text = ",".join(map(str, text))
    out: dict[str, str] = {}
    for item in filter(None, (t.strip() for t in text.split(";"))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"config: {item!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def run(data: str | None = None, **options: Any) -> dict[str, Any]:
    from fedrs.core.config import RunConfig
    from fedrs.methods import method_class

    t_start, o = time.perf_counter(), Options(**options)
    if o.repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {o.repeats}")
    if not method_class(o.method).trains:
        raise ValueError(f"method {o.method!r} does not train: there are no rounds to compare")
    tmp = tempfile.TemporaryDirectory(prefix="fedrs-vsseq-")
    root = Path(o.keep) if o.keep else Path(tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    parts = [("iid", None)] + ([("dirichlet", o.alpha)] if o.noniid else [])
    data_sets = datasets(data, root, parts, o.clients, o.per_class, o.image_size, o.seed)
    base = {
        "method.name": o.method,
        "strategy.name": o.strategy,
        "model.arch": o.arch,
        "data.feature_cache": o.feature_cache,
        "client.local_epochs": o.local_epochs,
        "client.batch_size": o.batch_size,
        "federation.rounds": o.rounds,
        "federation.clients_per_round": o.clients_per_round,
        "federation.eval_every": o.rounds + 1,  # only the final round evaluates
        "federation.seed": o.seed,
        "resources.num_actors": o.workers,
        "resources.num_cpus_per_client": 1.0,
        "resources.retain_freed_memory": o.retain_freed_memory,
    }
    base |= config_overrides(o.config)
    if o.baseline_retain_freed_memory:  # this process runs the sequential loop: the whole run
        from fedrs.actors.allocator import retain_freed_memory

        retain_freed_memory()
    head = method_class(o.method).headline
    rows, details, shutdown_s, store_s = [], [], [], 0.0
    try:
        for rep, (i, (label, path)) in itertools.product(range(o.repeats), enumerate(data_sets)):
            cfg = RunConfig().replace(**base, **{"data.path": path})
            run_dir = root / f"run-{label}-{rep + 1}"
            row, record, ray_times = measure(cfg, path, run_dir, o, head)
            shutdown_s += [ray_times["shutdown_s"]] if "shutdown_s" in ray_times else []
            rows.append({"partition": label, "repeat": rep + 1, **row})
            details.append({"partition": label, "repeat": rep + 1, "data": path, **record})
            if i == 0 and rep == 0:
                store_s = state_store_cost(
                    private_example(cfg, path) if o.method == "fedrsclip" else {}
                )
    finally:
        tmp.cleanup()
    summary = summarize(details)
    first = summary[0]
    dropped = ("clients", "keep", "retain_freed_memory", "baseline_retain_freed_memory")
    order = "per repeat and partition: ceiling, " + (
        "then on a fresh Ray sequential round r and fedrs round r alternately"
        if o.interleave
        else "sequential, then fedrs on a fresh Ray"
    )
    return bench_result(
        "vs-sequential",
        first["efficiency_steady_median"],
        ratio_meaning=(
            f"parallel efficiency, steady state ({first['partition']}), median of {o.repeats} "
            f"repeats: sequential time / (fedrs time x {o.workers} workers); 1.0 = perfect"
        ),
        target=TARGET,
        efficiency_total=first["efficiency_total_median"],
        summary=summary,
        rows=rows,
        details=details,
        state_store_save_load_s_per_client=store_s,
        ray_shutdown_s=float(np.mean(shutdown_s)) if shutdown_s else 0.0,
        setup={
            **{k: v for k, v in asdict(o).items() if k not in dropped},
            "data_clients": o.clients,
            "sequential_torch_threads": 1,
            "fedrs_resources": {"num_actors": o.workers, "num_cpus_per_client": 1.0},
            "retain_freed_memory": {  # glibc malloc keeps freed memory (actors/allocator.py)
                "fedrs_actors": o.retain_freed_memory,
                "sequential_and_ceiling": o.baseline_retain_freed_memory,
            },
            "evaluation": "final round only, both sides (global split + every local split)",
            "order": order,
        },
        wall_s=round(time.perf_counter() - t_start, 1),
    )


def print_profile(d: dict[str, Any]) -> None:
    """Where a steady-state fedrs round goes, and the fixed costs, of one repeat."""
    prof, rows = d["profile_steady_per_round"], []
    for k, note in PROFILE_NOTES.items():
        v = prof[k]
        if isinstance(v, dict):
            v = f"{v['sequential']:.3f} / {v['fedrs_actors']:.3f}"
        rows.append({"item": k, "value": v if isinstance(v, str) else round(v, 4), "what": note})
    for k, v in prof.get("actor_phases_s", {}).items():
        rows.append({"item": f"  {k}", "value": round(v, 4), "what": "actors, per round"})
    print_table(f"where a steady-state fedrs round goes, s ({d['partition']})", rows)
    print_table(
        f"fixed costs, s ({d['partition']}; counted in the totals)",
        [{"cost": k, "s": round(v, 3)} for k, v in d["fixed_costs_s"].items()],
    )


def main(json_path: str | None = None, data: str | None = None, **options: Any) -> dict[str, Any]:
    result = run(data=data, **options)
    setup = result["setup"]
    runs = [{"run": f"{r['partition']} #{r['repeat']}", **r} for r in result["rows"]]
    print_table(
        f"vs sequential: {setup['method']}, {setup['arch']}, {setup['workers']} workers "
        f"(steady state = rounds {result['details'][0]['steady_rounds']})",
        transpose_rows(runs, "run", ("partition", "repeat")),
    )
    print_table(
        "parallel efficiency per repeat and median",
        [
            {k: v for k, v in row.items() if k.startswith(("partition", "efficiency", "ceiling"))}
            for row in result["summary"]
        ],
    )
    for d in result["details"]:
        if d["repeat"] == 1:  # where the time goes: the first repeat's breakdown
            print_profile(d)
    save_outputs(result, json_path, "vs_sequential", plots.vs_sequential)
    log.info(
        "efficiency %.3f steady state (target %.2f), %.3f total; plot %s",
        result["ratio"],
        TARGET,
        result["efficiency_total"],
        result["plot"],
    )
    return result
