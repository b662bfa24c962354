"""What clients hold of the global tensors (orchestrator/holdings.py) and the tensors an actor
keeps resident (actors/client.py): unchanged tensors are charged and fetched once."""

from __future__ import annotations

import numpy as np
import pytest

from fedrs.orchestrator.holdings import Holdings, unchanged


def test_a_client_is_charged_only_for_tensors_it_does_not_hold() -> None:
    h = Holdings(["a", "b", "c"], [10, 100, 1000])
    assert h.cost(0, ["a", "b", "c"]) == 1110  # nothing held yet
    h.deliver(0, ["a", "b"])
    assert h.cost(0, ["a", "b", "c"]) == 1000 and h.cost(1, ["a"]) == 10
    h.changed(["a"], 1)  # round 1 changed a only
    assert h.cost(0, ["a", "b"]) == 10
    h.deliver(0, ["a"])
    assert h.cost(0, ["a", "b"]) == 0
    state = h.state_dict()
    again = Holdings(["c", "a", "b"], [1000, 10, 100])  # a resumed run's params come sorted
    again.load_state_dict(state, round=1)
    assert again.cost(0, ["a", "b", "c"]) == 1000 and again.version("a") == 1
    # a checkpoint without holdings (or of other tensors): all re-sent once, never under-counted
    for bad in ({}, {**state, "driver/versions": np.zeros(2, np.int64)}):
        fresh = Holdings(["a", "b", "c"], [10, 100, 1000])
        fresh.load_state_dict(bad, round=4)
        assert fresh.cost(0, ["a", "b", "c"]) == 1110 and fresh.version("b") == 4


def test_unchanged_is_bit_for_bit() -> None:
    a = np.array([0.0, 1.0], np.float32)
    assert unchanged(a, a) and unchanged(a, a.copy())
    assert not unchanged(a, np.array([-0.0, 1.0], np.float32))  # equal as numbers, not as bits
    assert not unchanged(a, a.astype(np.float64)) and not unchanged(a, a[:1])


@pytest.mark.usefixtures("ray_cluster")
def test_resident_tensors_are_fetched_once_per_object() -> None:
    import ray

    from fedrs.actors.client import Download, ResidentTensors

    cache = ResidentTensors(capacity=2)
    resting = ray.put({"w": np.arange(3.0)})
    first = cache.params(Download(ray.put({"ctx": np.ones(2)}), resting))
    second = cache.params(Download(ray.put({"ctx": np.zeros(2)}), resting))
    assert (cache.fetched, cache.reused) == (1, 1)
    np.testing.assert_array_equal(second["w"], first["w"])
    np.testing.assert_array_equal(second["ctx"], np.zeros(2))
    for value in (4.0, 5.0):  # two newer objects push the first one out
        cache.params(Download(ray.put({}), ray.put({"w": np.full(3, value)})))
    assert len(cache.held) == 2 and resting.hex() not in cache.held
    assert cache.params(Download(ray.put({"ctx": np.ones(1)}), None)) == {"ctx": np.ones(1)}
