"""ClientPool.map's scheduling on real Ray actors: largest-first order, queued tasks behind a
running one, and what happens to queued tasks when their actor dies or the deadline passes."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import ray

from fedrs.actors.pool import ClientPool

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _pool(n: int, max_restarts: int = 1, restart_s: float = 0.0, marker: str = "") -> ClientPool:
    """A ClientPool whose actors are stand-in workers (defined here so Ray pickles the class by
    value: test modules are not importable in Ray's workers). Once ``marker`` exists (a "die"
    task wrote it), a (re)started actor takes ``restart_s`` to come up."""

    class Sleeper:
        """A stand-in client worker: ``fit`` sleeps, optionally dies or raises, and says when it
        ran and in which process."""

        def __init__(self) -> None:
            if marker and os.path.exists(marker):
                time.sleep(restart_s)

        def fit(self, shared: Any, task: tuple[int, float, str]) -> dict[str, Any]:
            cid, seconds, action = task
            start = time.time()
            if action == "die" and not os.path.exists(shared):
                open(shared, "w").close()  # die once; the restarted actor then trains normally
                os._exit(1)
            if action == "die always":
                os._exit(1)
            if action == "raise":
                raise ValueError(f"client {cid} broke")
            time.sleep(seconds)
            return {"cid": cid, "start": start, "end": time.time(), "pid": os.getpid()}

    remote = ray.remote(Sleeper).options(
        num_cpus=0.01, max_restarts=max_restarts, max_task_retries=0
    )
    return ClientPool.of([remote.remote() for _ in range(n)], max_restarts)


def test_largest_tasks_start_first_and_everything_completes(tmp_path: Any) -> None:
    pool = _pool(1)
    tasks = [(cid, 0.01, "") for cid in range(6)]
    costs = [3, 9, 1, 9, 5, 2]  # ties keep task order: 1 before 3
    results, failures = pool.map("fit", str(tmp_path / "x"), tasks, 60, costs)
    assert failures == {}
    started = sorted(results, key=lambda ti: results[ti]["start"])
    assert started == [1, 3, 4, 0, 5, 2]


def test_the_round_tail_is_balanced(tmp_path: Any) -> None:
    """Two actors, one big task and many small ones: largest-first plus idle-only hand-out
    of the last tasks keeps the busiest actor near the ideal makespan."""
    pool = _pool(2)
    tasks = [(cid, 0.1, "") for cid in range(8)] + [(8, 0.6, "")]  # the big one comes last
    costs = [1] * 8 + [6]
    results, failures = pool.map("fit", str(tmp_path / "x"), tasks, 60, costs)
    assert failures == {} and len(results) == 9
    by_pid: dict[int, float] = {}
    for r in results.values():
        by_pid[r["pid"]] = by_pid.get(r["pid"], 0.0) + r["end"] - r["start"]
    assert len(by_pid) == 2
    # ideal split is 0.7 / 0.7; in task order it would be 1.0 / 0.4
    assert max(by_pid.values()) < 0.95


def test_tasks_queued_behind_a_crash_run_elsewhere(tmp_path: Any) -> None:
    pool = _pool(2)
    tasks = [(0, 0.3, "die")] + [(cid, 0.05, "") for cid in range(1, 8)]
    costs = [10] + [1] * 7  # the dying task goes out first, with a task queued behind it
    results, failures = pool.map("fit", str(tmp_path / "died-once"), tasks, 120, costs)
    assert list(failures) == [0] and "actor died" in failures[0]
    assert sorted(results) == list(range(1, 8))
    assert pool.deaths.count(1) == 1


def test_an_actor_past_its_restarts_gets_no_more_tasks(tmp_path: Any) -> None:
    """With no restarts left the dead actor is retired: its queued task and every later one
    run on the surviving actor instead of failing one by one."""
    pool = _pool(2, max_restarts=0)
    tasks = [(0, 0.3, "die always")] + [(cid, 0.02, "") for cid in range(1, 8)]
    costs = [10] + [1] * 7
    results, failures = pool.map("fit", str(tmp_path / "x"), tasks, 120, costs)
    assert list(failures) == [0] and "actor died" in failures[0]
    assert sorted(results) == list(range(1, 8))
    assert len({r["pid"] for r in results.values()}) == 1  # all on the survivor
    # the next round: only the survivor is used, nothing fails
    results, failures = pool.map("fit", str(tmp_path / "x"), [(9, 0.01, "")] * 4, 60)
    assert failures == {} and len(results) == 4


def test_with_every_actor_gone_the_rest_fail_with_a_reason(tmp_path: Any) -> None:
    pool = _pool(1, max_restarts=0)
    tasks = [(0, 0.0, "die always"), (1, 0.01, ""), (2, 0.01, "")]
    results, failures = pool.map("fit", str(tmp_path / "x"), tasks, 60)
    assert results == {} and "actor died" in failures[0]
    assert "no live client actors" in failures[1] and "no live client actors" in failures[2]


def test_a_raising_client_does_not_disturb_its_queue(tmp_path: Any) -> None:
    pool = _pool(1)
    tasks = [(0, 0.01, ""), (1, 0.01, "raise"), (2, 0.01, "")]
    results, failures = pool.map("fit", str(tmp_path / "x"), tasks, 60)
    assert sorted(results) == [0, 2]
    assert "ValueError" in failures[1] and "client 1 broke" in failures[1]


def test_deadline_fails_running_and_queued_tasks_with_reasons(tmp_path: Any) -> None:
    pool = _pool(1)
    tasks = [(0, 30.0, ""), (1, 0.01, ""), (2, 0.01, "")]
    t0 = time.monotonic()
    results, failures = pool.map("fit", str(tmp_path / "x"), tasks, 1.0)
    assert time.monotonic() - t0 < 20
    assert results == {}
    assert failures[0].startswith("timed out after")
    assert failures[1].startswith("not started within")
    assert failures[2].startswith("not started within")
    # the next round waits for Ray to restart the killed actor instead of failing on it
    results, failures = pool.map("fit", str(tmp_path / "x"), [(3, 0.01, "")], 30.0)
    assert failures == {} and list(results) == [0]


def test_an_idle_actor_takes_the_task_queued_behind_a_straggler(tmp_path: Any) -> None:
    """The straggler (task 0) holds one task queued behind it; the other actor, idle at the
    tail, takes it, so only the straggler misses the deadline."""
    pool = _pool(2)
    tasks = [(0, 30.0, "")] + [(cid, 0.05, "") for cid in range(1, 6)]
    costs = [10] + [1] * 5  # the straggler goes out first, with a task queued behind it
    results, failures = pool.map("fit", str(tmp_path / "x"), tasks, 4.0, costs)
    assert list(failures) == [0] and failures[0].startswith("timed out after")
    assert sorted(results) == [1, 2, 3, 4, 5]
    assert pool.steals == 1
    assert len({r["pid"] for r in results.values()}) == 1  # all on the actor that was free


def test_waiting_for_restarts_does_not_count_against_the_deadline(tmp_path: Any) -> None:
    """The only actor dies and takes 4 s to come back, as long as the 4 s deadline: the
    tasks that were waiting for it still run."""
    marker = str(tmp_path / "died-once")
    pool = _pool(1, restart_s=4.0, marker=marker)
    tasks = [(0, 0.0, "die"), (1, 0.01, ""), (2, 0.01, "")]
    results, failures = pool.map("fit", marker, tasks, 4.0)
    assert list(failures) == [0], failures
    assert "actor died" in failures[0]
    assert sorted(results) == [1, 2]


def test_a_client_stays_on_the_actor_that_last_ran_it(tmp_path: Any) -> None:
    """A client goes back to the actor that last trained it (where its per-actor cache is)
    even when largest-first order would send it elsewhere, unless it is much smaller than the
    largest pending task. Two tasks, two idle actors: the first hand-out decides alone."""
    pool = _pool(2)
    path = str(tmp_path / "x")
    pid = [r["pid"] for r in ray.get([a.fit.remote(path, (9, 0.0, "")) for a in pool.actors])]
    tasks = [(0, 0.05, ""), (1, 0.05, "")]
    plain, _ = pool.map("fit", path, tasks, 60, [2.0, 1.9])  # largest first, to actor 0
    assert [plain[t]["pid"] for t in (0, 1)] == [pid[0], pid[1]]
    pool.home = {0: 1, 1: 0}
    kept, _ = pool.map("fit", path, tasks, 60, [2.0, 1.9], affinity=[0, 1])
    assert [kept[t]["pid"] for t in (0, 1)] == [pid[1], pid[0]]
    assert pool.home == {0: 1, 1: 0}
    # client 1 is now far smaller than client 0: the largest goes first, affinity or not
    big_first, _ = pool.map("fit", path, tasks, 60, [2.0, 1.0], affinity=[0, 1])
    assert [big_first[t]["pid"] for t in (0, 1)] == [pid[0], pid[1]]
    assert pool.home == {0: 0, 1: 1}
