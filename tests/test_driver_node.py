"""Where the driver actor runs (``resources.driver_node``): on the node that started the run,
so that removing a worker node cannot take the run's state with it."""

from __future__ import annotations

from collections import Counter

import pytest


@pytest.mark.usefixtures("ray_cluster")
def test_driver_strategy_keeps_a_coordinating_driver_on_the_local_node() -> None:
    """With the head node's CPUs all taken, Ray places 0-CPU actors on either node (measured:
    7 of 12 on the worker); the driver's strategy keeps every one on the head. A driver that
    asks for resources is left to Ray (pinned, it could wait forever on a full node)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from fedrs.core.config import ResourcesConfig
    from fedrs.orchestrator.spawn import driver_strategy

    class Probe:  # local: pickled by value (workers cannot import a test module)
        def node(self) -> str:
            return ray.get_runtime_context().get_node_id()

    head = ray.get_runtime_context().get_node_id()
    cpus = {n["NodeID"]: n["Resources"]["CPU"] for n in ray.nodes() if n["Alive"]}
    busy = (
        ray.remote(num_cpus=cpus[head])(Probe)
        .options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False))
        .remote()
    )
    probes = []
    try:
        ray.get(busy.node.remote(), timeout=60)
        strategy = driver_strategy(ResourcesConfig())
        probes = [
            ray.remote(num_cpus=0)(Probe).options(scheduling_strategy=strategy).remote()
            for _ in range(12)
        ]
        assert Counter(ray.get([p.node.remote() for p in probes], timeout=120)) == {head: 12}
        assert driver_strategy(ResourcesConfig(server_num_cpus=1)) is None
        assert driver_strategy(ResourcesConfig(server_num_gpus=0.5)) is None
    finally:
        for actor in [busy, *probes]:
            ray.kill(actor)


def test_driver_node_is_validated() -> None:
    from fedrs.core.config import RunConfig
    from fedrs.errors import ConfigError

    with pytest.raises(ConfigError, match="driver_node"):
        RunConfig().replace(**{"resources.driver_node": "head"})
