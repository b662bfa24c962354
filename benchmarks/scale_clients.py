"""Scale in registered clients: round time and driver memory for 100 to 100,000 clients.

    fedrs bench scale-clients [--data DIR] [--rounds N] [--set name=value ...] --json out.json

For each N in ``sizes`` (100, 1,000, 10,000, 100,000) registered clients
(``federation.num_clients``) over the same data (``partitions`` synthetic partitions; client c
trains on partition c mod P), FedRSCLIP with prompt averaging and private prompts on,
``clients_per_round`` (10) sampled per round:

1. the driver actor starts with a fresh run directory (and its client-actor pool);
2. the client-state store is pre-populated with all N clients' private states (a round-0
   version each, in the store's own layout, with ``FileStateStore.save_many``: one atomic file
   per client, one sync at the end), timed; then the latency of ``FileStateStore.save`` as a
   client calls it after training (fsync per file) over up to 200 clients, random-client read
   latency and the store's bytes on disk;
3. ``rounds`` rounds run; round time = median wall time of rounds 2..R (the driver's
   ``wall_s``: sample, train, validate, aggregate, evaluate); driver memory = VmRSS / VmHWM of
   the driver actor's process after the rounds. The private state of every client sampled in
   the last round is checked to have landed in the store under its registered id.

The sweep runs ``repeats`` times, sizes ascending then descending (so the machine's drift over
the minutes of a sweep hits the smallest and the largest N alike); a size's round time is the
median of all its repeats' rounds 2..R.

    ratio = round time(smallest N) / round time(largest N)

higher is better; the target is ratio >= 1 / 1.2 (the 100,000-client round takes at most 1.2x
the 100-client round).

Store comparison (the ``store`` section): the same private states kept in Ray's object store
instead, for N in ``object_sizes`` (1,000, 10,000): a holder actor ``ray.put``s each client's
state and keeps its ref (the holder must own the objects, so that they outlive the client
actors; ``ray.put(_owner=...)`` no longer exists), reads look the ref up at the holder and
``ray.get`` it. Reported beside the file store's figures at the same N: write time of all N
(files: ``save_many``; object store: the holder's puts, in batches of 500), a client's durable
``save`` (files only: ``save ms``, fsync included; the object store is not durable), read
latency (median / p99 over ``reads`` random clients, from this process), the holder's RSS
growth (for the file store: the driver's, which holds nothing) and bytes (allocated on disk,
directories included / used in plasma).

Options (``--set``): ``sizes`` (100,1000,10000,100000), ``object_sizes`` (1000,10000; empty
``none`` skips), ``clients_per_round`` (10), ``rounds`` (10), ``repeats`` (2), ``partitions`` (10),
``per_class`` (12), ``image_size`` (32), ``arch`` (fedrs-tiny), ``local_epochs`` (1),
``workers`` (2), ``reads`` (500), ``seed`` (0), ``keep`` (a folder to keep the run directories
in; default: a temporary folder, each run's store removed once measured).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedrs.benchmarks import plots
from fedrs.benchmarks.common import machine_info, plot_path, print_table, write_result

log = logging.getLogger(__name__)
TARGET = 1 / 1.2
SIZES = (100, 1_000, 10_000, 100_000)
OBJECT_SIZES = (1_000, 10_000)
Shapes = dict[str, tuple[int, ...]]


# ---------------------------------------------------------------------------------------------
# helpers


def _ints(value: Any) -> tuple[int, ...]:
    """``--set sizes=100,1000`` arrives as a list, ``--set sizes=100`` as an int."""
    if value is None or value == "none" or value == "":
        return ()
    if isinstance(value, (int, float)):
        return (int(value),)
    return tuple(int(v) for v in value)


def _build_data(out: Path, partitions: int, per_class: int, image_size: int, seed: int) -> str:
    from fedrs.datasets.partition import PartitionSpec
    from fedrs.datasets.synth import build_synthetic

    build_synthetic(
        out,
        per_class=per_class,
        image_size=image_size,
        partition=PartitionSpec(
            scheme="dirichlet", num_clients=partitions, alpha=0.5, seed=seed, min_examples=5
        ),
    )
    return str(out.resolve())


def private_shapes(cfg: Any, num_classes: int) -> Shapes:
    """The private tensors' shapes of the configured method (no model is built)."""
    from fedrs.methods import method_class
    from fedrs.models.backbone import model_config

    shapes = method_class(cfg.method.name).tensor_shapes(
        cfg, model_config(cfg.model.arch), num_classes
    )
    return dict(shapes["private"])


class _States:
    """Private states for client ids, drawn from one generator (values only need be finite)."""

    def __init__(self, shapes: Shapes, seed: int) -> None:
        self.shapes = shapes
        self.rng = np.random.default_rng([seed, 0x57A7E])

    def __call__(self) -> dict[str, np.ndarray]:
        return {
            k: (0.02 * self.rng.standard_normal(s)).astype(np.float32)
            for k, s in self.shapes.items()
        }


def populate_files(root: Path, n: int, shapes: Shapes, seed: int) -> dict[str, float]:
    """Write a round-0 private state for clients 0..n-1 (``FileStateStore.save_many``: atomic
    files, one sync at the end)."""
    from fedrs.orchestrator.state_store import FileStateStore

    store, make = FileStateStore(root), _States(shapes, seed)
    t0 = time.perf_counter()
    store.save_many(0, ((cid, make()) for cid in range(n)))
    write_s = time.perf_counter() - t0
    return {"write_s": write_s, "writes_per_s": n / write_s}


def client_saves(root: Path, n: int, shapes: Shapes, seed: int, count: int) -> dict[str, float]:
    """Latency of ``FileStateStore.save`` as a client calls it (fsync per file), over ``count``
    random clients of a populated store (a round-1 version each, removed again)."""
    from fedrs.orchestrator.state_store import FileStateStore

    store, make = FileStateStore(root), _States(shapes, seed + 1)
    ids = np.random.default_rng([seed, 1]).choice(n, size=min(count, n), replace=False)
    times = []
    for cid in ids:
        state = make()
        t0 = time.perf_counter()
        store.save(int(cid), 1, state)
        times.append(time.perf_counter() - t0)
    for cid in ids:
        store.discard(int(cid), 1)
    ms = np.array(times) * 1e3
    return {
        "client_save_ms_median": float(np.median(ms)),
        "client_save_ms_p99": float(np.percentile(ms, 99)),
    }


def _latency(read: Any, ids: np.ndarray) -> dict[str, float]:
    times = []
    for cid in ids:
        t0 = time.perf_counter()
        state = read(int(cid))
        times.append(time.perf_counter() - t0)
        if not state:
            raise RuntimeError(f"client {cid}: no state read back")
    ms = np.array(times) * 1e3
    return {"read_ms_median": float(np.median(ms)), "read_ms_p99": float(np.percentile(ms, 99))}


def tree_bytes(root: Path) -> dict[str, int]:
    """Allocated bytes on disk (files and directories), logical file bytes, file / dir counts."""
    out = {"disk_bytes": 0, "logical_bytes": 0, "files": 0, "dirs": 0}
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                out["disk_bytes"] += st.st_blocks * 512
                if e.is_dir(follow_symlinks=False):
                    out["dirs"] += 1
                    stack.append(e.path)
                else:
                    out["files"] += 1
                    out["logical_bytes"] += st.st_size
    return out


def _plasma() -> dict[str, int] | None:
    """Bytes and objects in this Ray instance's object store (None when Ray cannot say)."""
    import ray

    try:
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address))
        return {
            "bytes": int(reply.store_stats.object_store_bytes_used),
            "objects": int(reply.store_stats.num_local_objects),
        }
    except Exception as exc:  # a private API: report instead of failing the benchmark
        log.warning("object-store stats unavailable: %s", exc)
        return None


# ---------------------------------------------------------------------------------------------
# the object-store alternative


class StateHolder:
    """Keeps clients' private states in Ray's object store: it owns one ``ray.put`` per client
    and hands out the ref. (A Ray actor; its process is where the refs cost memory.)"""

    def __init__(self) -> None:
        self.refs: dict[int, Any] = {}

    def put_many(self, client_ids: list[int], states: list[dict[str, np.ndarray]]) -> int:
        import ray

        for cid, state in zip(client_ids, states, strict=True):
            self.refs[cid] = ray.put(state)
        return len(self.refs)

    def lookup(self, client_id: int) -> list[Any]:
        return [self.refs.get(client_id)]  # in a list: the caller gets the ref, not the value

    def memory(self) -> dict[str, float]:
        from fedrs.io import process_memory

        return process_memory()


def measure_object_store(n: int, shapes: Shapes, seed: int, reads: int) -> dict[str, Any]:
    import ray

    holder = ray.remote(num_cpus=0)(StateHolder).remote()
    try:
        make, batch = _States(shapes, seed), 500
        ray.get(holder.put_many.remote([-1], [make()]))  # warm: imports, first put
        ray.get(ray.get(holder.lookup.remote(-1))[0])
        rss0 = ray.get(holder.memory.remote())["rss_mb"]
        plasma0 = _plasma()
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            ids = list(range(start, min(n, start + batch)))
            ray.get(holder.put_many.remote(ids, [make() for _ in ids]))
        write_s = time.perf_counter() - t0
        rss1 = ray.get(holder.memory.remote())["rss_mb"]
        plasma1 = _plasma()

        def read(cid: int) -> dict[str, np.ndarray]:
            return ray.get(ray.get(holder.lookup.remote(cid))[0])

        ids = np.random.default_rng(seed).integers(0, n, reads)
        row: dict[str, Any] = {
            "backend": "ray object store",
            "n": n,
            "write_s": write_s,
            "writes_per_s": n / write_s,
            **_latency(read, ids),
            "holder_rss_growth_mb": rss1 - rss0,
            "bytes": (plasma1["bytes"] - plasma0["bytes"]) if plasma0 and plasma1 else None,
        }
        if plasma0 and plasma1:
            row["objects"] = plasma1["objects"] - plasma0["objects"]
        return row
    finally:
        ray.kill(holder)


# ---------------------------------------------------------------------------------------------
# one federation at N registered clients


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

    from fedrs.methods import method_class
    from fedrs.orchestrator.config import RunConfig
    from fedrs.orchestrator.driver import STATE_DIR, Driver
    from fedrs.orchestrator.state_store import FileStateStore

    cfg = RunConfig().replace(**{**base, "federation.num_clients": n, "federation.rounds": rounds})
    shapes = private_shapes(cfg, num_classes)
    from fedrs.orchestrator.preflight import preflight

    preflight(cfg)  # the checks every run gets, before the clock starts
    run_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    driver = ray.remote(num_cpus=0)(Driver).remote(
        cfg, str(run_dir.resolve()), data_path, method_class(cfg.method.name), False
    )
    try:
        ray.get(driver.describe_actors.remote())  # the driver and its pool are up
        spawn_s = time.perf_counter() - t_start
        mem0 = ray.get(driver.memory.remote())
        root = run_dir / STATE_DIR
        written = populate_files(root, n, shapes, seed)
        mem1 = ray.get(driver.memory.remote())
        written |= client_saves(root, n, shapes, seed, count=min(reads, 200))
        store = FileStateStore(root)
        ids = np.random.default_rng(seed).integers(0, n, reads)
        latency = _latency(lambda c: store.load(c, 1), ids)
        disk = tree_bytes(root)
        records = [ray.get(ref) for ref in driver.run.options(num_returns="streaming").remote(None)]
        mem2 = ray.get(driver.memory.remote())
        ray.get(driver.finish.remote())
    finally:
        ray.kill(driver)
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
        "spawn_s": spawn_s,
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


# ---------------------------------------------------------------------------------------------
# the benchmark


def run(
    data: str | None = None,
    sizes: Any = SIZES,
    object_sizes: Any = OBJECT_SIZES,
    clients_per_round: int = 10,
    rounds: int = 10,
    partitions: int = 10,
    per_class: int = 12,
    image_size: int = 32,
    arch: str = "fedrs-tiny",
    local_epochs: int = 1,
    workers: int = 2,
    reads: int = 500,
    seed: int = 0,
    keep: str | None = None,
    repeats: int = 2,
) -> dict[str, Any]:
    import ray

    from fedrs.datasets.manifest import FedDataset
    from fedrs.errors import ConfigError
    from fedrs.orchestrator.config import RunConfig
    from fedrs.orchestrator.runner import connect_ray

    sizes, object_sizes = sorted(_ints(sizes)), sorted(_ints(object_sizes))
    if not sizes or rounds < 2 or repeats < 1:
        raise ConfigError(
            "bench scale-clients needs at least one size, rounds >= 2 and repeats >= 1"
        )
    t_start = time.perf_counter()
    started_ray = False
    tmp = tempfile.mkdtemp(prefix="fedrs-scale-")
    work = Path(keep) if keep else Path(tmp)
    try:
        t0 = time.perf_counter()
        data_path = data or _build_data(work / "data", partitions, per_class, image_size, seed)
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
            "model.arch": arch,
            "data.path": data_path,
            "federation.clients_per_round": clients_per_round,
            "federation.min_clients": 1,
            "federation.seed": seed,
            "client.local_epochs": local_epochs,
            "client.batch_size": 32,
            "resources.num_actors": workers,
            "resources.num_cpus_per_client": 1.0,
        }
        started_ray = not ray.is_initialized()
        connect_ray()
        # sizes up, then down (ABBA...): the machine's drift over the sweep hits every N alike
        runs: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
        store_rows = []
        for rep in range(repeats):
            for n in sizes if rep % 2 == 0 else sizes[::-1]:
                log.info("scale-clients: %d registered clients (repeat %d)", n, rep + 1)
                run_dir = work / f"n{n}-{rep + 1}"
                row, store_row = run_size(
                    n, run_dir, data_path, base, rounds, reads, seed, ds.num_classes
                )
                runs[n].append(row)
                if rep == 0:
                    store_rows.append(store_row)
                log.info("%s", {k: v for k, v in row.items() if not isinstance(v, list)})
                if not keep:
                    shutil.rmtree(run_dir, ignore_errors=True)
        rows = [pool_repeats(runs[n]) for n in sizes]
        cfg_shapes = private_shapes(RunConfig().replace(**base), ds.num_classes)
        for n in object_sizes:
            log.info("scale-clients: object store, %d clients", n)
            store_rows.append(measure_object_store(n, cfg_shapes, seed, reads))
    finally:
        if ray.is_initialized() and started_ray:  # a caller's Ray is left running
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    state_bytes = int(sum(4 * int(np.prod(s)) for s in cfg_shapes.values()))
    small, large = rows[0], rows[-1]
    result: dict[str, Any] = {
        "benchmark": "scale-clients",
        "ratio": small["round_s"] / large["round_s"],
        "ratio_definition": (
            f"round time with {small['registered']:,} registered clients / round time with "
            f"{large['registered']:,} (median of rounds 2..R; higher is better)"
        ),
        "target": (
            f">= {TARGET:.3f}: {large['registered']:,}-client round time <= 1.2x "
            f"{small['registered']:,}-client"
        ),
        "target_met": small["round_s"] / large["round_s"] >= TARGET,
        "driver_rss_growth_mb": large["driver_rss_mb"] - small["driver_rss_mb"],
        "rows": rows,
        "store": store_rows,
        "setup": {
            "sizes": sizes,
            "object_sizes": object_sizes,
            "clients_per_round": clients_per_round,
            "rounds": rounds,
            "partitions": ds.num_clients,
            "per_class": per_class,
            "image_size": image_size,
            "arch": arch,
            "method": "fedrsclip",
            "strategy": "prompt_avg",
            "local_epochs": local_epochs,
            "workers": workers,
            "reads": reads,
            "seed": seed,
            "repeats": repeats,
            "order": "sizes ascending, then descending, alternately per repeat",
            "private_state_shapes": {k: list(s) for k, s in cfg_shapes.items()},
            "private_state_bytes": state_bytes,
            "data": data or "synthetic",
            "data_s": data_s,
        },
        "wall_s": time.perf_counter() - t_start,
        "machine": machine_info(),
    }
    return result


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
    write_result(result, json_path)
    plots.scale_clients(result, plot_path(json_path, "scale_clients"))
    return result
