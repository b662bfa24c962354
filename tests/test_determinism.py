"""The same seed gives bit-identical results at any concurrency: 1, 2 and 4 client actors
(clients finish in different orders on different actors; aggregation and state follow the
client ids, not the arrival order)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console


@pytest.mark.usefixtures("ray_cluster")
def test_bit_identical_with_1_2_and_4_actors(synth_data: Path, tmp_path: Path) -> None:
    import ray

    from conftest import small_run
    from fedrs.orchestrator import checkpoint
    from fedrs.orchestrator.runner import run

    finals, states = [], []
    for actors in (1, 2, 4):
        cfg = small_run(
            synth_data,
            **{
                "method.name": "fedrsclip",
                "strategy.name": "fedadam",  # server state too
                "strategy.server_lr": 0.05,
                "federation.clients_per_round": 5,
                "resources.num_actors": actors,
            },
        )
        out = tmp_path / f"a{actors}"
        summary = run(cfg, out=str(out), console=Console(file=io.StringIO()))
        # the driver actor runs on the node that started the run (resources.driver_node)
        assert summary["driver_node_id"] == ray.get_runtime_context().get_node_id()
        finals.append(checkpoint.load(out))
        states.append(
            {
                p.relative_to(out): p.read_bytes()
                for p in (out / "client_state").rglob("*.safetensors")
            }
        )
    (r1, p1, s1) = finals[0]
    for r, p, s in finals[1:]:
        assert r == r1 and set(p) == set(p1) and set(s) == set(s1)
        for key in p1:
            assert np.array_equal(p[key], p1[key]), key  # bit for bit
        for key in s1:
            assert np.array_equal(s[key], s1[key]), key
    assert states[0] and states[1] == states[0] and states[2] == states[0]
