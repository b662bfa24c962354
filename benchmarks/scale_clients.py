"""Scale in registered clients: round time and driver memory for 100 to 100,000 clients.

    fedrs bench scale-clients [--data DIR] [--rounds N] [--set name=value ...] --json out.json

For each N in ``sizes`` registered clients (``federation.num_clients``) over the same data
(``partitions`` synthetic partitions; client c trains on partition c mod P), FedRSCLIP with
prompt averaging and private prompts, ``clients_per_round`` sampled per round:

1. the driver actor starts with a fresh run directory (and its client-actor pool);
2. the client-state store is filled with all N clients' round-0 private states
   (``FileStateStore.save_many``), timed; then a client's durable ``save`` (fsync per file)
   over up to 200 clients, random-client read latency and the store's bytes on disk;
3. ``rounds`` rounds run; round time = median driver ``wall_s`` of rounds 2..R; driver memory
   = VmRSS / VmHWM after the rounds. The last round's sampled clients' states are checked to
   have landed under their registered ids.

The sweep runs ``repeats`` times, sizes ascending then descending (drift hits every N alike);
a size's round time is the median of all its repeats' rounds 2..R.

    ratio = round time(smallest N) / round time(largest N)     (target >= 1 / 1.2)

``store``: the same states in Ray's object store for N in ``object_sizes`` (a holder actor
owns one ``ray.put`` per client; reads look up the ref and ``ray.get`` it) beside the file
store's figures: write time, read latency (median / p99), the holder's RSS growth (files: the
driver's, which holds nothing) and bytes (on disk / in plasma).

Options (``--set``): the fields of ``Options``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrs.benchmarks import plots
from fedrs.benchmarks.common import as_list, bench_result, print_table, save_outputs
from fedrs.benchmarks.harness import build_data
from fedrs.benchmarks.harness_proc import driver_actor, own_ray
from fedrs.benchmarks.state_stores import (
    client_saves,
    measure_object_store,
    populate_files,
    private_shapes,
    read_latency,
    tree_bytes,
)

log = logging.getLogger(__name__)
TARGET = 1 / 1.2
SIZES = (100, 1_000, 10_000, 100_000)
OBJECT_SIZES = (1_000, 10_000)


def run_size(
    n: int,
    run_dir: Path,
    data_path: str,
    base: dict[str, Any],
    rounds: int,
    reads: int,
    seed: int,
    num_classes: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Driver up, store pre-populated with n clients, ``rounds`` rounds; (scale row, store row)."""
    import ray

    from fedrs.core.config import RunConfig
    from fedrs.core.state_store import FileStateStore
    from fedrs.orchestrator.driver import STATE_DIR

    cfg = RunConfig().replace(**{**base, "federation.num_clients": n, "federation.rounds": rounds})
    shapes, root = private_shapes(cfg, num_classes), run_dir / STATE_DIR
    with driver_actor(cfg, run_dir, data_path) as up:
        driver = up.handle
        mem0 = ray.get(driver.memory.remote())
        written = populate_files(root, n, shapes, seed)
        mem1 = ray.get(driver.memory.remote())
        written |= client_saves(root, n, shapes, seed, count=min(reads, 200))
        store = FileStateStore(root)
        ids = np.random.default_rng(seed).integers(0, n, reads)
        latency = read_latency(lambda c: store.load(c, 1), ids)
        disk = tree_bytes(root)
        records = [ray.get(ref) for ref in driver.run.options(num_returns="streaming").remote(None)]
        mem2 = ray.get(driver.memory.remote())
        ray.get(driver.finish.remote())
    last = records[-1]
    landed = all(store.versions(int(c))[-1:] == [last["round"]] for c in last["clients"])
    walls = [r["wall_s"] for r in records]
    steady = walls[1:] or walls
    scale_row = {
        "registered": n,
        "round_s": float(np.median(steady)),
        "first_round_s": walls[0],
        "fit_s": float(np.median([r["fit_s"] for r in records[1:] or records])),
        "driver_rss_mb": mem2["rss_mb"],
        "driver_peak_rss_mb": mem2["peak_rss_mb"],
        "driver_rss_before_mb": mem0["rss_mb"],
        "populate_s": written["write_s"],
        "store_disk_mb": disk["disk_bytes"] / 2**20,
        "clients_ok": int(sum(r["clients_ok"] for r in records)),
        "clients_failed": int(sum(r["clients_failed"] + r["clients_rejected"] for r in records)),
        "state_landed": landed,
        "spawn_s": up.spawn_s,
        "round_walls_s": walls,
        "sampled_last_round": [int(c) for c in last["clients"]],
    }
    store_row = {
        "backend": "files (safetensors)",
        "n": n,
        **written,
        **latency,
        "holder_rss_growth_mb": mem1["rss_mb"] - mem0["rss_mb"],  # the driver's: holds nothing
        "bytes": disk["disk_bytes"],
        "logical_bytes": disk["logical_bytes"],
        "files": disk["files"],
        "dirs": disk["dirs"],
    }
    return scale_row, store_row


def pool_repeats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row per N from its repeats: round time = median of every repeat's rounds 2..R
    together; memory = the largest seen; the rest from the first repeat."""
    steady = [w for r in rows for w in (r["round_walls_s"][1:] or r["round_walls_s"])]
    out = dict(rows[0])
    out |= {
        "round_s": float(np.median(steady)),
        "round_s_by_repeat": [r["round_s"] for r in rows],
        "round_walls_s": [r["round_walls_s"] for r in rows],
        "driver_rss_mb": max(r["driver_rss_mb"] for r in rows),
        "driver_peak_rss_mb": max(r["driver_peak_rss_mb"] for r in rows),
        "clients_ok": sum(r["clients_ok"] for r in rows),
        "clients_failed": sum(r["clients_failed"] for r in rows),
        "state_landed": all(r["state_landed"] for r in rows),
    }
    return out


@dataclass(frozen=True)
class Options:
    """The ``--set`` options."""

    sizes: Any = SIZES  # registered clients
    object_sizes: Any = OBJECT_SIZES  # the object-store comparison; none skips it
    clients_per_round: int = 10
    rounds: int = 10
    partitions: int = 10  # of the synthetic data
    per_class: int = 12
    image_size: int = 32
    arch: str = "fedrs-tiny"
    local_epochs: int = 1
    workers: int = 2
    reads: int = 500  # random clients whose state is read back
    seed: int = 0
    keep: str | None = None  # keep the run folders here (else each run's store is removed)
    repeats: int = 2


def run(data: str | None = None, **options: Any) -> dict[str, Any]:
    from fedrs.core.config import RunConfig
    from fedrs.datasets.manifest import FedDataset
    from fedrs.errors import ConfigError

    o = Options(**options)
    sizes, object_sizes = sorted(as_list(o.sizes, int)), sorted(as_list(o.object_sizes, int))
    if not sizes or o.rounds < 2 or o.repeats < 1:
        raise ConfigError(
            "bench scale-clients needs at least one size, rounds >= 2 and repeats >= 1"
        )
    t_start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="fedrs-scale-")
    work = Path(o.keep) if o.keep else Path(tmp)
    try:
        t0 = time.perf_counter()
        folder = work / f"data-{o.partitions}p-{o.per_class}pc-{o.image_size}px-s{o.seed}"
        data_path = data or build_data(
            folder, "dirichlet", o.partitions, o.per_class, o.image_size, o.seed, 0.5
        )
        ds = FedDataset(data_path, verify=False)
        if sizes[0] < ds.num_clients:
            raise ConfigError(
                f"bench scale-clients: sizes must be >= the data's {ds.num_clients} partitions"
            )
        data_s = time.perf_counter() - t0
        base = {
            "method.name": "fedrsclip",
            "strategy.name": "prompt_avg",
            "method.private_prompts": True,
            "model.arch": o.arch,
            "data.path": data_path,
            "federation.clients_per_round": o.clients_per_round,
            "federation.min_clients": 1,
            "federation.seed": o.seed,
            "client.local_epochs": o.local_epochs,
            "client.batch_size": 32,
            "resources.num_actors": o.workers,
            "resources.num_cpus_per_client": 1.0,
        }
        shapes = private_shapes(RunConfig().replace(**base), ds.num_classes)
        runs: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
        store_rows = []
        with own_ray():
            for rep in range(o.repeats):  # sizes up, then down: drift hits every N alike
                for n in sizes if rep % 2 == 0 else sizes[::-1]:
                    log.info("scale-clients: %d registered clients (repeat %d)", n, rep + 1)
                    run_dir = work / f"n{n}-{rep + 1}"
                    row, store_row = run_size(
                        n, run_dir, data_path, base, o.rounds, o.reads, o.seed, ds.num_classes
                    )
                    runs[n].append(row)
                    if rep == 0:
                        store_rows.append(store_row)
                    log.info("%s", {k: v for k, v in row.items() if not isinstance(v, list)})
                    if not o.keep:
                        shutil.rmtree(run_dir, ignore_errors=True)
            for n in object_sizes:
                log.info("scale-clients: object store, %d clients", n)
                store_rows.append(measure_object_store(n, shapes, o.seed, o.reads))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [pool_repeats(runs[n]) for n in sizes]
    small, large = rows[0], rows[-1]
    return bench_result(
        "scale-clients",
        small["round_s"] / large["round_s"],
        ratio_definition=(
            f"round time with {small['registered']:,} registered clients / round time with "
            f"{large['registered']:,} (median of rounds 2..R; higher is better)"
        ),
        target=(
            f">= {TARGET:.3f}: {large['registered']:,}-client round time <= 1.2x "
            f"{small['registered']:,}-client"
        ),
        target_met=small["round_s"] / large["round_s"] >= TARGET,
        driver_rss_growth_mb=large["driver_rss_mb"] - small["driver_rss_mb"],
        rows=rows,
        store=store_rows,
        setup={
            **{k: v for k, v in asdict(o).items() if k != "keep"},
            "sizes": sizes,
            "object_sizes": object_sizes,
            "partitions": ds.num_clients,
            "method": "fedrsclip",
            "strategy": "prompt_avg",
            "order": "sizes ascending, then descending, alternately per repeat",
            "private_state_shapes": {k: list(s) for k, s in shapes.items()},
            "private_state_bytes": int(sum(4 * int(np.prod(s)) for s in shapes.values())),
            "data": data or "synthetic",
            "data_s": data_s,
        },
        wall_s=time.perf_counter() - t_start,
    )


def main(json_path: str | None = None, **options: Any) -> dict[str, Any]:
    result = run(**options)
    print_table(
        "scale-clients: FedRSCLIP + prompt_avg, private state on",
        [
            {
                "clients": r["registered"],
                "round s": r["round_s"],
                "1st round": r["first_round_s"],
                "driver MiB": r["driver_rss_mb"],
                "peak MiB": r["driver_peak_rss_mb"],
                "fill s": r["populate_s"],
                "disk MiB": r["store_disk_mb"],
                "landed": r["state_landed"],
            }
            for r in result["rows"]
        ],
    )
    print_table(
        f"client-state store: files vs Ray object store "
        f"({result['setup']['private_state_bytes']:,} B of private tensors per client)",
        [
            {
                "store": "files" if s["backend"].startswith("files") else "ray",
                "clients": s["n"],
                "write s": s["write_s"],
                "writes/s": s["writes_per_s"],
                "save ms": s.get("client_save_ms_median", float("nan")),
                "read ms": s["read_ms_median"],
                "p99 ms": s["read_ms_p99"],
                "holder +MiB": s["holder_rss_growth_mb"],
                "MiB": (s["bytes"] or 0) / 2**20,
            }
            for s in result["store"]
        ],
    )
    log.info(
        "ratio %.3f (%s); target %s; driver RSS growth %.1f MiB; %.0f s",
        result["ratio"],
        result["ratio_definition"],
        result["target"],
        result["driver_rss_growth_mb"],
        result["wall_s"],
    )
    return save_outputs(result, json_path, "scale_clients", plots.scale_clients)
