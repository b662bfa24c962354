"""A pool of client actors in one placement group, serving many virtual clients.

Each actor reserves one bundle ``{"CPU": num_cpus_per_client, "GPU": num_gpus_per_client}``
(fractional GPUs allowed: 0.25 packs four actors per GPU); the group is placed with PACK, SPREAD,
STRICT_PACK or STRICT_SPREAD. ``map`` hands tasks out largest first to actors as they free up
(one more queued behind each running task until the round's tail) and turns every failure into
a per-task reason instead of an exception: a client that raises, an actor that dies (Ray
restarts it, up to ``max_actor_restarts``; tasks queued behind the one it ran go to another
actor), or a task still running at the deadline (its actor is killed and restarted) — so a
round never hangs.

The scheduling of one ``map`` call (largest first, work stealing, restart credit) is in
``dispatch.py``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Hashable
from typing import Any

import ray
from ray.exceptions import (
    GetTimeoutError,
    RayActorError,
    RayError,
    RayTaskError,
)
from ray.util.placement_group import placement_group, remove_placement_group

from fedrs.actors.client import ClientWorker
from fedrs.actors.dispatch import Dispatch, PerTask, reason
from fedrs.actors.placement import Placement, SchedulingError, client_bundle
from fedrs.core.config import RunConfig
from fedrs.errors import FedrsError, remote_error
from fedrs.methods.base import Method

log = logging.getLogger(__name__)


class ClientPool:
    def __init__(
        self,
        cfg: RunConfig,
        method_cls: type[Method],
        data_path: str,
        state_root: str,
        pg_timeout_s: float = 120.0,
        placement: Placement | None = None,
        board: str | None = None,
        warm: list[Any] | None = None,
        extra: list[dict[str, Any]] | None = None,
    ) -> None:
        """``board`` (the name of a ``SetupBoard`` actor holding this run's setup): the actors
        read their setup from it and are kept warm for the next run (``orchestrator/warm.py``
        owns them: ``shutdown`` leaves them alive); ``warm``: such actors of an earlier run,
        re-initialised in place instead of started; ``extra``: more Ray options per actor
        (a name, a lifetime)."""
        res = cfg.resources
        self.kept = board is not None
        self.settling: list[ray.ObjectRef] = []  # warm actors' re-initialisation, checked once
        if warm is not None:
            self.pg = None
            self._adopt(warm, res.max_actor_restarts)
            self.settling = [a.reinit.remote() for a in warm]
            return
        bundle = client_bundle(cfg)
        if board is not None and placement is None:
            raise ValueError("warm actors live in a placement group reserved elsewhere")
        if placement is None:  # a group of our own, removed by shutdown()
            self.pg = placement_group(
                [dict(bundle) for _ in range(res.num_actors)], strategy=res.placement_strategy
            )
            if not self.pg.wait(timeout_seconds=res.placement_timeout_s):
                remove_placement_group(self.pg)
                raise SchedulingError(
                    f"cannot place {res.num_actors} client actors of {bundle} with "
                    f"{res.placement_strategy} on this cluster (resources: "
                    f"{ray.cluster_resources()}); lower resources.num_actors or the per-client "
                    "share"
                )
            placement = Placement(self.pg)
        else:
            self.pg = None
        remote_cls = ray.remote(ClientWorker)
        setup = (cfg.to_dict(), method_cls, data_path, state_root)
        if board is not None:  # read from the board (now, and whenever Ray restarts one)
            setup = (None, None, "", "")
        actors = [
            remote_cls.options(
                num_cpus=res.num_cpus_per_client,
                num_gpus=res.num_gpus_per_client,
                max_restarts=res.max_actor_restarts,
                max_task_retries=0,
                scheduling_strategy=placement.strategy(placement.first_client_bundle + i),
                **(extra[i] if extra else {}),
            ).remote(*setup, i, board=board)
            for i in range(res.num_actors)
        ]
        self._adopt(actors, res.max_actor_restarts)

    def _adopt(self, actors: list[Any], max_restarts: int) -> None:
        self.actors = list(actors)
        self.max_restarts = max_restarts
        self.deaths = [0] * len(self.actors)  # crashes and deadline kills, per actor
        self.steals = 0  # tasks an idle actor took from a busy one's queue
        self.home: dict[Hashable, int] = {}  # affinity key -> the actor that last ran it
        self.restarting: dict[int, ray.ObjectRef] = {}  # actor -> its readiness probe

    @classmethod
    def of(cls, actors: list[Any], max_restarts: int) -> ClientPool:
        """A pool over actors created elsewhere (no placement group of its own)."""
        pool = cls.__new__(cls)
        pool.pg, pool.kept, pool.settling = None, False, []
        pool._adopt(actors, max_restarts)
        return pool

    def settle(self) -> None:
        """Wait for warm actors' re-initialisation (once): the error of one that failed is
        raised here, one line, before any task runs on a half-initialised worker."""
        refs, self.settling = self.settling, []
        if refs:
            try:
                ray.get(refs)
            except (RayTaskError, RayActorError) as exc:
                cause = getattr(exc, "cause", None)
                if not isinstance(cause, FedrsError):
                    cause = remote_error(exc) or FedrsError(
                        f"client actor failed to re-initialise: {reason(exc)}"
                    )
                raise cause from None

    @staticmethod
    def put(obj: Any) -> Any:
        """``obj`` in the object store, once, for many tasks to read (an ObjectRef)."""
        return ray.put(obj)

    def discard(self, client_ids: list[int], rnd: int) -> None:
        """Nothing: the actors keep private state in the run's store, which the driver
        discards itself (a deployment's sites keep their own: ``SitePool.discard``)."""

    def _alive(self, ai: int) -> bool:
        """False once an actor has died more often than Ray restarts it (-1: always)."""
        return self.max_restarts < 0 or self.deaths[ai] <= self.max_restarts

    def __len__(self) -> int:
        return len(self.actors)

    def describe(self) -> list[dict[str, Any]]:
        self.settle()
        return ray.get([a.describe.remote() for a in self.actors])

    def call_one(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        self.settle()
        try:
            return ray.get(getattr(self.actors[0], method).remote(*args), timeout=timeout)
        except (RayTaskError, RayActorError, GetTimeoutError) as exc:
            started = remote_error(exc)  # the actor's __init__ raised: that is the cause
            if started is not None:
                raise started from None
            raise FedrsError(f"client actor failed in {method}: {reason(exc)}") from None

    def map(
        self,
        method: str,
        shared: Any,
        tasks: list[Any],
        timeout_s: float,
        costs: list[float] | None = None,
        depth: int = 2,
        affinity: list[Hashable] | None = None,
        stop: threading.Event | None = None,
    ) -> tuple[dict[int, Any], dict[int, str]]:
        """Run ``actor.<method>(shared, task)`` for every task; results and failure reasons
        keyed by task index. ``shared`` (e.g. an ObjectRef of the global tensors) is passed to
        every call without copying it per task; a ``PerTask`` list gives each task its own.

        Scheduling: tasks go out largest ``costs`` first (longest-processing-time order, which
        bounds the round's tail when clients differ in size), to whichever actor frees up first.
        While more tasks remain than there are actors, each actor also gets up to ``depth`` - 1
        tasks queued behind its running one, so it never idles for the driver's round trip;
        the last tasks are handed only to idle actors, so the tail stays balanced.

        ``affinity`` (e.g. the client ids) keeps a task on the actor that last completed a task
        of the same key, so what an actor caches per client (FedDiff's diffusion features) is
        hit again: a free actor takes its own key's task first when that task's cost is within
        ``AFFINITY_SLACK`` of the largest pending one, else the largest.

        ``stop``: once set (checked at least every second), the tasks not yet done are
        cancelled and ``RunStopped`` is raised (the caller abandons the work)."""
        if costs is not None and len(costs) != len(tasks):
            raise ValueError(f"{len(costs)} costs for {len(tasks)} tasks")
        if affinity is not None and len(affinity) != len(tasks):
            raise ValueError(f"{len(affinity)} affinity keys for {len(tasks)} tasks")
        self.settle()
        dispatch = Dispatch(self, method, shared, tasks, timeout_s, costs, affinity)
        return dispatch.run(depth, stop)

    def stream(self, method: str, timeout_s: float) -> Dispatch:
        """A dispatch kept open across calls, for work that overlaps the driver's steps
        (asynchronous rounds): ``extend`` adds tasks, ``run(depth, stop, until=...)`` waits
        for some while the rest keep the actors busy, ``drain`` abandons what is left."""
        self.settle()
        return Dispatch(self, method, PerTask(), [], timeout_s, [], [])

    def shutdown(self) -> None:
        """Kill the actors and free the placement group; calling it again does nothing.
        Warm actors (``board``) are left alive: their owner keeps or ends them."""
        if self.kept:
            self.actors = []
            return
        for actor in self.actors:
            with contextlib.suppress(RayError, ValueError):  # already gone
                ray.kill(actor, no_restart=True)
        self.actors = []
        if self.pg is not None:
            with contextlib.suppress(RayError, ValueError):  # removed by another copy
                remove_placement_group(self.pg)
            self.pg = None
