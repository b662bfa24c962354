"""The timing harness every speed benchmark shares (``fedrs bench vs-sequential``, ``packing``,
``vs-flower``, ``allocator``, ``sweep``): the synthetic workload's data, the method and strategy
built in-process exactly as actors and driver build them, fedrs timed from outside (round lines
as they reach the console), CPU accounting from /proc (who used the cores while a phase ran),
steady-state windows and comparisons of final tensors. Child processes and a local Ray are in
``harness_proc.py``; output (tables, JSON, figures, the result dict, machine description) in
``common.py``; a benchmark module states its workload and its comparison.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROUND_LINE = re.compile(r"^\s*round\s+(\d+)/")


def build_data(
    out: Path,
    partition: str,
    num_clients: int,
    per_class: int,
    image_size: int,
    seed: int,
    alpha: float | None,
    min_examples: int | None = None,
) -> str:
    """The synthetic RS scenes, partitioned ``iid`` (equal clients) or ``dirichlet``, built once
    into ``out``."""
    from fedrs.datasets.manifest import MANIFEST
    from fedrs.datasets.partition import PartitionSpec
    from fedrs.datasets.synth import build_synthetic

    if not (out / MANIFEST).is_file():
        spec = PartitionSpec(
            scheme=partition,
            num_clients=num_clients,
            seed=seed,
            alpha=alpha,
            **({} if min_examples is None else {"min_examples": min_examples}),
        )
        build_synthetic(out, per_class=per_class, image_size=image_size, partition=spec)
    return str(out.resolve())


def datasets(
    data: str | None,
    root: Path,
    parts: list[tuple[str, float | None]],
    clients: int,
    per_class: int,
    image_size: int,
    seed: int,
) -> list[tuple[str, str]]:
    """(label, path): the data given, else one synthetic build per (partition, alpha) of
    ``parts`` in ``root`` (labels ``iid``, ``dirichlet(alpha)``)."""
    if data:
        return [("given", str(Path(data).resolve()))]
    return [
        (
            p if a is None else f"{p}({a})",
            build_data(root / f"data-{p}", p, clients, per_class, image_size, seed, a),
        )
        for p, a in parts
    ]


def client_exchange(
    cfg: Any, data: Any, strategy: Any, global_keys: Any, rnd: int, cid: int
) -> Any:
    """What the driver sends this client in ``rnd`` and asks it to upload: the same
    ``orchestrator/exchange.py`` rules (its group's tensors, its round's stage)."""
    from fedrs.methods import method_class
    from fedrs.orchestrator.exchange import client_record, exchange_for

    record = client_record(data.manifest["clients"], cid)
    return exchange_for(
        method_class(cfg.method.name), cfg, record, rnd, tuple(global_keys), strategy.upload_keys
    )


def build_local(cfg: Any, data: Any) -> tuple[Any, Any, dict[str, np.ndarray], Any]:
    """The method on the CPU, its initial global tensors and the run's strategy, built in this
    process as a client actor (method) and the driver (strategy) build them:
    ``(method_cls, method, params, strategy)``."""
    from fedrs.core.strategies import make_strategy
    from fedrs.methods import method_class

    method_cls = method_class(cfg.method.name)
    method = method_cls(cfg, data.classes, "cpu")
    params = method.init_global(cfg.federation.seed)
    strategy = make_strategy(
        cfg.strategy.name,
        options=cfg.strategy,
        global_keys=tuple(params),
        prompt_keys=method_cls.prompt_keys,
    )
    return method_cls, method, params, strategy


TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_cpu() -> dict[str, float]:
    """Cumulative CPU seconds of the whole machine: busy (all processes) and steal (VM)."""
    try:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:9]]
    except OSError:
        return {}
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return {"busy": (user + nice + system + irq + softirq) / TICK, "steal": steal / TICK}


def tree_cpu(root: int | None = None) -> dict[int, tuple[str, float]]:
    """{pid: (name, cumulative CPU s)} of ``root`` (this process) and all its descendants: with
    a local Ray instance, GCS, raylet, agents, the driver actor and the client actors."""
    root = root or os.getpid()
    procs: dict[int, tuple[int, str, float]] = {}
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                text = fh.read()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        rest = text[text.rindex(")") + 2 :].split()
        procs[pid] = (int(rest[1]), name, (int(rest[11]) + int(rest[12])) / TICK)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            out[pid] = (procs[pid][1], procs[pid][2])
        todo.extend(children.get(pid, []))
    return out


def cpu_snapshot() -> dict[str, Any]:
    return {"t": time.perf_counter(), "machine": machine_cpu(), "tree": tree_cpu()}


def cpu_between(a: dict[str, Any], b: dict[str, Any], actors: set[int]) -> dict[str, Any]:
    """Cores used between two snapshots: by the client actors, by the rest of this process
    tree (Ray's daemons, the driver actor, idle workers, this process), and by everything else
    on the machine (other users) - CPU seconds per wall second."""
    wall = b["t"] - a["t"]
    if wall <= 0 or not a["machine"] or not b["machine"]:
        return {}
    used: dict[str, float] = {}
    for pid, (name, cpu) in b["tree"].items():
        if pid in a["tree"]:
            key = "client_actors" if pid in actors else name
            used[key] = used.get(key, 0.0) + cpu - a["tree"][pid][1]
    ours = sum(used.values())
    busy = b["machine"]["busy"] - a["machine"]["busy"]
    rest = {k: v / wall for k, v in sorted(used.items(), key=lambda kv: -kv[1])}
    return {
        "wall_s": wall,
        "client_actors_cores": rest.pop("client_actors", 0.0),
        "orchestration_cores": sum(rest.values()),
        "orchestration_by_process": {k: round(v, 4) for k, v in rest.items() if v >= 0.001},
        "other_users_cores": max(0.0, busy - ours) / wall,
        "steal_cores": (b["machine"]["steal"] - a["machine"]["steal"]) / wall,
    }


@contextlib.contextmanager
def threads(n: int = 1) -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class RoundClock(io.TextIOBase):
    """A console file that timestamps every line written to it."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, str]] = []
        self._buf = ""

        self.cpu: dict[int, dict[str, Any]] = {}  # round -> snapshot as its line arrived

    def write(self, text: str) -> int:
        now = time.perf_counter()
        self._buf += text
        *done, self._buf = self._buf.split("\n")
        self.lines.extend((now, line) for line in done)
        for line in done:
            if m := ROUND_LINE.match(line):
                self.cpu[int(m.group(1))] = cpu_snapshot()
        return len(text)

    def writable(self) -> bool:
        return True


def actor_pids(records: list[dict[str, Any]]) -> set[int]:
    """The client actors' process ids, from the ``worker`` ("index:pid") of each client."""
    return {
        int(str(c.get("worker", ":")).split(":")[-1] or 0)
        for rec in records
        for c in rec["clients"].values()
    }


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    from fedrs.orchestrator import records

    return records.read(run_dir)


def run_fedrs(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """``runner.run`` as ``fedrs run`` calls it; per-round periods from the times its round lines
    reach the console (round 1 counts from the header line, printed once the actors are up)."""
    from rich.console import Console

    from fedrs.orchestrator import checkpoint
    from fedrs.orchestrator.runner import run as run_federation

    clock = RoundClock()
    console = Console(file=clock, width=240, color_system=None, force_terminal=False)
    t0 = time.perf_counter()
    summary = run_federation(cfg, out=str(run_dir), console=console)
    t_end = time.perf_counter()
    header = next((t for t, line in clock.lines if "client actors" in line), None)
    ends = {int(m.group(1)): t for t, line in clock.lines if (m := ROUND_LINE.match(line))}
    records = read_metrics(run_dir)
    if header is None or len(ends) != len(records):
        raise RuntimeError("could not time fedrs's rounds from its console lines")
    periods, prev = [], header
    for rec in records:
        periods.append(ends[rec["round"]] - prev)
        prev = ends[rec["round"]]
    saved = checkpoint.load(run_dir)
    actors = actor_pids(records)
    steady = [i + 1 for i in steady_index(len(records))]
    first, last = steady[0] - 1, steady[-1]  # from the end of the round before the window
    cpu = (
        cpu_between(clock.cpu[first], clock.cpu[last], actors)
        if first in clock.cpu and last in clock.cpu
        else {}
    )
    return {
        "cpu_steady": cpu,
        "spawn_s": header - t0,  # data check, driver actor, placement group, actors, init_global
        "finish_s": t_end - prev,  # summary, plot, actors released
        "periods": periods,
        "records": records,
        "summary": summary,
        "params": saved[1] if saved else {},
    }


def merge_cpu(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """``cpu_between`` over several intervals as one: cores weighted by each interval's wall."""
    wall = sum(p["wall_s"] for p in parts)
    if not parts or wall <= 0:
        return {}
    out: dict[str, Any] = {"wall_s": wall}
    for key in ("client_actors_cores", "orchestration_cores", "other_users_cores", "steal_cores"):
        out[key] = sum(p[key] * p["wall_s"] for p in parts) / wall
    by: dict[str, float] = {}
    for p in parts:
        for name, cores in p["orchestration_by_process"].items():
            by[name] = by.get(name, 0.0) + cores * p["wall_s"] / wall
    out["orchestration_by_process"] = {k: round(v, 4) for k, v in sorted(by.items())}
    return out


def steady_index(rounds: int) -> list[int]:
    """Round indices (0-based) of the steady state: no first round, no final evaluation round."""
    idx = list(range(1, rounds - 1)) if rounds >= 3 else list(range(1, rounds))
    return idx or [0]


def max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    if set(a) != set(b):
        return float("inf")
    return max((float(np.max(np.abs(a[k] - b[k]))) for k in a), default=0.0)


def transpose_rows(
    rows: list[dict[str, Any]], key: str, skip: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """One row per figure, one column per ``key`` value (tables that fit 80 columns); the
    ``skip`` figures are left out."""
    names = [k for k in rows[0] if k != key and k not in skip]
    return [{"figure": n, **{str(r[key]): r[n] for r in rows}} for n in names]
