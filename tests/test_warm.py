"""Warm actors across sweep trials (``orchestrator/warm.py``): a trial takes over the driver
and client actors the last one left in its placement group, and computes exactly what a cold
trial computes, also after an actor Ray restarted and after a trial that failed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

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


def _run(data: Path, out: Path, **sets: object) -> tuple[dict, dict]:
    """(summary, final tensors) of a 2-round run on ``data`` in ``out``."""
    from rich.console import Console

    from conftest import small_run
    from fedrs.orchestrator import checkpoint, runner

    cfg = small_run(data, **{"resources.num_actors": 1, **sets})
    summary = runner.run(cfg, out=str(out), console=Console(quiet=True))
    state = checkpoint.load(out)
    assert state is not None and state[0] == 2
    return summary, state[1]


def _resting() -> list[dict]:
    import ray

    from fedrs.orchestrator import warm

    reg = warm.registry(create=False)
    return [] if reg is None else [s for s in ray.get(reg.list.remote()) if s["state"] == "resting"]


def test_runs_on_an_up_cluster_take_over_the_actors_a_run_kept(
    ray_cluster, synth_data: Path, tmp_path: Path, monkeypatch
) -> None:
    """``resources.keep_warm_s``: a run's actors outlive it, detached, and the next run of the
    same shape and code (in this process or another job) re-initialises them in place; the
    results equal a cold run's; a failed run ends its set; an idle set ends after keep_warm_s;
    other code never takes a set over."""
    import os
    import subprocess
    import sys
    import time

    import ray

    from fedrs.orchestrator import warm

    keep = {"resources.keep_warm_s": 60}
    a, _ = _run(synth_data, tmp_path / "a", **keep)
    assert len(_resting()) == 1
    pid = a["actors"][0]["pid"]
    b, warm_b = _run(synth_data, tmp_path / "b", **keep, **{"method.name": "fedrsclip"})
    assert b["actors"][0]["pid"] == pid  # another method on the same process
    assert b["startup"]["actor_process_s"] == 0.0
    cold_b_summary, cold_b = _run(synth_data, tmp_path / "b-cold", **{"method.name": "fedrsclip"})
    assert cold_b_summary["actors"][0]["pid"] != pid
    assert set(cold_b) == set(warm_b)
    for key, value in cold_b.items():
        assert np.array_equal(warm_b[key], value), key

    # another job (a `fedrs run` process joining this cluster) takes the set over
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address}  # the session's auth mode
    job = subprocess.run(
        [sys.executable, "-m", "fedrs.cli", "run", "--out", str(tmp_path / "job"),
         "--set", f"data.path={synth_data}", "--set", "federation.rounds=2",
         "--set", "federation.clients_per_round=6", "--set", "client.local_epochs=1",
         "--set", "resources.num_actors=1", "--set", "resources.keep_warm_s=60"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert job.returncode == 0, job.stderr[-3000:]
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["startup"]["actor_process_s"] == 0.0
    assert "warm actors (run 3 on them, kept across runs)" in job.stderr
    shown = subprocess.run(
        [sys.executable, "-m", "fedrs.cli", "warm"], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "resting  1 client actor(s) of fedrs-tiny, 3 run(s) served" in shown.stdout

    # other code (a changed fedrs file) never takes these actors over: a new set for it
    from conftest import small_run

    monkeypatch.setattr(warm, "_code_identity", lambda: "other code")
    ours = {s["sid"] for s in _resting()}
    long = {"resources.keep_warm_s": 600}  # rests through the checks below
    other, reused = warm.take_shared(small_run(synth_data, **{"resources.num_actors": 1}, **long))
    assert not reused and other.sid not in ours
    other.renewing.set()
    monkeypatch.undo()
    assert len(_resting()) == 1  # ours still rests; the other is lent
    ray.get(warm.registry().rest.remote(other.sid))
    assert len(_resting()) == 2

    # a run that fails ends its set; the next starts afresh
    with pytest.raises(Exception, match="injected fault"):
        _run(synth_data, tmp_path / "fail", **keep, **{"federation.faults": "aggregate@2=raise"})
    assert len(_resting()) == 1  # only the other code's
    others = {s["sid"] for s in _resting()}
    after, _ = _run(synth_data, tmp_path / "after", **{"resources.keep_warm_s": 1})
    assert after["actors"][0]["pid"] != pid
    (sid,) = {s["sid"] for s in _resting()} - others
    # an idle set ends keep_warm_s after its run: its actors are gone
    t = time.time()
    while len(_resting()) > 1 and time.time() - t < 20:
        time.sleep(0.5)
    assert len(_resting()) == 1

    def gone() -> bool:
        try:
            ray.get_actor(warm._name(sid, "client-0"), namespace=warm.NAMESPACE)
        except ValueError:
            return True
        return False

    t = time.time()
    while not gone() and time.time() - t < 20:  # ray.kill is asynchronous
        time.sleep(0.5)
    assert gone()

    # a new set that cannot be placed beside a resting set of another key ends that set
    # (after 5 s) and takes its room
    from fedrs.actors.placement import trial_bundles

    def cpus(cfg: object) -> float:
        return sum(b.get("CPU", 0.0) for b in trial_bundles(cfg)[0])

    (resting,) = _resting()
    held = cpus(small_run(synth_data, **{"resources.num_actors": 1}))
    total = ray.cluster_resources()["CPU"]
    t = time.time()  # the ended set's placement group goes asynchronously
    while ray.available_resources().get("CPU", 0.0) < total - held and time.time() - t < 20:
        time.sleep(0.5)
    free = ray.available_resources().get("CPU", 0.0)
    per = 0.25
    n = int((free + held / 2) / per) + 1  # more than is free, no more than with its room
    big_cfg = small_run(
        synth_data,
        **{"resources.num_actors": n, "resources.num_cpus_per_client": per},
        **{**keep, "resources.placement_timeout_s": 30},
    )
    assert free < cpus(big_cfg) <= free + held
    big, reused = warm.take_shared(big_cfg)
    try:
        assert not reused
        assert resting["sid"] not in {s["sid"] for s in ray.get(warm.registry().list.remote())}
    finally:
        big.end()
    ray.get(warm.registry().evict.remote())
    assert _resting() == []


def test_the_registry_lends_rests_evicts_and_ends_sets_whose_run_died(monkeypatch) -> None:
    """``WarmRegistry`` alone (no Ray): a set is taken only by its key, resting sets of other
    keys are evicted for room, and a lent set whose run stops renewing its lease is ended."""
    import time

    from fedrs.orchestrator import warm

    ended: list[str] = []
    monkeypatch.setattr(warm, "_end", lambda rec: ended.append(rec["sid"]))
    monkeypatch.setattr(warm, "LEASE_S", 0.5)
    reg = warm.WarmRegistry()

    def rec(sid: str, key: tuple) -> dict:
        base = {"roles": [], "pg": None, "driver_bundle": 0, "first_client_bundle": 0}
        return {**base, "sid": sid, "key": key, "runs": 0, "keep_s": 60.0, "actors": 1, "arch": ""}

    reg.lend(rec("a", ("k1",)))
    assert reg.take(("k1",)) is None  # lent: not taken twice
    reg.rest("a")
    assert reg.take(("k2",)) is None
    assert reg.take(("k1",))["runs"] == 1
    reg.rest("a")
    reg.lend(rec("b", ("k3",)))
    assert reg.renew("b")
    assert reg.evict(("k2",)) == 1 and ended == ["a"]  # resting, another key: ended
    assert [s["sid"] for s in reg.list()] == ["b"]  # lent sets are never evicted
    deadline = time.time() + 5
    while "b" not in ended and time.time() < deadline:  # b's run stopped renewing its lease
        time.sleep(0.1)
    assert ended == ["a", "b"] and reg.list() == [] and not reg.renew("b")
