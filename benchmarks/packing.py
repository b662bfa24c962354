"""Fractional-GPU packing: client updates per second vs the GPU share of each client actor.

    fedrs bench packing [--data DIR] [--rounds N] [--set name=value ...] --json out.json

For each fraction f in ``fractions`` (1, 0.5, 0.25) fedrs runs ``resources.num_gpus_per_client=f``
with ``resources.num_actors = GPUs / f`` actors (so every GPU is fully booked) and the same CPU
share per actor in every configuration (``cpus / most actors``, so only the packing changes).
Recorded per fraction: where Ray put the actors (``gpu_ids`` and ``CUDA_VISIBLE_DEVICES`` that
each actor reports, counted per GPU), the spawn time, and client updates per second over the
steady-state rounds (rounds 2..R-1: no first-round warm-up, no final evaluation), from the times
the driver's round records arrive.

On a machine without CUDA the GPUs are Ray's LOGICAL GPUs (``ray.init(num_gpus=gpus)``): the
actors train on the CPU, so throughput is CPU-bound and the benchmark shows that packing
schedules correctly (f=0.25 puts four actors on each GPU id) and what it costs (more processes
on the same cores). With ``torch.cuda.is_available()`` the same benchmark measures real GPU
throughput: Ray starts with the visible GPUs and each actor trains on ``cuda:0`` of the
``CUDA_VISIBLE_DEVICES`` Ray gives it. The JSON's ``gpus_are`` says which.

ratio = updates/s at the best fraction / updates/s at one GPU per client.

On a shared machine, more actors (more runnable threads) also win a larger share of the cores
from other users' processes, since the kernel's scheduler is fair per thread: ``other_cores``
(cores other users took meanwhile) and ``updates_per_actor_cpu_s`` (updates per CPU second the
client actors got) show it.

The driver actor is created here as ``runner.run`` creates it (so that ``describe_actors`` can
be asked where the actors landed); Ray is started here, with the logical GPUs, before it.

Options (``--set``): ``fractions`` (1,0.5,0.25), ``gpus`` (logical GPUs without CUDA: 2),
``method`` (fedrsclip), ``strategy`` (prompt_avg), ``arch`` (fedrs-tiny), ``image_size`` (64),
``clients`` (16 data clients), ``per_class`` (40), ``clients_per_round`` (16), ``local_epochs``
(2), ``batch_size`` (32), ``rounds`` (6), ``cpus_per_client`` (default: CPUs / most actors),
``seed`` (0), ``keep`` (a folder to keep the run directories in).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from fedrs.benchmarks import plots
from fedrs.benchmarks.common import machine_info, plot_path, print_table, write_result
from fedrs.benchmarks.harness import (
    cpu_between,
    cpu_snapshot,
    datasets,
    steady_index,
    transpose_rows,
)
from fedrs.benchmarks.harness_proc import driver_actor, local_ray_args

log = logging.getLogger(__name__)
TARGET = 1.0  # packing should at least not lose throughput


def start_ray(gpus: int) -> tuple[bool, int, bool]:
    """Start a local Ray with ``gpus`` GPUs (the real ones when CUDA is there) unless one is
    already up; return (started here, GPUs in the cluster, real GPUs)."""
    import ray
    import torch

    real = torch.cuda.is_available()
    started = False
    if not ray.is_initialized():
        n_gpus = torch.cuda.device_count() if real else gpus
        ray.init(**local_ray_args(os.cpu_count(), num_gpus=n_gpus, log_to_driver=False))
        started = True
    total = int(ray.cluster_resources().get("GPU", 0))
    return started, min(total, gpus) if not started else total, real


def drive(cfg: Any, run_dir: Path, data_path: str) -> dict[str, Any]:
    """Create the driver actor as ``runner.run`` does, ask where its actors are, stream the
    rounds (timestamping each record's arrival) and finish."""
    import ray

    from fedrs.io import write_json

    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", cfg.to_dict())
    with driver_actor(cfg, run_dir, data_path) as up:
        records, ends, cpu = [], [], [cpu_snapshot()]
        for ref in up.handle.run.options(num_returns="streaming").remote(None):
            records.append(ray.get(ref))
            ends.append(time.perf_counter())
            cpu.append(cpu_snapshot())
        summary = ray.get(up.handle.finish.remote())
    periods = list(np.diff([up.ready, *ends]))
    steady = steady_index(len(records))  # snapshot k was taken as round k's record arrived
    window = cpu_between(cpu[steady[0]], cpu[steady[-1] + 1], {a["pid"] for a in up.actors})
    return {
        "cpu_steady": window,
        "spawn_s": up.spawn_s,
        "finish_s": time.perf_counter() - ends[-1],
        "actors": up.actors,
        "records": records,
        "periods": [float(p) for p in periods],
        "summary": summary,
    }


def placement(actors: list[dict[str, Any]]) -> dict[str, Any]:
    """Actors per (node, GPU id) as the actors themselves report it."""
    per_gpu = Counter(
        f"{(a.get('node_id') or '?')[:8]}:{','.join(a['gpu_ids']) or 'none'}" for a in actors
    )
    return {
        "actors_per_gpu": dict(sorted(per_gpu.items())),
        "cuda_visible_devices": sorted({str(a.get("cuda_visible_devices")) for a in actors}),
        "devices": sorted({a["device"] for a in actors}),
        "torch_threads": sorted({a["torch_threads"] for a in actors}),
    }


def run(
    data: str | None = None,
    rounds: int = 6,
    fractions: tuple[float, ...] | list[float] | float = (1.0, 0.5, 0.25),
    gpus: int = 2,
    method: str = "fedrsclip",
    strategy: str = "prompt_avg",
    arch: str = "fedrs-tiny",
    image_size: int = 64,
    clients: int = 16,
    per_class: int = 40,
    clients_per_round: int = 16,
    local_epochs: int = 2,
    batch_size: int = 32,
    cpus_per_client: float | None = None,
    seed: int = 0,
    keep: str | None = None,
) -> dict[str, Any]:
    import ray

    from fedrs.core.config import RunConfig

    fractions = [
        float(f) for f in (fractions if isinstance(fractions, list | tuple) else [fractions])
    ]
    t_start = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="fedrs-packing-")
    root = Path(keep) if keep else Path(tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    [(_, path)] = datasets(data, root, [("iid", None)], clients, per_class, image_size, seed)
    started, n_gpus, real = start_ray(gpus)
    rows, details = [], []
    try:
        if n_gpus < 1:
            from fedrs.errors import ConfigError

            raise ConfigError("bench packing: the Ray cluster has no GPUs (logical or real)")
        # this machine's cores (a cluster joined here may advertise more logical CPUs)
        cpus = min(float(ray.cluster_resources().get("CPU", 1)), float(os.cpu_count() or 1))
        n_actors = {f: max(1, round(n_gpus / f)) for f in fractions}
        cpu_each = cpus_per_client or cpus / max(n_actors.values())
        for f in fractions:
            cfg = RunConfig().replace(
                **{
                    "data.path": path,
                    "method.name": method,
                    "strategy.name": strategy,
                    "model.arch": arch,
                    "client.local_epochs": local_epochs,
                    "client.batch_size": batch_size,
                    "federation.rounds": rounds,
                    "federation.clients_per_round": clients_per_round,
                    "federation.eval_every": rounds + 1,  # only the final round evaluates
                    "federation.seed": seed,
                    "resources.num_actors": n_actors[f],
                    "resources.num_cpus_per_client": cpu_each,
                    "resources.num_gpus_per_client": f,
                    "resources.placement_timeout_s": 60.0,
                }
            )
            log.info("%g GPU per client: %d actors x %.3g CPU", f, n_actors[f], cpu_each)
            out = drive(cfg, root / f"run-{f:g}", path)
            recs, periods = out["records"], out["periods"]
            steady = steady_index(len(recs))
            done = sum(recs[i]["clients_ok"] for i in steady)
            span = sum(periods[i] for i in steady)
            place = placement(out["actors"])
            per_gpu = list(place["actors_per_gpu"].values())
            actor_cores = out["cpu_steady"].get("client_actors_cores", 0.0)
            rows.append(
                {
                    "gpu_per_client": f,
                    "actors": len(out["actors"]),
                    "actors_per_gpu": max(per_gpu),
                    "gpus_used": len(per_gpu),
                    "updates_per_s": done / span,
                    "s_per_round": span / len(steady),
                    # per CPU second the client actors got: packing's own cost on the cores,
                    # whatever share of the machine other users left
                    "updates_per_actor_cpu_s": done / (actor_cores * span)
                    if actor_cores > 0
                    else float("nan"),
                    "spawn_s": out["spawn_s"],
                    # cores other users' processes took meanwhile (noise; 0 when quiet)
                    "other_cores": round(out["cpu_steady"].get("other_users_cores", -1), 2),
                    "device": ",".join(place["devices"]),
                }
            )
            details.append(
                {
                    "gpu_per_client": f,
                    "num_actors": n_actors[f],
                    "cpus_per_client": cpu_each,
                    **place,
                    "expected_actors_per_gpu": 1 / f,
                    "packed_as_asked": all(c <= round(1 / f) + 1e-9 for c in per_gpu),
                    "spawn_s": out["spawn_s"],
                    "finish_s": out["finish_s"],
                    "periods_s": out["periods"],
                    "steady_rounds": [i + 1 for i in steady],
                    "clients_ok": [r["clients_ok"] for r in recs],
                    "fit_s": [r["fit_s"] for r in recs],
                    "wall_s": [r["wall_s"] for r in recs],
                    "updates_per_s_fit": done / sum(recs[i]["fit_s"] for i in steady),
                    "updates_per_s_with_spawn": sum(r["clients_ok"] for r in recs)
                    / (out["spawn_s"] + sum(periods)),
                    # mean client time inside the actors (CPU-bound: grows as actors share cores)
                    "client_fit_s_mean": float(
                        np.mean([c["fit_s"] for i in steady for c in recs[i]["clients"].values()])
                    ),
                    "cpu_steady": out["cpu_steady"],
                    "accuracy": recs[-1].get("accuracy"),
                    "actors": out["actors"],
                }
            )
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
        tmp.cleanup()
    base = next((r for r in rows if r["gpu_per_client"] == 1.0), rows[0])
    best = max(rows, key=lambda r: r["updates_per_s"])
    return {
        "benchmark": "packing",
        "ratio": round(best["updates_per_s"] / base["updates_per_s"], 3),
        "ratio_meaning": (
            f"client updates/s at the best fraction ({best['gpu_per_client']:g} GPU per client) "
            f"/ at {base['gpu_per_client']:g} GPU per client"
        ),
        "target": TARGET,
        "gpus_are": (
            "real CUDA GPUs: throughput is GPU throughput"
            if real
            else "LOGICAL Ray GPUs on a CPU-only machine: actors train on the CPU, so updates/s "
            "is CPU-bound; the figures show that packing schedules as asked and what it costs"
        ),
        "gpus": n_gpus,
        "real_gpus": real,
        "rows": rows,
        "details": details,
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
            "fractions": fractions,
            "seed": seed,
        },
        "wall_s": round(time.perf_counter() - t_start, 1),
        "machine": machine_info(),
    }


def main(json_path: str | None = None, data: str | None = None, **options: Any) -> dict[str, Any]:
    result = run(data=data, **options)
    kind = "real GPUs" if result["real_gpus"] else "LOGICAL GPUs: CPU-bound"
    print_table(
        f"packing: {result['gpus']} GPUs ({kind}), {result['setup']['arch']}; "
        "columns: GPU per client",
        transpose_rows(result["rows"], "gpu_per_client"),
    )
    print_table(
        "where the actors landed (node:gpu -> actors)",
        [
            {"gpu_per_client": d["gpu_per_client"], "actors_per_gpu": str(d["actors_per_gpu"])}
            for d in result["details"]
        ],
    )
    path = plot_path(json_path, "packing")
    plots.packing(result, path)
    result["plot"] = path
    log.info(
        "ratio %.3f (%s); %s; plot %s",
        result["ratio"],
        result["ratio_meaning"],
        result["gpus_are"],
        path,
    )
    write_result(result, json_path)
    return result
