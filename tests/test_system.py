"""System heterogeneity on the virtual clock (``fedrs/core/system.py``,
``orchestrator/clock.py``): client profiles drawn from the seed, the round policies computed by
hand, and runs whose virtual times and tensors do not depend on the actor count."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from conftest import small_run
from fedrs.core.config import SystemConfig, from_dict
from fedrs.core.system import Profiles, Task, read_trace, schedule
from fedrs.errors import ConfigError
from fedrs.orchestrator import checkpoint

QUIET = Console(file=io.StringIO())


def test_profiles_are_drawn_from_the_seed_with_the_stated_spread() -> None:
    """Log-normal speeds: the same per (seed, client) on every call, another seed another
    draw; over 20,000 clients the median is ``gflops`` and the log-spread ``spread``; on/off
    availability is on ``on_fraction`` of the time."""
    cfg = SystemConfig(speed="lognormal", gflops=5.0, spread=0.8)
    a, b = Profiles(cfg, 0), Profiles(cfg, 1)
    speeds = np.array([a.speed(c) for c in range(20_000)])
    assert [a.speed(c) for c in range(5)] == list(speeds[:5])
    assert not np.allclose(speeds[:5], [b.speed(c) for c in range(5)])
    assert abs(np.median(speeds) / 5e9 - 1) < 0.03
    assert abs(np.log(speeds).std() - 0.8) < 0.02
    avail = Profiles(SystemConfig(availability="onoff", on_fraction=0.7, cycle_s=100.0), 3)
    on = [avail.online(c, t)[0] for c in range(400) for t in (50.0, 500.0, 5000.0)]
    assert abs(np.mean(on) - 0.7) < 0.05
    state, until = avail.online(7, 123.0)
    assert until > 123.0 and avail.online(7, until - 1e-6)[0] == state
    assert avail.online(7, until + 1e-6)[0] != state  # the period ends where it says


def test_the_round_policies_by_hand() -> None:
    """Equal speed 1 GFLOP/s, 1 MB/s down, no upload limit: durations 1, 2, 3, 4 s (+1 s of
    download for the last). sync ends at the last finish; a 2.5 s deadline drops two; over-
    selection keeps the first two to finish."""
    prof = Profiles(SystemConfig(gflops=1.0, down_mbps=8.0), 0)
    tasks = [Task(c, (c + 1) * 1e9, 1_000_000 if c == 3 else 0, 123) for c in range(4)]
    sync = schedule("sync", 10.0, tasks, prof, keep=4)
    assert sync.kept == [0, 1, 2, 3] and sync.dropped == {}
    assert sync.finish == {0: 11.0, 1: 12.0, 2: 13.0, 3: 15.0} and sync.end == 15.0
    late = schedule("deadline", 10.0, tasks, prof, keep=4, deadline_s=2.5)
    assert late.kept == [0, 1] and sorted(late.dropped) == [2, 3] and late.end == 12.5
    assert "missed the deadline (3.0 s > 2.5 s)" in late.dropped[2]
    over = schedule("overselect", 10.0, list(reversed(tasks)), prof, keep=2)
    assert over.kept == [2, 3] and over.end == 12.0  # clients 1 and 0, in reversed order
    assert "not among the first 2" in over.dropped[0]
    flaky = Profiles(SystemConfig(gflops=1.0, availability="onoff", cycle_s=4.0), 0)
    out = schedule("sync", 0.0, [Task(c, 1e9, 0, 0) for c in range(40)], flaky, keep=40)
    for i, why in out.dropped.items():  # off at the start, or off before its 1 s task ends
        on, until = flaky.online(i, 0.0)
        assert (not on and "offline at t=0.0" in why) or (on and until < 1.0 and "went off" in why)
    assert len(out.kept) + len(out.dropped) == 40 and out.kept and out.dropped


def test_a_trace_and_bad_system_keys_are_one_line(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("client,gflops,up_mbps,down_mbps\n1,2.0,8,0\n0,4.0,0,16\n")
    assert read_trace(str(trace)) == [(4.0, 0.0, 16.0), (2.0, 8.0, 0.0)]
    prof = Profiles(SystemConfig(speed="trace", trace=str(trace)), 0)
    assert prof.speed(2) == 4e9 and prof.link(1) == (1e6, math.inf)
    on = tmp_path / "on.csv"
    on.write_text("client,start_s,end_s\n0,0,10\n0,20,30\n1,5,6\n")
    avail = Profiles(SystemConfig(availability="trace", availability_trace=str(on)), 0)
    assert avail.online(0, 3.0) == (True, 10.0) and avail.online(0, 12.0) == (False, 20.0)
    assert avail.online(2, 25.0) == (True, 30.0)  # client 2 follows the trace's client 0
    assert avail.online(1, 7.0) == (False, math.inf)  # never on again
    on.write_text("0,5,2\n")
    with pytest.raises(ConfigError, match="needs 0 <= start < end"):
        Profiles(SystemConfig(availability="trace", availability_trace=str(on)), 0)
    trace.write_text("0,fast\n")
    with pytest.raises(ConfigError, match=r"line 1: .* is not numbers"):
        read_trace(str(trace))
    with pytest.raises(ConfigError, match=r"federation\.policy=deadline needs"):
        from_dict({}, ["federation.policy=deadline"])
    with pytest.raises(ConfigError, match=r"system\.speed .fast."):
        from_dict({}, ["system.speed=fast"])


def test_what_cannot_run_on_the_clock_is_refused_in_one_line() -> None:
    """DP's accountant assumes Poisson rounds (not over-selection or asynchronous ones);
    a secure sum cannot weight stale updates one by one; real sites are not simulated."""
    from fedrs.core.strategies import STRATEGIES
    from fedrs.methods import method_class
    from fedrs.orchestrator.flower_app import deploy_config
    from fedrs.orchestrator.preflight import check_composition

    fedavg, promptfl = STRATEGIES["fedavg"], method_class("promptfl")
    dp = ["privacy.mode=central", "privacy.noise_multiplier=1.0"]
    for policy in ("overselect", "fedbuff", "fedasync"):
        cfg = from_dict({}, [*dp, f"federation.policy={policy}"])
        with pytest.raises(ConfigError, match=f"policy={policy}: the accountant assumes"):
            check_composition(cfg, promptfl, fedavg)
    check_composition(  # a deadline only drops clients: the bound still holds
        from_dict({}, [*dp, "federation.policy=deadline", "federation.deadline_s=5"]),
        promptfl,
        fedavg,
    )
    cfg = from_dict({}, ["secagg.enabled=true", "federation.policy=fedbuff"])
    with pytest.raises(ConfigError, match="stale updates are weighted one by one"):
        check_composition(cfg, promptfl, fedavg)
    with pytest.raises(ConfigError, match="real sites have their own"):
        deploy_config(from_dict({}, ["system.speed=lognormal", "system.spread=1"]))
    # --dry-run says what it cannot foresee under the clock, and nothing without one
    from fedrs.orchestrator.plan import plan

    assert (
        "the virtual clock decides"
        in plan(from_dict({}, ["federation.policy=fedbuff"]))["notes"][0]
    )
    assert plan(from_dict({}, []))["notes"] == []


def _rounds(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_virtual_times_and_tensors_do_not_depend_on_the_actor_count(
    synth_data: Path, tmp_path: Path, ray_cluster: Any
) -> None:
    """Log-normal speeds under sync: 1 and 2 actors give the same virtual times and tensors,
    and those tensors are the run's without a clock (the FLOP probe changes nothing)."""
    from fedrs.orchestrator.runner import run

    hetero = {"system.speed": "lognormal", "system.spread": 1.0, "system.gflops": 0.05}
    runs = {
        "plain": small_run(synth_data),
        "one": small_run(synth_data, **hetero, **{"resources.num_actors": 1}),
        "two": small_run(synth_data, **hetero),
    }
    for name, cfg in runs.items():
        run(cfg, out=str(tmp_path / name), console=QUIET)
    t = {n: checkpoint.load(tmp_path / n)[1] for n in runs}
    assert all(np.array_equal(t["plain"][k], t[n][k]) for n in ("one", "two") for k in t["plain"])
    one, two = _rounds(tmp_path / "one"), _rounds(tmp_path / "two")
    assert [r["virtual_task_s"] for r in one] == [r["virtual_task_s"] for r in two]
    assert [r["virtual_time_s"] for r in one] == [r["virtual_time_s"] for r in two]
    tasks = one[0]["virtual_task_s"]
    assert one[0]["virtual_round_s"] == max(tasks.values()) > 0
    assert len(set(tasks.values())) == len(tasks)  # every client its own speed
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["virtual_time_s"] == two[-1]["virtual_time_s"]

    # the sweep report's curve against virtual time: drawn for clocked runs only
    from fedrs.orchestrator.sweep.report import time_curves

    rows = [{"status": "finished", "run_dir": str(tmp_path / n), "arm": n} for n in runs]
    assert time_curves(rows, ["arm"], "accuracy", tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0
    assert not time_curves(rows[:1], ["arm"], "accuracy", tmp_path / "u.png")


def test_a_deadline_drops_the_late_unrun_and_counted_and_resumes_on_the_clock(
    synth_data: Path, tmp_path: Path, ray_cluster: Any
) -> None:
    """With a deadline at the median task time, the late clients are dropped before they run
    (no reply of theirs) and counted; over-selection samples 8 and keeps 6. A run stopped
    after round 1 and resumed ends at the same virtual time with the same tensors."""
    from fedrs.orchestrator.runner import run

    hetero = {"system.speed": "lognormal", "system.spread": 1.0, "system.gflops": 0.05}
    probe = small_run(synth_data, **hetero, **{"federation.rounds": 1})
    run(probe, out=str(tmp_path / "probe"), console=QUIET)
    times = sorted(_rounds(tmp_path / "probe")[0]["virtual_task_s"].values())
    deadline = {"federation.policy": "deadline", "federation.deadline_s": times[3] + 1e-9}
    cfg = small_run(synth_data, **hetero, **deadline, **{"federation.rounds": 3})
    run(cfg, out=str(tmp_path / "late"), console=QUIET)
    first = _rounds(tmp_path / "late")[0]
    late = {c for c, s in first["virtual_task_s"].items() if s > times[3] + 1e-9}
    assert len(late) == 2 and first["clients_late"] == 2 and first["clients_ok"] == 4
    assert set(first["failures"]) == late and not late & set(first["clients"])  # never ran
    assert all("missed the deadline" in first["failures"][c] for c in late)
    assert first["virtual_round_s"] == pytest.approx(times[3])

    run(cfg, out=str(tmp_path / "cut"), console=QUIET, stop_after=1)
    run(resume=str(tmp_path / "cut"), console=QUIET)
    a, b = _rounds(tmp_path / "late"), _rounds(tmp_path / "cut")
    assert [r["virtual_time_s"] for r in a] == [r["virtual_time_s"] for r in b]
    ta, tb = checkpoint.load(tmp_path / "late")[1], checkpoint.load(tmp_path / "cut")[1]
    assert all(np.array_equal(ta[k], tb[k]) for k in ta)

    # a deadline no client meets: every round is empty (the simulated system, not a fault):
    # the run goes on with the global model unchanged instead of failing its quorum
    never = {"federation.policy": "deadline", "federation.deadline_s": times[0] / 2}
    run(small_run(synth_data, **hetero, **never), out=str(tmp_path / "never"), console=QUIET)
    empty = _rounds(tmp_path / "never")
    assert [(r["clients_ok"], r["clients_late"]) for r in empty] == [(0, 6), (0, 6)]
    assert [r["global_change"] for r in empty] == [0.0, 0.0]

    over = {"federation.policy": "overselect", "federation.num_clients": 12}
    run(small_run(synth_data, **hetero, **over), out=str(tmp_path / "over"), console=QUIET)
    rec = _rounds(tmp_path / "over")[0]
    assert rec["clients_sampled"] == 8 and rec["clients_ok"] == 6 and rec["clients_late"] == 2
    kept = sorted(rec["virtual_task_s"][c] for c in rec["clients"])
    dropped = [rec["virtual_task_s"][c] for c in rec["failures"]]
    assert max(kept) <= min(dropped) and rec["virtual_round_s"] == pytest.approx(max(kept))


class _Fixed:
    """Profiles stand-in: a task of ``flops`` takes ``flops`` seconds; always on."""

    def duration(self, task: Task) -> float:
        return task.flops

    def online(self, client_id: int, t: float) -> tuple[bool, float]:
        return True, math.inf


def test_the_asynchronous_schedule_by_hand() -> None:
    """FedAsync (a buffer of one), 2 clients at once, clients 0, 1, 2 taking 1, 2 and 4 s,
    drawn in turn: aggregation 1 takes client 0 at t=1 (fresh), 2 client 1 at t=2 (1 version
    stale), 3 client 0 again at t=3 (fresh), 4 client 2 at t=5 (2 stale; it ties with client
    1's second task and started first). A client is never drawn while it trains."""
    from fedrs.core.system import AsyncSchedule

    def draw(seq: int, busy: set[int]) -> int | None:
        return next((c for c in ((seq + i) % 3 for i in range(3)) if c not in busy), None)

    sched = AsyncSchedule(
        _Fixed(), draw, lambda c: Task(c, [1.0, 2.0, 4.0][c], 0, 0), concurrency=2, buffer=1
    )
    got = [sched.until(v) for v in (1, 2, 3, 4)]
    assert [a.time for a in got] == [1.0, 2.0, 3.0, 5.0]
    assert [[t.client_id for t in a.arrivals] for a in got] == [[0], [1], [0], [2]]
    assert [[a.version - 1 - t.base for t in a.arrivals] for a in got] == [[0], [1], [0], [2]]
    assert [t.client_id for t in sched.started[1]] == [2]  # started on version 1, at t=1
    assert sched.until(2) is got[1]  # idempotent
    buffered = AsyncSchedule(
        _Fixed(), draw, lambda c: Task(c, [1.0, 2.0, 4.0][c], 0, 0), concurrency=3, buffer=2
    )
    first = buffered.until(1)
    assert [t.client_id for t in first.arrivals] == [0, 1] and first.time == 2.0


def test_a_stale_update_is_a_down_weighted_step_from_todays_tensors() -> None:
    from fedrs.core.strategies.base import ClientUpdate
    from fedrs.core.system import stale_update

    base = {"w": np.array([1.0, 2.0], np.float32)}
    today = {"w": np.array([3.0, 3.0], np.float32)}
    u = ClientUpdate(7, {"w": np.array([2.0, 0.0], np.float32)}, 10)
    out = stale_update(u, today, base, 3)  # w = 1 / sqrt(4) = 0.5
    assert np.allclose(out.params["w"], [3.5, 2.0]) and out.params["w"].dtype == np.float32
    assert np.array_equal(stale_update(u, today, base, 0).params["w"], [4.0, 1.0])
    assert out.client_id == 7 and out.num_examples == 10


def test_fedbuff_runs_the_same_at_any_actor_count(
    synth_data: Path, tmp_path: Path, ray_cluster: Any
) -> None:
    """FedBuff with a buffer of 3 over 12 registered clients: 1 and 2 actors give the same
    tensors, arrivals, staleness and virtual times; updates do arrive stale; every
    aggregation takes 3 arrivals, each client once."""
    from fedrs.orchestrator.runner import run

    sets = {"system.speed": "lognormal", "system.spread": 1.0, "system.gflops": 0.05}
    sets |= {"federation.policy": "fedbuff", "federation.buffer": 3, "federation.rounds": 4}
    sets |= {"federation.num_clients": 12}
    for n in (1, 2):
        cfg = small_run(synth_data, **sets, **{"resources.num_actors": n})
        run(cfg, out=str(tmp_path / f"a{n}"), console=QUIET)
    a, b = _rounds(tmp_path / "a1"), _rounds(tmp_path / "a2")
    keys = ("virtual_time_s", "virtual_task_s", "staleness_mean", "clients")
    assert [[r[k] if k != "clients" else sorted(r[k]) for k in keys] for r in a] == [
        [r[k] if k != "clients" else sorted(r[k]) for k in keys] for r in b
    ]
    ta, tb = checkpoint.load(tmp_path / "a1")[1], checkpoint.load(tmp_path / "a2")[1]
    assert all(np.array_equal(ta[k], tb[k]) for k in ta)
    assert all(r["clients_ok"] == 3 and len(r["clients"]) == 3 for r in a)
    assert max(r["staleness_max"] for r in a) >= 1
    times = [r["virtual_time_s"] for r in a]
    # each aggregation at its last arrival: the previous one's time plus this round's span
    assert all(
        t == pytest.approx(prev + r["virtual_round_s"])
        for prev, t, r in zip([0.0, *times], times, a, strict=False)
    )

    # no barrier in wall time: an aggregation waits only for its own arrivals (6 start on
    # version 0, the first 3 to arrive are aggregated while the others still train). Checked
    # on one actor, where the later tasks cannot have run yet; on two, an idle machine can
    # finish all 6 before the driver takes the third (seen once in CI: 0 training)
    assert a[0]["tasks_training"] >= 2

    # stopped after aggregation 2 (replies waiting to arrive, tasks still training) and
    # resumed: the same run
    cut = small_run(synth_data, **sets)
    run(cut, out=str(tmp_path / "cut"), console=QUIET, stop_after=2)
    state = checkpoint.load(tmp_path / "cut")[2]
    meta = json.loads(bytes(np.asarray(state["driver/async/meta"], dtype=np.uint8)))
    assert any("at" in m for m in meta.values()), meta  # handed out again when resumed
    run(resume=str(tmp_path / "cut"), console=QUIET)
    c = _rounds(tmp_path / "cut")
    assert [r["virtual_time_s"] for r in c] == times
    assert [sorted(r["clients"]) for r in c] == [sorted(r["clients"]) for r in b]
    tc = checkpoint.load(tmp_path / "cut")[1]
    assert all(np.array_equal(tb[k], tc[k]) for k in tb)

    # an actor killed while it trains a streamed task: that task fails at its arrival, the
    # tasks queued behind it go to the other actor, the run completes
    victim = sorted(a[0]["clients"])[0]
    faults = {"federation.faults": f"fit@1:{victim}=exit", "resources.max_actor_restarts": -1}
    run(small_run(synth_data, **sets, **faults), out=str(tmp_path / "chaos"), console=QUIET)
    d = _rounds(tmp_path / "chaos")
    assert [r["round"] for r in d] == [1, 2, 3, 4]
    assert d[0]["failures"][victim].startswith("actor died"), d[0]["failures"]
    assert all(r["clients_ok"] + r["clients_failed"] + r["clients_rejected"] == 3 for r in d)
