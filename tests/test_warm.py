"""Warm actors across sweep trials (``orchestrator/warm.py``): a trial takes over the driver
and client actors the last one left in its placement group, and computes exactly what a cold
trial computes, also after an actor Ray restarted and after a trial that failed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SWEEP = """
[base]
model.arch = "fedrs-tiny"
data.partition = "iid"
data.num_clients = 4
data.per_class = 5
data.image_size = 32
federation.rounds = 3
federation.clients_per_round = 4
client.local_epochs = 1
resources.num_actors = 1
resources.num_cpus_per_client = 1.0

[grid]
arm = [
    {{ label = "a", "federation.seed" = 0 }},
    {{ label = "b", "federation.seed" = 1, "method.name" = "fedrsclip" }},
    {{ label = "crash", "federation.seed" = 2, "federation.faults" = "fit@2:1=exit" }},
    {{ label = "fail", "federation.seed" = 0, "federation.faults" = "aggregate@2=raise" }},
    {{ label = "after", "federation.seed" = 3 }},
]

[sweep]
max_concurrent = 1
warm = {warm}
"""


def _sweep(tmp_path: Path, warm: bool) -> tuple[dict[str, dict], dict[str, dict]]:
    """(status by arm, final tensors by arm) of the sweep run warm or cold."""
    from rich.console import Console

    from fedrs.orchestrator import checkpoint
    from fedrs.orchestrator.sweep.results import read_results
    from fedrs.orchestrator.sweep.run import run_sweep
    from fedrs.orchestrator.sweep.spec import STATUS, TRIALS

    name = "warm" if warm else "cold"
    path = tmp_path / f"{name}.toml"
    path.write_text(SWEEP.format(warm=str(warm).lower()))
    out = tmp_path / name
    run_sweep(str(path), out=str(out), console=Console(quiet=True))
    status, tensors = {}, {}
    for row in read_results(out):
        arm = row["arm"]
        status[arm] = json.loads((out / STATUS / f"{row['trial']}.json").read_text())
        metrics = out / TRIALS / row["trial"] / "metrics.jsonl"
        status[arm]["metrics"] = metrics.read_text().splitlines() if metrics.is_file() else []
        state = checkpoint.load(out / TRIALS / row["trial"])
        if row["status"] == "finished":
            assert state is not None and state[0] == 3
            tensors[arm] = state[1]
    return status, tensors


def test_warm_trials_reuse_actors_and_equal_cold_trials(ray_cluster, tmp_path: Path) -> None:
    warm, warm_params = _sweep(tmp_path, warm=True)
    cold, cold_params = _sweep(tmp_path, warm=False)
    assert {a: s["status"] for a, s in warm.items()} == {a: s["status"] for a, s in cold.items()}
    assert warm["fail"]["status"] == "failed"
    assert set(warm_params) == {"a", "b", "crash", "after"}

    def pid(status: dict) -> int:
        return status["actors"][0]["pid"]

    # warm: b ran on a's client actor (another method, same process), and so did the crash
    # trial until its actor died in round 2 (Ray restarted it); after the failed trial the
    # actors were ended and the next trial started afresh
    assert pid(warm["b"]) == pid(warm["a"]) == pid(warm["crash"])
    assert pid(warm["after"]) != pid(warm["a"])
    # cold: every trial its own actor
    assert len({pid(s) for a, s in cold.items() if a != "fail"}) == 4
    crash = [json.loads(line) for line in warm["crash"]["metrics"]]
    assert [r["clients_failed"] for r in crash] == [0, 1, 0]
    # the same tensors, bit for bit, in every finished trial (the restarted actor read the
    # crash trial's setup from the board, not the first trial's)
    for arm, params in cold_params.items():
        assert set(warm_params[arm]) == set(params), arm
        for key, value in params.items():
            assert np.array_equal(warm_params[arm][key], value), (arm, key)
