"""One ``ClientPool.map`` call: tasks handed out largest first to actors as they free up (one
more queued behind each running task until the round's tail), every failure a per-task reason.

Two rules keep one slow or dying actor from costing the round other clients:

* **work stealing**: an actor left idle at the round's tail takes a task still queued behind
  another actor's running one (a straggler's queue); the original is cancelled (Ray cancels an
  actor task that has not started). Should it have started anyway, both copies compute the same
  fit (a client's fit depends only on the run seed, its id and the round, and its private state
  is read from the version before the round), the first result counts and the other is dropped;
* **restart credit**: time during which every live actor is being restarted by Ray, with tasks
  waiting, does not count against the round's deadline (up to ``RESTART_GRACE_S`` or one more
  ``timeout_s``, whichever is longer): the deadline is for slow clients, not for Ray bringing
  crashed actors back; an actor killed at a deadline is waited for in the next call too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    RayActorError,
    RayError,
    RayTaskError,
)

from fedrs.errors import RunStopped

if TYPE_CHECKING:
    from fedrs.actors.pool import ClientPool

log = logging.getLogger(__name__)

AFFINITY_SLACK = 0.2  # an actor's own task may be this much smaller than the largest pending
RESTART_GRACE_S = 60.0  # waiting for Ray to restart every actor: at most this (or the timeout)


def reason(exc: BaseException) -> str:
    if isinstance(exc, RayTaskError):
        cause = exc.cause if exc.cause is not None else exc
        text = str(cause).strip().splitlines()
        return f"client raised {type(cause).__name__}: {text[-1] if text else ''}".strip()
    if isinstance(exc, ActorUnavailableError):
        return f"actor died or became unreachable ({type(exc).__name__})"
    if isinstance(exc, RayActorError):
        return f"actor died ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"


REQUEUES = 3  # times a task never started is sent back from dead actors before it fails


class PerTask(list):
    """``ClientPool.map``'s ``shared`` argument, one entry per task (e.g. each client's own
    download when clients of different groups receive different tensors)."""


class Dispatch:
    """One ``ClientPool.map`` call: its pending tasks, each actor's queue (submission order =
    execution order: the head runs), results, failures and the deadline."""

    def __init__(
        self,
        pool: ClientPool,
        method: str,
        shared: Any,
        tasks: list[Any],
        timeout_s: float,
        costs: list[float] | None,
        affinity: list[Hashable] | None,
    ) -> None:
        self.pool, self.method, self.shared = pool, method, shared
        self.timeout_s, self.costs, self.affinity = timeout_s, costs, affinity
        order = range(len(tasks))
        if costs is not None:
            order = sorted(order, key=lambda i: -costs[i])  # stable: ties keep task order
        self.pending = deque((i, tasks[i]) for i in order)
        self.queues: list[deque[tuple[ray.ObjectRef, int, Any]]] = [deque() for _ in pool.actors]
        self.owner: dict[ray.ObjectRef, int] = {}
        self.requeued: dict[int, int] = {}  # task -> times sent back unstarted from a dead actor
        # an actor that died gets no task until Ray has restarted it (its readiness probe)
        # (kept across calls: an actor killed at the last round's deadline is still restarting)
        self.probes = pool.restarting
        self.results: dict[int, Any] = {}
        self.failures: dict[int, str] = {}
        self.deadline = time.monotonic() + timeout_s
        self.credit = max(timeout_s, RESTART_GRACE_S)  # deadline extension left for restarts

    def extend(
        self, shared: list[Any], tasks: list[Any], costs: list[float], affinity: list[Hashable]
    ) -> list[int]:
        """More tasks for a dispatch kept open across calls (``ClientPool.stream``): queued
        behind the pending ones, largest cost first among themselves; their task indices."""
        assert isinstance(self.shared, PerTask) and self.costs is not None
        assert self.affinity is not None
        first = len(self.shared)
        self.shared.extend(shared)
        self.costs.extend(costs)
        self.affinity.extend(affinity)
        order = sorted(range(len(tasks)), key=lambda i: -costs[i])
        self.pending.extend((first + i, tasks[i]) for i in order)
        return [first + i for i in range(len(tasks))]

    def open(self, until: set[int] | None) -> bool:
        """Work left: any task at all (``until`` None), else any of ``until`` unsettled."""
        if until is None:
            return bool(self.pending or self.owner)
        return any(ti not in self.results and ti not in self.failures for ti in until)

    def drain(self, wait_s: float) -> None:
        """Abandon what is left: pending tasks never go out, queued ones are cancelled, the
        running ones (one per actor) are waited for, up to ``wait_s``; no result is kept."""
        self._cancel_all()
        ray.wait(list(self.owner), num_returns=len(self.owner), timeout=wait_s)
        self._forget()

    def _forget(self) -> None:
        """No task pending or queued any more (each already settled or abandoned)."""
        self.pending.clear()
        self.owner.clear()
        for queue in self.queues:
            queue.clear()

    def run(
        self, depth: int, stop: threading.Event | None, until: set[int] | None = None
    ) -> tuple[dict[int, Any], dict[int, str]]:
        """Hand out, wait, settle, until every task (or every task of ``until``: the others
        keep running, for a later call) has a result or a failure. With ``until`` the
        deadline is ``timeout_s`` from this call."""
        if until is not None:
            self.deadline = time.monotonic() + self.timeout_s
        while self.open(until):
            if stop is not None and stop.is_set():
                self._cancel_all()
                left = len(self.owner) + len(self.pending)
                raise RunStopped(f"{self.method}: stopped with {left} tasks left")
            now = time.monotonic()
            remaining = self.deadline - now
            if remaining <= 0:
                self._expire()
                break
            live = [a for a in range(len(self.queues)) if self.pool._alive(a)]
            if not live and not self.owner:
                for ti, _ in self.pending:
                    self._fail(
                        ti, "no live client actors (all died more often than Ray restarts them)"
                    )
                break
            self._check_probes(live)
            ready_actors = [a for a in live if a not in self.probes]
            if self.pending and not ready_actors and not self.owner:  # all live restarting
                self._wait_for_restarts(now)
                continue
            if not self.pending:
                self._steal(ready_actors)
            self._hand_out(ready_actors, depth)
            watch = list(self.owner) + (list(self.probes.values()) if self.pending else [])
            slice_s = min(remaining, 1.0) if self.probes or stop is not None else remaining
            ready, _ = ray.wait(watch, num_returns=1, timeout=slice_s)
            for ref in [r for r in ready if r in self.owner]:
                self._settle(ref)
        return self.results, self.failures

    def _submit(self, ai: int, ti: int, task: Any) -> None:
        arg = self.shared[ti] if isinstance(self.shared, PerTask) else self.shared
        ref = getattr(self.pool.actors[ai], self.method).remote(arg, task)
        self.queues[ai].append((ref, ti, task))
        self.owner[ref] = ai

    def _hand_out(self, ready_actors: list[int], depth: int) -> None:
        """Fewest tasks queued first; among equals, the actor that died least. An actor gets
        a second task queued only while more tasks wait than there are ready actors."""
        deaths = self.pool.deaths
        for ai in sorted(ready_actors, key=lambda a: (len(self.queues[a]), deaths[a])):
            busy = len(self.queues[ai])
            many = len(self.pending) > len(ready_actors)
            if self.pending and (busy == 0 or (busy < depth and many)):
                self._submit(ai, *self._take(ai))

    def _fail(self, ti: int, reason: str) -> None:
        self.failures[ti] = reason
        log.warning("%s task %d failed: %s", self.method, ti, reason)

    def _cancel_all(self) -> None:
        for queue in self.queues:
            for ref, _, _ in queue:
                ray.cancel(ref, force=False)  # queued ones never start

    def _expire(self) -> None:
        """The deadline passed: collect what finished in time, fail and unstick the rest."""
        done, _ = ray.wait(list(self.owner), num_returns=len(self.owner), timeout=0)
        for ref in done:
            self._settle(ref)
        for ai, queue in enumerate(self.queues):
            for k, (ref, ti, _) in enumerate(queue):
                why = "timed out after" if k == 0 else "not started within"
                self.failures[ti] = f"{why} {self.timeout_s:.0f}s"
                ray.cancel(ref, force=False)
            if queue:
                self.pool.deaths[ai] += 1
                ray.kill(self.pool.actors[ai], no_restart=False)  # unstick it; Ray restarts it
                self.probes[ai] = self.pool.actors[ai].__ray_ready__.remote()
        for ti, _ in self.pending:
            self.failures[ti] = f"not started within {self.timeout_s:.0f}s"
        self._forget()  # settled: a dispatch kept open (``extend``) goes on without them

    def _check_probes(self, live: list[int]) -> None:
        """Forget the probes of actors back from a restart (or gone for good)."""
        for ai, probe in list(self.probes.items()):
            if ai not in live:  # gone for good
                del self.probes[ai]
            elif ray.wait([probe], timeout=0)[0]:
                try:
                    ray.get(probe)
                    del self.probes[ai]
                except RayError:  # not back yet: ask again
                    self.probes[ai] = self.pool.actors[ai].__ray_ready__.remote()

    def _wait_for_restarts(self, now: float) -> None:
        """Every live actor is restarting: wait (up to a second), and credit the wait to the
        deadline (restart credit, at most ``credit`` in all)."""
        back, _ = ray.wait(list(self.probes.values()), num_returns=1, timeout=1.0)
        if back and time.monotonic() - now < 0.2:
            time.sleep(0.2)  # an unavailable actor answers at once: do not spin
        waited = min(self.credit, time.monotonic() - now)
        self.deadline, self.credit = self.deadline + waited, self.credit - waited

    def _actor_died(self, ai: int) -> None:
        """Settle every task queued on a dead actor: the ones it finished keep their results,
        the one it was running fails, the ones it never started go back to ``pending`` (up to
        ``REQUEUES`` times) to run on another actor."""
        self.pool.deaths[ai] += 1
        queue = self.queues[ai]
        refs = [ref for ref, _, _ in queue]
        wait_s = min(30.0, max(0.0, self.deadline - time.monotonic()))
        ray.wait(refs, num_returns=len(refs), timeout=wait_s)
        crashed = False
        unstarted: list[tuple[int, Any]] = []
        for ref, ti, task in queue:
            del self.owner[ref]
            if crashed:
                if self.requeued.get(ti, 0) >= REQUEUES:
                    self._fail(ti, "actor died before starting it")
                else:
                    self.requeued[ti] = self.requeued.get(ti, 0) + 1
                    unstarted.append((ti, task))
                continue
            try:
                self.results[ti] = ray.get(ref, timeout=0)
            except RayTaskError as exc:
                self._fail(ti, reason(exc))
            except (RayActorError, GetTimeoutError) as exc:
                crashed = True
                self._fail(ti, reason(exc) if isinstance(exc, RayActorError) else "actor died")
        queue.clear()
        self.pending.extendleft(reversed(unstarted))
        # while Ray restarts it, it answers ActorUnavailableError: wait until it is back
        self.probes[ai] = self.pool.actors[ai].__ray_ready__.remote()

    def _settle(self, ref: ray.ObjectRef) -> None:
        if ref not in self.owner:  # settled with its dead actor's queue
            return
        ai = self.owner[ref]
        try:
            result: Any = ray.get(ref)
        except RayActorError:
            # died, or unreachable while Ray restarts it (ActorUnavailableError, also for the
            # tasks queued behind): settle its whole queue. A task re-queued from an actor
            # that was only unreachable may have run too; its fit is then discarded and its
            # private state (saved atomically per round) simply rewritten.
            self._actor_died(ai)
            return
        except RayError as exc:  # the client raised, the task was cancelled, ...
            result = exc
        ti = next(t for r, t, _ in self.queues[ai] if r == ref)
        self.queues[ai] = deque(e for e in self.queues[ai] if e[0] != ref)
        del self.owner[ref]
        if isinstance(result, RayError):
            self._fail(ti, reason(result))
        else:
            self.results[ti] = result
            if self.affinity is not None:
                self.pool.home[self.affinity[ti]] = ai

    def _take(self, ai: int) -> tuple[int, Any]:
        """The next pending task for actor ``ai``: its own key's, if one is nearly as large as
        the largest pending task, else the largest."""
        pending, costs = self.pending, self.costs
        if self.affinity is not None:
            floor = (1 - AFFINITY_SLACK) * costs[pending[0][0]] if costs is not None else 0
            for k, (ti, _) in enumerate(pending):
                if costs is not None and costs[ti] < floor:
                    break
                if self.pool.home.get(self.affinity[ti]) == ai:
                    item = pending[k]
                    del pending[k]
                    return item
        return pending.popleft()

    def _steal(self, ready_actors: list[int]) -> None:
        """Move tasks queued behind another actor's running one to idle actors."""
        queues = self.queues
        for ai in ready_actors:
            if queues[ai]:
                continue
            victim = max(range(len(queues)), key=lambda a: len(queues[a]))
            if len(queues[victim]) < 2:  # nothing waits behind a running task
                return
            ref, ti, task = queues[victim].pop()
            del self.owner[ref]
            ray.cancel(ref)
            self._submit(ai, ti, task)
            self.pool.steals += 1
            log.info(
                "%s task %d: taken from busy actor %d by idle actor %d",
                self.method,
                ti,
                victim,
                ai,
            )
