"""The run's virtual clock (``[system]``, ``federation.policy``; the model is
``fedrs/core/system.py``): what each sampled client's task costs in virtual seconds, which
tasks the round's policy keeps (the others are never run), and where the clock stands. The
clock's position is each round's ``virtual_time_s`` in ``metrics.jsonl``, so ``--resume``
finds it there."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from fedrs.core.config import RunConfig
from fedrs.core.system import (
    Aggregation,
    AsyncSchedule,
    AsyncTask,
    Profiles,
    Schedule,
    Task,
    cohort_size,
    schedule,
)
from fedrs.orchestrator import records

log = logging.getLogger(__name__)


class Clock:
    """Virtual time for a run: ``sampling`` (the cohort the policy samples), ``plan`` (the
    round's schedule), ``advance`` (the round's record fields)."""

    def __init__(
        self,
        cfg: RunConfig,
        pool: Any,
        params: dict[str, np.ndarray],
        upload_keys: tuple[str, ...],
        run_dir: Path,
        resumed: bool,
    ) -> None:
        self.cfg = cfg
        self.profiles = Profiles(cfg.system, cfg.federation.seed)
        # FLOPs of one training example for one epoch: the clock's unit of work
        self.example_flops = float(pool.call_one("example_flops", params, tuple(upload_keys)))
        done = records.read(run_dir) if resumed and (run_dir / records.METRICS).is_file() else []
        self.now = float(done[-1].get("virtual_time_s", 0.0)) if done else 0.0
        log.info(
            "virtual clock: %.3g FLOPs per training example, policy %s, from t=%.1f s",
            self.example_flops,
            cfg.federation.policy,
            self.now,
        )

    def sampling(self) -> RunConfig:
        """The config the round's sampler reads (over-selection samples more)."""
        fed = self.cfg.federation
        n = cohort_size(fed.policy, fed.clients_per_round, fed.overselect)
        return dataclasses.replace(
            self.cfg, federation=dataclasses.replace(fed, clients_per_round=n)
        )

    def plan(
        self, sampled: list[int], examples: list[int], down: list[int], up: list[int]
    ) -> Schedule:
        """The round's schedule for the sampled clients (by index), from their examples and
        the bytes each receives and sends."""
        fed, epochs = self.cfg.federation, self.cfg.client.local_epochs
        tasks = [
            Task(c, self.example_flops * n * epochs, d, u)
            for c, n, d, u in zip(sampled, examples, down, up, strict=True)
        ]
        return schedule(
            fed.policy, self.now, tasks, self.profiles, fed.clients_per_round, fed.deadline_s
        )

    def advance(self, sampled: list[int], plan: Schedule) -> dict[str, Any]:
        """Move the clock to the round's end; the round's record fields."""
        start, self.now = self.now, plan.end
        return {
            "virtual_round_s": plan.end - start,
            "virtual_time_s": plan.end,
            "clients_late": len(plan.dropped),
            "virtual_task_s": {str(sampled[i]): t - start for i, t in plan.finish.items()},
        }


class AsyncRounds:
    """FedBuff / FedAsync rounds (``federation.policy``; ``fedrs/core/system.py``:
    ``AsyncSchedule``): a round is one aggregation. Before aggregation r the tasks that start
    on version r - 1 are handed to the pool (``start``) and keep training while the driver
    goes on: aggregation r waits only for the tasks the schedule says arrive in it (``due``),
    so the actors stay busy across aggregations (no barrier in wall time). Each reply keeps
    the version it trained from until it arrives (``hold``, ``take``), so its update is
    ``reply - that version``, down-weighted by its staleness (``staleness_weight``) when it
    reaches the strategy."""

    STREAM = 4  # the seeded generator's stream for drawing clients

    def __init__(
        self,
        cfg: RunConfig,
        clock: Clock,
        usable: Any,
        task_of: Any,
    ) -> None:
        fed = cfg.federation
        self.seed, self.usable = fed.seed, usable
        buffer = 1 if fed.policy == "fedasync" else (fed.buffer or fed.clients_per_round)
        self.schedule = AsyncSchedule(
            clock.profiles, self._draw, task_of, fed.clients_per_round, buffer, 0.0
        )
        # seq -> (reply, why it failed, the version it trained from), until it arrives
        self.replies: dict[int, tuple[dict[str, Any] | None, str, int]] = {}
        # seq -> (task, its index in the pool's stream, the tensors it received, their
        # versions then): handed out, reply not collected yet
        self.running: dict[int, tuple[AsyncTask, int, tuple[str, ...], np.ndarray]] = {}
        # tasks a resumed run must hand out again (running when the checkpoint was written)
        self.restarts: list[tuple[AsyncTask, tuple[str, ...], np.ndarray]] = []
        self.versions: dict[int, dict[str, np.ndarray]] = {}  # what waiting replies trained from

    def _draw(self, seq: int, busy: set[int]) -> int | None:
        """Task ``seq``'s client: uniform over the usable registered clients not busy."""
        rng = np.random.default_rng([self.seed, self.STREAM, seq])
        n = len(self.usable)
        for _ in range(64 + 4 * len(busy)):
            c = self.usable[int(rng.integers(n))]
            if c not in busy:
                return c
        return None

    def wave(self, version: int) -> list[AsyncTask]:
        """The tasks that start on ``version`` (known once the next aggregation is)."""
        self.schedule.until(version + 1)
        return list(self.schedule.started.get(version, []))

    def start(
        self,
        task: AsyncTask,
        index: int,
        params: dict[str, np.ndarray],
        down: tuple[str, ...],
        held_at: np.ndarray,
    ) -> None:
        """``task`` was handed to the pool's stream as ``index``, with ``params`` (its base
        version; kept until its reply arrives)."""
        self.running[task.seq] = (task, index, tuple(down), held_at)
        self.versions.setdefault(task.base, params)

    def due(self, version: int) -> list[tuple[AsyncTask, int, tuple[str, ...], np.ndarray]]:
        """The running tasks whose replies aggregation ``version`` takes: wait for these."""
        agg = self.schedule.until(version)
        return [self.running[t.seq] for t in agg.arrivals if t.seq in self.running]

    def hold(self, task: AsyncTask, reply: dict[str, Any] | None, why: str) -> None:
        """Keep a task's reply (or why it failed) until it arrives."""
        self.running.pop(task.seq, None)
        self.replies[task.seq] = (reply, why, task.base)

    def take(self, version: int) -> tuple[Aggregation, list[tuple[AsyncTask, Any, str, Any]]]:
        """Aggregation ``version`` and, for each of its arrivals and lost tasks, (task, reply,
        why, the tensors it trained from); versions no waiting reply needs are let go."""
        agg = self.schedule.until(version)
        out = []
        for task in agg.arrivals + agg.lost:
            reply, why, _ = self.replies.pop(task.seq, (None, "never ran", task.base))
            out.append((task, reply, task.lost or why, self.versions.get(task.base)))
        needed = {base for _, _, base in self.replies.values()}
        needed |= {t.base for t, *_ in self.running.values()}
        needed |= {t.base for t, *_ in self.restarts}
        for v in [v for v in self.versions if v not in needed]:
            del self.versions[v]
        return agg, out

    # ------------------------------------------------------------------ checkpoint
    PREFIX = "driver/async/"  # beside the holdings' state (``holdings.PREFIX``)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The replies waiting to arrive (tensors and the rest as JSON), the tasks still
        training (a resumed run trains them again: a fit depends only on its inputs) and the
        versions they trained from: what a resumed run cannot recompute. The schedule itself
        is not saved: it is replayed from the seed."""
        out: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {}
        for seq, (reply, why, base) in self.replies.items():
            fields = {k: v for k, v in (reply or {}).items() if k not in ("params", "extras")}
            meta[str(seq)] = {"why": why, "base": base, "ran": reply is not None, "reply": fields}
            for part in ("params", "extras"):
                for k, v in ((reply or {}).get(part) or {}).items():
                    out[f"{self.PREFIX}r{seq}/{part}/{k}"] = np.asarray(v)
        running = [(t, down, at) for t, _, down, at in self.running.values()] + self.restarts
        for task, down, at in running:  # still training: a resumed run hands them out again
            meta[str(task.seq)] = {"base": task.base, "down": list(down), "at": at.tolist()}
        for v, params in self.versions.items():
            out |= {f"{self.PREFIX}v{v}/{k}": x for k, x in params.items()}
        text = json.dumps(meta, default=str).encode()
        out[self.PREFIX + "meta"] = np.frombuffer(text, dtype=np.uint8).copy()
        return out

    def load_state_dict(self, state: dict[str, Any], version: int) -> None:
        """Replay the schedule to aggregation ``version`` and restore what was waiting (and,
        in ``restarts``, what was training)."""
        self.schedule.until(version)
        raw = state.get(self.PREFIX + "meta")
        meta = json.loads(bytes(np.asarray(raw, dtype=np.uint8))) if raw is not None else {}
        started = {t.seq: t for tasks in self.schedule.started.values() for t in tasks}
        for seq, m in meta.items():
            if "at" in m:  # was training
                at = np.asarray(m["at"], dtype=np.int64)
                self.restarts.append((started[int(seq)], tuple(m["down"]), at))
                continue
            reply = None
            if m["ran"]:
                reply = dict(m["reply"])
                for part in ("params", "extras"):
                    head = f"{self.PREFIX}r{seq}/{part}/"
                    reply[part] = {
                        k[len(head) :]: v for k, v in state.items() if k.startswith(head)
                    }
            self.replies[int(seq)] = (reply, m["why"], int(m["base"]))
        for key, x in state.items():
            if key.startswith(self.PREFIX + "v"):
                v, name = key[len(self.PREFIX) + 1 :].split("/", 1)
                self.versions.setdefault(int(v), {})[name] = x
