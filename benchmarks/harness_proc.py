"""The processes a timing benchmark starts: one fresh child process per measurement (a spec in,
its result as JSON and its arrays as ``.npz`` out), a local Ray (started and stopped around a
measurement, or with a given number of CPUs / GPUs) and fedrs's driver actor.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ERROR_TAIL = 15  # lines of a failed child's output in the error


def run_child(module: str, spec: dict[str, Any], work: Path, name: str) -> dict[str, Any]:
    """``python -m module SPEC`` in a fresh process whose Ray is its own (``RAY_ADDRESS``
    cleared). The child (``child_main``) gets ``spec``; its result dict comes back, the arrays
    it returned under ``params``."""
    spec = {**spec, "result": str(work / f"{name}.json"), "params": str(work / f"{name}.npz")}
    spec_path = work / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, "-m", module, str(spec_path)],
        env={**os.environ, "RAY_ADDRESS": ""},
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-ERROR_TAIL:])
        raise RuntimeError(f"{name} failed:\n{tail}")
    result = json.loads(Path(spec["result"]).read_text())
    with np.load(spec["params"]) as saved:
        result["params"] = {k: saved[k] for k in saved.files}
    return result


def child_main(measure: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """The child's side of ``run_child`` (``sys.argv[1]``: the spec's path): ``measure(spec)``,
    whose ``params`` are written as ``.npz`` and the rest as JSON."""
    from fedrs.io import write_bytes, write_json

    logging.basicConfig(level=logging.WARNING)
    spec = json.loads(Path(sys.argv[1]).read_text())
    result = measure(spec)
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in result.pop("params").items()})
    write_bytes(spec["params"], buf.getvalue())
    write_json(spec["result"], result)


def local_ray_args(num_cpus: int | None, **extra: Any) -> dict[str, Any]:
    """``ray.init`` arguments of a fresh local Ray on loopback with ``num_cpus`` CPUs (``extra``:
    ``num_gpus``, ``log_to_driver``, ...), no dashboard."""
    return {
        "address": "local",
        "num_cpus": num_cpus,
        "_node_ip_address": "127.0.0.1",
        "include_dashboard": False,
        **extra,
    }


@contextlib.contextmanager
def own_ray() -> Iterator[dict[str, float]]:
    """Ray for the block: started here as ``fedrs run`` starts it (``runner.connect_ray``) unless
    one is up, and then shut down on leaving; a caller's Ray is left running. Yields the seconds
    it took to start (``start_s``); ``shutdown_s`` is added when it was shut down here."""
    import ray

    from fedrs.orchestrator.spawn import connect_ray

    started = not ray.is_initialized()
    t = time.perf_counter()
    if started:
        connect_ray()
    times = {"start_s": time.perf_counter() - t}
    try:
        yield times
    finally:
        if started and ray.is_initialized():
            t = time.perf_counter()
            ray.shutdown()
            times["shutdown_s"] = time.perf_counter() - t


@dataclass
class DriverUp:
    """A driver actor whose client actors are up: its handle, the actors' descriptions
    (``describe_actors``), and the ``perf_counter`` times it was created and was ready."""

    handle: Any
    actors: list[dict[str, Any]]
    created: float
    ready: float

    @property
    def spawn_s(self) -> float:
        return self.ready - self.created


@contextlib.contextmanager
def driver_actor(cfg: Any, run_dir: Path, data_path: str) -> Iterator[DriverUp]:
    """The driver actor as ``runner.run`` creates it, after the checks every run gets
    (``preflight``, untimed), up with its client actors; killed on leaving."""
    import ray

    from fedrs.methods import method_class
    from fedrs.orchestrator.driver import Driver
    from fedrs.orchestrator.preflight import preflight

    preflight(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    created = time.perf_counter()
    driver = ray.remote(num_cpus=0)(Driver).remote(
        cfg, str(run_dir.resolve()), data_path, method_class(cfg.method.name), False
    )
    try:
        actors = ray.get(driver.describe_actors.remote())
        yield DriverUp(driver, actors, created, time.perf_counter())
    finally:
        ray.kill(driver)
