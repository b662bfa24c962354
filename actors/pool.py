"""A pool of client actors in one placement group, serving many virtual clients.

Each actor reserves one bundle ``{"CPU": num_cpus_per_client, "GPU": num_gpus_per_client}``
(fractional GPUs allowed: 0.25 packs four actors per GPU); the group is placed with PACK, SPREAD,
STRICT_PACK or STRICT_SPREAD. ``map`` hands tasks to idle actors as they free up and turns every
failure into a per-task reason instead of an exception: a client that raises, an actor that
dies (Ray restarts it, up to ``max_actor_restarts``), or a task still running at the deadline
(its actor is killed and restarted) — so a round never hangs.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from fedrs.actors.client import ClientWorker
from fedrs.errors import FedrsError
from fedrs.methods.base import Method
from fedrs.orchestrator.config import RunConfig

log = logging.getLogger(__name__)


class SchedulingError(FedrsError):
    """The cluster cannot host the requested client actors."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RayTaskError):
        cause = exc.cause if exc.cause is not None else exc
        text = str(cause).strip().splitlines()
        return f"client raised {type(cause).__name__}: {text[-1] if text else ''}".strip()
    if isinstance(exc, RayActorError):
        return f"actor died ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"


class ClientPool:
    def __init__(
        self,
        cfg: RunConfig,
        method_cls: type[Method],
        data_path: str,
        state_root: str,
        pg_timeout_s: float = 120.0,
    ) -> None:
        res = cfg.resources
        bundle: dict[str, float] = {"CPU": res.num_cpus_per_client}
        if res.num_gpus_per_client > 0:
            bundle["GPU"] = res.num_gpus_per_client
        self.pg = placement_group(
            [dict(bundle) for _ in range(res.num_actors)], strategy=res.placement_strategy
        )
        if not self.pg.wait(timeout_seconds=res.placement_timeout_s):
            remove_placement_group(self.pg)
            raise SchedulingError(
                f"cannot place {res.num_actors} client actors of {bundle} with "
                f"{res.placement_strategy} on this cluster (resources: "
                f"{ray.cluster_resources()}); lower resources.num_actors or the per-client share"
            )
        remote_cls = ray.remote(ClientWorker)
        self.actors = [
            remote_cls.options(
                num_cpus=res.num_cpus_per_client,
                num_gpus=res.num_gpus_per_client,
                max_restarts=res.max_actor_restarts,
                max_task_retries=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self.pg, placement_group_bundle_index=i
                ),
            ).remote(cfg.to_dict(), method_cls, data_path, state_root, i)
            for i in range(res.num_actors)
        ]

    def __len__(self) -> int:
        return len(self.actors)

    def describe(self) -> list[dict[str, Any]]:
        return ray.get([a.describe.remote() for a in self.actors])

    def call_one(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        try:
            return ray.get(getattr(self.actors[0], method).remote(*args), timeout=timeout)
        except (RayTaskError, RayActorError, GetTimeoutError) as exc:
            raise FedrsError(f"client actor failed in {method}: {_reason(exc)}") from None

    def map(
        self, method: str, shared: Any, tasks: list[Any], timeout_s: float
    ) -> tuple[dict[int, Any], dict[int, str]]:
        """Run ``actor.<method>(shared, task)`` for every task; results and failure reasons
        keyed by task index. ``shared`` (e.g. an ObjectRef of the global tensors) is passed to
        every call without copying it per task."""
        pending = deque(enumerate(tasks))
        idle = deque(range(len(self.actors)))
        inflight: dict[ray.ObjectRef, tuple[int, int]] = {}
        results: dict[int, Any] = {}
        failures: dict[int, str] = {}
        deadline = time.monotonic() + timeout_s
        while pending or inflight:
            while pending and idle:
                ti, task = pending.popleft()
                ai = idle.popleft()
                ref = getattr(self.actors[ai], method).remote(shared, task)
                inflight[ref] = (ti, ai)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for ref, (ti, ai) in inflight.items():
                    failures[ti] = f"timed out after {timeout_s:.0f}s"
                    ray.kill(self.actors[ai], no_restart=False)  # unstick it; Ray restarts it
                    ray.cancel(ref, force=False)
                for ti, _ in pending:
                    failures[ti] = f"not started within {timeout_s:.0f}s"
                break
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=remaining)
            for ref in ready:
                ti, ai = inflight.pop(ref)
                idle.append(ai)
                try:
                    results[ti] = ray.get(ref)
                except (RayTaskError, RayActorError) as exc:
                    failures[ti] = _reason(exc)
                    log.warning("%s task %d failed: %s", method, ti, failures[ti])
        return results, failures

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        remove_placement_group(self.pg)
