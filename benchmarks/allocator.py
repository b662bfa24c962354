"""What keeping freed heap memory (``resources.retain_freed_memory``) buys a client fit.

    fedrs bench allocator [--set name=value ...] --json out.json

Four plain processes build the same method on the same client, as a client actor does (one
torch thread): two with glibc's default ``malloc`` settings, two tuned by
``actors.allocator.retain_freed_memory``. They then take turns, ``block`` fits at a time, in four
conditions per cycle: a default process alone, a tuned one alone, both default processes at
once, both tuned at once (the order flips every cycle). Taking turns matters here: this VM's
speed drifts by tens of percent within a minute, so conditions timed minutes apart would
compare different machines.

Per fit: wall time, page faults (``ru_minflt``) and kernel CPU time of the process. ``ratio`` =
median fit time of the default pair / of the tuned pair: the speed-up two actors side by side
get from the tuning.

Options (``--set``): ``method`` (fedrsclip), ``arch`` (fedrs-small), ``image_size`` (128),
``per_class`` (40: ~51 examples on the client), ``local_epochs`` (1), ``batch_size`` (32),
``cycles`` (6), ``block`` (2 fits per condition per cycle), ``seed`` (0).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from fedrs.benchmarks import plots
from fedrs.benchmarks.common import machine_info, plot_path, print_table, write_result

log = logging.getLogger(__name__)
CONDITIONS = ("default alone", "tuned alone", "default pair", "tuned pair")


def _fitter(cfg_dict: dict[str, Any], data_path: str, tuned: bool, conn: Any) -> None:
    """A trainer process: build the method, then answer ``n`` -> ``n`` timed fits until None."""
    import torch

    from fedrs.actors.allocator import retain_freed_memory
    from fedrs.benchmarks.harness import build_local
    from fedrs.core.config import from_dict
    from fedrs.datasets.manifest import FedDataset
    from fedrs.orchestrator.exchange import fit_options

    applied = retain_freed_memory() if tuned else False
    torch.set_num_threads(1)
    cfg = from_dict(cfg_dict)
    data = FedDataset(data_path)
    _, method, params, strategy = build_local(cfg, data)
    shard, seed = data.client(0), cfg.federation.seed

    def fit() -> None:
        opts = fit_options(cfg, 1, 0, strategy)
        method.fit(params, method.init_private(0, seed), shard, opts)

    fit()  # first-call costs
    conn.send(applied)
    while (n := conn.recv()) is not None:
        out = []
        for _ in range(n):
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            fit()
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            out.append((wall, r1.ru_minflt - r0.ru_minflt, r1.ru_stime - r0.ru_stime))
        conn.send(out)


def run(
    method: str = "fedrsclip",
    arch: str = "fedrs-small",
    image_size: int = 128,
    per_class: int = 40,
    local_epochs: int = 1,
    batch_size: int = 32,
    cycles: int = 6,
    block: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    from fedrs.benchmarks.harness import build_data
    from fedrs.core.config import RunConfig

    if cycles < 1 or block < 1:
        raise ValueError(f"cycles and block must be >= 1, got {cycles} and {block}")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedrs-alloc-") as tmp:
        path = build_data(Path(tmp) / "data", "iid", 14, per_class, image_size, seed, None)
        cfg = RunConfig().replace(
            **{
                "method.name": method,
                "model.arch": arch,
                "data.path": path,
                "data.feature_cache": False,
                "client.local_epochs": local_epochs,
                "client.batch_size": batch_size,
                "federation.seed": seed,
            }
        )
        ctx = mp.get_context("spawn")
        procs: dict[str, tuple[Any, Any]] = {}
        try:
            for name, tuned in (("d1", False), ("d2", False), ("t1", True), ("t2", True)):
                here, there = ctx.Pipe()
                proc = ctx.Process(target=_fitter, args=(cfg.to_dict(), path, tuned, there))
                proc.start()
                procs[name] = (proc, here)
            applied = {name: conn.recv() for name, (_, conn) in procs.items()}
            fits: dict[str, list[tuple[float, int, float]]] = {c: [] for c in CONDITIONS}
            plan = {
                "default alone": ["d1"],
                "tuned alone": ["t1"],
                "default pair": ["d1", "d2"],
                "tuned pair": ["t1", "t2"],
            }
            for cycle in range(cycles):
                order = CONDITIONS if cycle % 2 == 0 else CONDITIONS[1::-1] + CONDITIONS[:1:-1]
                for cond in order:
                    for name in plan[cond]:
                        procs[name][1].send(block)
                    for name in plan[cond]:
                        fits[cond].extend(procs[name][1].recv())
        finally:
            for proc, conn in procs.values():
                if proc.is_alive():
                    with contextlib.suppress(OSError):
                        conn.send(None)
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
    if not applied["t1"]:
        log.warning("retain_freed_memory() did not apply here (not glibc): both sides are default")
    rows = []
    for cond in CONDITIONS:
        walls = [f[0] for f in fits[cond]]
        rows.append(
            {
                "condition": cond,
                "fits": len(walls),
                "fit_ms_median": round(1e3 * statistics.median(walls), 1),
                "fit_ms_mean": round(1e3 * statistics.mean(walls), 1),
                "page_faults_median": statistics.median(f[1] for f in fits[cond]),
                "kernel_ms_median": round(1e3 * statistics.median(f[2] for f in fits[cond]), 1),
            }
        )
    med = {r["condition"]: r["fit_ms_median"] for r in rows}
    return {
        "benchmark": "allocator",
        "ratio": round(med["default pair"] / med["tuned pair"], 3),
        "ratio_meaning": "median fit time, two default processes side by side / two tuned ones",
        "speedup_alone": round(med["default alone"] / med["tuned alone"], 3),
        "inflation_pair_vs_alone": {
            "default": round(med["default pair"] / med["default alone"], 3),
            "tuned": round(med["tuned pair"] / med["tuned alone"], 3),
        },
        "tuning_applied": applied,
        "rows": rows,
        "fits_s": {c: [round(f[0], 4) for f in fits[c]] for c in CONDITIONS},
        "setup": {
            "method": method,
            "arch": arch,
            "image_size": image_size,
            "examples": per_class,
            "local_epochs": local_epochs,
            "batch_size": batch_size,
            "cycles": cycles,
            "block": block,
            "seed": seed,
            "torch_threads": 1,
        },
        "wall_s": round(time.perf_counter() - t_start, 1),
        "machine": machine_info(),
    }


def main(json_path: str | None = None, **options: Any) -> dict[str, Any]:
    result = run(**options)
    print_table(f"client fit by allocator setting ({result['setup']['arch']})", result["rows"])
    path = plot_path(json_path, "allocator")
    plots.allocator(result, path)
    result["plot"] = path
    log.info(
        "allocator: pair %.3fx, alone %.3fx faster tuned; plot %s",
        result["ratio"],
        result["speedup_alone"],
        path,
    )
    write_result(result, json_path)
    return result
