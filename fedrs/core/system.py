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
``on_fraction``. A sampled client that is off when the round starts, or goes off before its
task ends, drops out (counted, with when).

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
