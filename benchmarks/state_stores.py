"""The client-state stores measured by the benchmarks: private states of a method's real shapes,
the file store (``fedrs/core/state_store.py``: filled for N clients, a client's durable save,
read latency, bytes on disk, save + load per client) and Ray's object store holding the same
states (``scale-clients``' comparison; ``vs-sequential``'s store cost per client).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
Shapes = dict[str, tuple[int, ...]]


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
    from fedrs.core.state_store import FileStateStore

    store, make = FileStateStore(root), _States(shapes, seed)
    t0 = time.perf_counter()
    store.save_many(0, ((cid, make()) for cid in range(n)))
    write_s = time.perf_counter() - t0
    return {"write_s": write_s, "writes_per_s": n / write_s}


def client_saves(root: Path, n: int, shapes: Shapes, seed: int, count: int) -> dict[str, float]:
    """Latency of ``FileStateStore.save`` as a client calls it (fsync per file), over ``count``
    random clients of a populated store (a round-1 version each, removed again)."""
    from fedrs.core.state_store import FileStateStore

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
    return _ms(times, "client_save")


def _ms(seconds: list[float], name: str) -> dict[str, float]:
    """Median and 99th percentile of ``seconds``, in ms: ``{name}_ms_median`` / ``_ms_p99``."""
    ms = np.array(seconds) * 1e3
    return {
        f"{name}_ms_median": float(np.median(ms)),
        f"{name}_ms_p99": float(np.percentile(ms, 99)),
    }


def read_latency(read: Any, ids: np.ndarray) -> dict[str, float]:
    """Read latency of ``read(client id)`` over ``ids`` (each checked to return a state)."""
    times = []
    for cid in ids:
        t0 = time.perf_counter()
        state = read(int(cid))
        times.append(time.perf_counter() - t0)
        if not state:
            raise RuntimeError(f"client {cid}: no state read back")
    return _ms(times, "read")


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
            **read_latency(read, ids),
            "holder_rss_growth_mb": rss1 - rss0,
            "bytes": (plasma1["bytes"] - plasma0["bytes"]) if plasma0 and plasma1 else None,
        }
        if plasma0 and plasma1:
            row["objects"] = plasma1["objects"] - plasma0["objects"]
        return row
    finally:
        ray.kill(holder)


def state_store_cost(params: dict[str, np.ndarray], repeats: int = 20) -> float:
    """Seconds per save + load of one client's private tensors in the file state store (the part
    of an actor's client time that the in-memory sequential loop does not pay)."""
    from fedrs.core.state_store import FileStateStore

    if not params:
        return 0.0
    with tempfile.TemporaryDirectory(prefix="fedrs-store-") as tmp:
        store = FileStateStore(tmp)
        t0 = time.perf_counter()
        for r in range(1, repeats + 1):
            store.save(0, r, params)
            store.load(0, r + 1)
        return (time.perf_counter() - t0) / repeats


def private_example(cfg: Any, data_path: str) -> dict[str, np.ndarray]:
    """One client's private tensors (zeros), to time the state store with the real sizes."""
    from fedrs.datasets.manifest import FedDataset

    shapes = private_shapes(cfg, FedDataset(data_path).num_classes)
    return {k: np.zeros(s, np.float32) for k, s in shapes.items()}
