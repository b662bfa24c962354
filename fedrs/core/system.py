"""System heterogeneity on a deterministic virtual clock (``[system]``, ``federation.policy``).

Each registered client has a compute speed (FLOP/s), a link (bytes/s up and down) and an
availability process, all drawn from (run seed, client id): nothing is stored per registered
client, so 100,000 clients cost what 100 do. A task's virtual duration is a cost model, never
the measured wall time::

    duration = examples x epochs x F / speed + bytes_down / down + bytes_up / up

``F``: FLOPs of one training example (forward and backward) as torch's FLOP counter counts them
on the run's method (``ClientWorker.example_flops``). So a run's virtual times are the same at
any actor count and on any machine, and a slow client costs no wall time: a client the policy
drops is never run.

Availability ``onoff``: alternating on and off periods, exponential with means
``on_fraction x cycle_s`` and ``(1 - on_fraction) x cycle_s``, starting on with probability
``on_fraction``; ``trace``: each client's on intervals from a CSV (client c follows the
trace's client c mod its clients). A sampled client that is off when the round starts, or
goes off before its task ends, drops out (counted, with when).

Round policies (``schedule``), from the round's virtual start:

- ``sync``: every client that finishes counts; the round ends at the last finish;
- ``deadline``: clients not done by ``deadline_s`` are dropped; the round ends at the deadline
  if one was, else at the last finish;
- ``overselect``: ``ceil(clients_per_round x overselect)`` are sampled, the first
  ``clients_per_round`` to finish count, the rest are dropped; the round ends at the last kept.

The server's own time (aggregation, evaluation) is not on the clock.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrs.errors import ConfigError

SPEED, LINK, AVAILABILITY = 1, 2, 3  # streams of the seeded generator


@dataclass(frozen=True)
class Task:
    """One sampled client's work as the clock sees it."""

    client_id: int
    flops: float
    bytes_down: int
    bytes_up: int


class Profiles:
    """Every registered client's system, drawn on demand from (seed, client id)."""

    def __init__(self, cfg: Any, seed: int) -> None:
        self.cfg, self.seed = cfg, seed
        self.trace: list[tuple[float, float, float]] = []
        if cfg.speed == "trace":
            self.trace = read_trace(cfg.trace)
        self.intervals: list[list[tuple[float, float]]] = []
        if cfg.availability == "trace":
            self.intervals = read_intervals(cfg.availability_trace)

    def _rng(self, stream: int, client_id: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream, client_id])

    def speed(self, client_id: int) -> float:
        """FLOP/s."""
        c = self.cfg
        if self.trace:
            return self.trace[client_id % len(self.trace)][0] * 1e9
        if c.speed == "lognormal" and c.spread > 0:
            z = float(self._rng(SPEED, client_id).standard_normal())
            return c.gflops * 1e9 * math.exp(c.spread * z)
        return c.gflops * 1e9

    def link(self, client_id: int) -> tuple[float, float]:
        """Bytes/s up and down (inf: no limit)."""
        up, down = self.cfg.up_mbps, self.cfg.down_mbps
        if self.trace:
            _, t_up, t_down = self.trace[client_id % len(self.trace)]
            up, down = t_up or up, t_down or down
        return (up * 125_000 or math.inf), (down * 125_000 or math.inf)

    def duration(self, task: Task) -> float:
        up, down = self.link(task.client_id)
        compute = task.flops / self.speed(task.client_id)
        return compute + task.bytes_down / down + task.bytes_up / up

    def online(self, client_id: int, t: float) -> tuple[bool, float]:
        """Whether the client is on at virtual time ``t``, and when that period ends."""
        c = self.cfg
        if self.intervals:  # client c follows the trace's client c mod its clients
            later = math.inf
            for start, end in self.intervals[client_id % len(self.intervals)]:
                if start <= t < end:
                    return True, end
                if start > t:
                    later = min(later, start)
            return False, later
        if c.availability == "always" or c.on_fraction >= 1:
            return True, math.inf
        rng = self._rng(AVAILABILITY, client_id)
        means = (c.on_fraction * c.cycle_s, (1 - c.on_fraction) * c.cycle_s)
        on = bool(rng.random() < c.on_fraction)
        end = 0.0
        while True:
            end += float(rng.exponential(means[0] if on else means[1]))
            if end > t:
                return on, end
            on = not on


def read_trace(path: str) -> list[tuple[float, float, float]]:
    """Rows ``client,gflops[,up_mbps,down_mbps]`` (a header row is allowed), by client order;
    a one-line ``ConfigError`` for anything else."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"system.trace {path}: {exc.strerror or exc}") from None
    rows: list[tuple[int, tuple[float, float, float]]] = []
    for i, row in enumerate(csv.reader(text.splitlines())):
        if not row or (i == 0 and not row[0].strip().lstrip("-").isdigit()):
            continue
        try:
            values = [float(v) for v in row[1:4]] + [0.0] * (4 - len(row))
            client, gflops, up, down = int(row[0]), *values[:3]
        except (ValueError, IndexError):
            raise ConfigError(f"system.trace {path} line {i + 1}: {row!r} is not numbers") from None
        if not (gflops > 0 and up >= 0 and down >= 0 and math.isfinite(gflops + up + down)):
            raise ConfigError(f"system.trace {path} line {i + 1}: gflops must be > 0")
        rows.append((client, (gflops, up, down)))
    if not rows:
        raise ConfigError(f"system.trace {path}: no client rows")
    return [v for _, v in sorted(rows)]


def read_intervals(path: str) -> list[list[tuple[float, float]]]:
    """Rows ``client,start_s,end_s`` (a header row is allowed): each client's on intervals, by
    client order; a one-line ``ConfigError`` for anything else."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"system.availability_trace {path}: {exc.strerror or exc}") from None
    by_client: dict[int, list[tuple[float, float]]] = {}
    for i, row in enumerate(csv.reader(text.splitlines())):
        if not row or (i == 0 and not row[0].strip().isdigit()):
            continue
        try:
            client, start, end = int(row[0]), float(row[1]), float(row[2])
        except (ValueError, IndexError):
            raise ConfigError(
                f"system.availability_trace {path} line {i + 1}: {row!r} is not client,start,end"
            ) from None
        if not 0 <= start < end:
            raise ConfigError(
                f"system.availability_trace {path} line {i + 1}: needs 0 <= start < end"
            )
        by_client.setdefault(client, []).append((start, end))
    if not by_client:
        raise ConfigError(f"system.availability_trace {path}: no intervals")
    return [sorted(v) for _, v in sorted(by_client.items())]


@dataclass(frozen=True)
class Schedule:
    """What the clock decided for a round's tasks (by index into them)."""

    kept: list[int]
    dropped: dict[int, str]
    finish: dict[int, float]  # virtual finish time of every task that ran or would have
    end: float  # the round's virtual end


def schedule(
    policy: str,
    start: float,
    tasks: list[Task],
    profiles: Profiles,
    keep: int,
    deadline_s: float = 0.0,
) -> Schedule:
    """Which tasks count under ``policy`` (module docstring), deterministic in its inputs;
    ties in finish time go to the earlier task."""
    dropped: dict[int, str] = {}
    finish: dict[int, float] = {}
    for i, task in enumerate(tasks):
        on, until = profiles.online(task.client_id, start)
        if not on:
            dropped[i] = f"offline at t={start:.1f} s (back at {until:.1f} s)"
            continue
        finish[i] = start + profiles.duration(task)
        if finish[i] > until:
            dropped[i] = f"went offline at t={until:.1f} s, before finishing at {finish[i]:.1f} s"
    done = sorted((t, i) for i, t in finish.items() if i not in dropped)
    if policy == "deadline":
        late = [i for t, i in done if t > start + deadline_s]
        dropped |= {
            i: f"missed the deadline ({finish[i] - start:.1f} s > {deadline_s:g} s)" for i in late
        }
        done = [(t, i) for t, i in done if i not in dropped]
        end = start + deadline_s if late else max((t for t, _ in done), default=start)
    elif policy == "overselect":
        dropped |= {
            i: f"over-selected: not among the first {keep} to finish" for _, i in done[keep:]
        }
        done = done[:keep]
        end = max((t for t, _ in done), default=start)
    else:
        end = max((t for t, _ in done), default=start)
    if not done and dropped and policy != "deadline":
        end = start  # nobody ran: the round takes no time (the next starts where it was)
    return Schedule(sorted(i for _, i in done), dropped, finish, end)


def cohort_size(policy: str, clients_per_round: int, overselect: float) -> int:
    """Clients sampled per round: more under over-selection."""
    if policy == "overselect":
        return math.ceil(clients_per_round * overselect)
    return clients_per_round


def time_to_target(records: list[dict[str, Any]], metric: str, target: float) -> float | None:
    """The first virtual time at which ``metric`` reached ``target`` (None: never)."""
    for r in records:
        value = r.get(metric)
        if value is not None and value >= target and "virtual_time_s" in r:
            return float(r["virtual_time_s"])
    return None


# ------------------------------------------------------------------ asynchronous rounds
@dataclass(frozen=True)
class AsyncTask:
    """One client's task in an asynchronous run: started at virtual ``start`` on global
    version ``base``; it arrives at ``finish`` unless its client goes off first (``lost``)."""

    seq: int
    client_id: int
    base: int
    start: float
    finish: float
    lost: str = ""


@dataclass(frozen=True)
class Aggregation:
    """The server's ``version``-th aggregation: at virtual ``time``, of ``arrivals`` (with
    their staleness, ``version - 1 - base``), after ``lost`` tasks dropped since the last."""

    version: int
    time: float
    arrivals: list[AsyncTask]
    lost: list[AsyncTask]


class AsyncSchedule:
    """FedBuff (Nguyen et al., 2022) on the virtual clock: ``concurrency`` clients train at
    once, each on the global version current when it starts; the server aggregates every
    ``buffer`` arrivals (FedAsync, Xie et al., 2019: a buffer of one); a client that arrives
    or is lost is replaced at once by a newly drawn one. Which client trains when, on which
    version, and which arrivals each aggregation takes follow from the clients' task costs
    alone, never from training results or wall time, so the whole schedule is computed ahead
    (``until``) and is the same on every machine and actor count.

    ``draw(seq, busy)``: the client of task ``seq``, not in ``busy`` (None: nobody left);
    ``cost(client)``: its task's ``Task``. A client trains at most once per version."""

    def __init__(
        self,
        profiles: Profiles,
        draw: Any,
        cost: Any,
        concurrency: int,
        buffer: int,
        start: float = 0.0,
    ) -> None:
        self.profiles, self.draw, self.cost = profiles, draw, cost
        self.buffer = buffer
        self.version, self.seq = 0, 0
        self.flying: list[AsyncTask] = []
        self.started: dict[int, list[AsyncTask]] = {0: []}  # by base version
        self.done: list[Aggregation] = []
        self._pending: list[AsyncTask] = []
        self._lost: list[AsyncTask] = []
        self._busy_version: set[int] = set()  # clients that started on the current version
        for _ in range(concurrency):
            self._launch(start)

    def _launch(self, t: float) -> None:
        for _ in range(100):  # a drawn client that is off now is passed over
            # one task per client at a time, none again on a version, none while its last
            # arrival waits in the buffer: a client appears at most once per aggregation
            waiting = self._pending + self._lost
            busy = {x.client_id for x in self.flying + waiting} | self._busy_version
            client = self.draw(self.seq, busy)
            self.seq += 1
            if client is None:
                return
            on, until = self.profiles.online(client, t)
            if not on:
                continue
            finish = t + self.profiles.duration(self.cost(client))
            lost = f"went offline at t={until:.1f} s, before finishing" if finish > until else ""
            task = AsyncTask(self.seq - 1, client, self.version, t, min(finish, until), lost)
            self.flying.append(task)
            self.started.setdefault(self.version, []).append(task)
            self._busy_version.add(client)
            return

    def until(self, version: int) -> Aggregation:
        """Advance the schedule to the ``version``-th aggregation (idempotent)."""
        while self.version < version:
            if not self.flying:
                raise RuntimeError("no client left to train: every client is busy or off")
            task = min(self.flying, key=lambda x: (x.finish, x.seq))
            self.flying.remove(task)
            if task.lost:
                self._lost.append(task)
            else:
                self._pending.append(task)
            if len(self._pending) == self.buffer:
                self.version += 1
                agg = Aggregation(self.version, task.finish, self._pending, self._lost)
                self.done.append(agg)
                self._pending, self._lost, self._busy_version = [], [], set()
                self.started.setdefault(self.version, [])
            self._launch(task.finish)
        return self.done[version - 1]


def staleness_weight(staleness: int) -> float:
    """FedBuff's down-weighting of an update ``staleness`` versions old: 1 / sqrt(1 + s)."""
    return 1.0 / math.sqrt(1.0 + staleness)


def stale_update(update: Any, current: Any, base: Any, staleness: int) -> Any:
    """An update trained from ``base`` (``staleness`` versions ago) as a step from ``current``:
    ``current + w (update - base)``, ``w = staleness_weight(staleness)``; what the strategy
    then combines like any round's updates (FedBuff's staleness-scaled buffered deltas)."""
    w = staleness_weight(staleness)
    params = {
        k: (current[k].astype(np.float64) + w * (np.asarray(v, np.float64) - base[k])).astype(
            current[k].dtype
        )
        for k, v in update.params.items()
    }
    return dataclasses.replace(update, params=params)
