"""Where a run's actors go: one bundle per client actor (``{"CPU": .., "GPU": ..}``, fractional
GPUs allowed: 0.25 packs four actors per GPU), the driver actor's own reservation, and the
placement group reserved by someone else (a ``fedrs sweep`` trial's) that a run may be handed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from fedrs.core.config import RunConfig
from fedrs.errors import FedrsError

# where warm actors, their setup boards and the registry of sets kept across runs are named
WARM_NAMESPACE = "fedrs-warm"


class SchedulingError(FedrsError):
    """The cluster cannot host the requested client actors."""


def client_bundle(cfg: RunConfig) -> dict[str, float]:
    """One client actor's reservation: ``{"CPU": .., "GPU": ..}`` (GPU only when asked)."""
    res = cfg.resources
    bundle: dict[str, float] = {"CPU": res.num_cpus_per_client}
    if res.num_gpus_per_client > 0:
        bundle["GPU"] = res.num_gpus_per_client
    return bundle


def driver_bundle(cfg: RunConfig) -> dict[str, float]:
    """The driver actor's reservation (empty: it only coordinates)."""
    res = cfg.resources
    return {k: v for k, v in (("CPU", res.server_num_cpus), ("GPU", res.server_num_gpus)) if v}


@dataclass(frozen=True)
class Placement:
    """Bundles of a placement group reserved by someone else (a ``fedrs sweep`` trial's, made
    by Ray Tune): the driver actor goes to bundle ``driver_bundle``, client actor i to bundle
    ``first_client_bundle + i``. The owner removes the group, not the pool."""

    pg: Any
    driver_bundle: int = 0
    first_client_bundle: int = 0

    def strategy(self, bundle: int) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(
            placement_group=self.pg,
            placement_group_bundle_index=bundle,
            placement_group_capture_child_tasks=False,
        )


def trial_bundles(cfg: RunConfig) -> tuple[list[dict[str, float]], int]:
    """The bundles one whole run needs in a single placement group, and the index of its
    first client bundle: ``[driver (if it reserves anything), client x num_actors]``."""
    head = driver_bundle(cfg)
    clients = [client_bundle(cfg) for _ in range(cfg.resources.num_actors)]
    return ([head] if head else []) + clients, int(bool(head))
