"""Ctrl-C (SIGINT) and `ray job stop` (SIGTERM) on a real `fedrs run`: the first stops it within
seconds, abandoning the round in flight, with summary.json and plots of the last complete round
and a resumable checkpoint; a second exits at once without damaging that checkpoint."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# `fedrs` as a terminal's foreground job gets it: Ctrl-C delivered to Python. A process started
# in the background by a non-interactive shell (`cmd &`, as CI runners may start the suite)
# inherits SIGINT ignored, and fedrs, like any Unix program, keeps ignoring it.
FEDRS = [
    sys.executable,
    "-c",
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('fedrs.cli', run_name='__main__', alter_sys=True)",
]


def _start(workdir: Path) -> tuple[subprocess.Popen, Path]:
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = open(workdir / "out.txt", "w")  # noqa: SIM115 - the child writes it
    proc = subprocess.Popen(
        [*FEDRS, "run", "--out", "r", "--set", "federation.rounds=500"],
        cwd=workdir,
        env=environ,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    metrics = workdir / "r" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1):
        alive = proc.poll() is None and time.monotonic() < deadline
        assert alive, (workdir / "out.txt").read_text()
        time.sleep(0.2)
    return proc, workdir / "r"


def _checkpoint_round(run_dir: Path) -> int:
    from fedrs.orchestrator import checkpoint

    return checkpoint.latest_round(run_dir)


@pytest.mark.slow
def test_ctrl_c_stops_a_run_within_seconds_with_its_summary(tmp_path: Path) -> None:
    proc, run_dir = _start(tmp_path)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=120)
    took = time.monotonic() - t0
    text = (tmp_path / "out.txt").read_text()
    assert rc == 130, text
    assert took < 25, (took, text)  # was 30 s and more, with rounds still running
    done = _checkpoint_round(run_dir)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert done >= 1 and [r["round"] for r in records] == list(range(1, done + 1))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == done
    assert (run_dir / "accuracy.png").is_file()
    assert f"stopped after round {done} of 500" in text
    assert f"fedrs run --resume {run_dir.name}" in text or f"--resume {run_dir}" in text
    # what was abandoned left no private state of a later round behind
    rounds = {int(p.stem[1:]) for p in (run_dir / "client_state").rglob("r*.safetensors")}
    assert not rounds or max(rounds) <= done


@pytest.mark.slow
def test_a_second_signal_exits_at_once_and_the_checkpoint_stays_whole(tmp_path: Path) -> None:
    proc, run_dir = _start(tmp_path)
    proc.send_signal(signal.SIGTERM)  # `ray job stop`
    time.sleep(0.05)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=120)
    assert rc == 130, (tmp_path / "out.txt").read_text()
    assert time.monotonic() - t0 < 20
    from fedrs.orchestrator import checkpoint

    state = checkpoint.load(run_dir)  # loads whole: atomic writes
    assert state is not None and state[0] == _checkpoint_round(run_dir) >= 1


SWEEP = """
[base]
model.arch = "fedrs-tiny"
data.num_clients = 2
data.per_class = 4
data.image_size = 32
federation.rounds = 20
federation.clients_per_round = 2
client.local_epochs = 1
resources.num_actors = 1
resources.num_cpus_per_client = 1.0
[grid]
"federation.seed" = [0, 1]
[sweep]
max_concurrent = 1
"""


@pytest.mark.slow
def test_ctrl_c_stops_a_sweep_gracefully_and_resume_finishes_it(tmp_path: Path) -> None:
    """The first Ctrl-C: the running trial ends after its round with a summary, the trial not
    yet started stays pending, rc 130; ``--resume`` then continues the stopped trial from its
    checkpoint (no round run twice) and runs the other."""
    (tmp_path / "s.toml").write_text(SWEEP)
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = open(tmp_path / "out.txt", "w")  # noqa: SIM115 - the child writes it
    proc = subprocess.Popen(
        [*FEDRS, "sweep", "s.toml", "--out", "sw"],
        cwd=tmp_path,
        env=environ,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    sweep = tmp_path / "sw"
    deadline = time.monotonic() + 300
    while not any(p.stat().st_size for p in sweep.glob("trials/*/metrics.jsonl")):
        alive = proc.poll() is None and time.monotonic() < deadline
        assert alive, (tmp_path / "out.txt").read_text()
        time.sleep(0.2)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=120)
    text = (tmp_path / "out.txt").read_text()
    assert rc == 130, text
    assert time.monotonic() - t0 < 25, text
    rows = {r["trial"]: r for r in csv.DictReader((sweep / "results.csv").open())}
    assert sorted(r["status"] for r in rows.values()) == ["pending", "stopped"], rows
    (stopped,) = [name for name, r in rows.items() if r["status"] == "stopped"]
    summary = json.loads((sweep / "trials" / stopped / "summary.json").read_text())
    done = summary["rounds_completed"]
    assert 1 <= done < 20 and int(rows[stopped]["rounds_completed"]) == done
    assert "continue with fedrs sweep --resume" in text and not (sweep / ".stop-requested").exists()
    again = subprocess.run(
        [*FEDRS, "sweep", "--resume", "sw"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    rows = {r["trial"]: r for r in csv.DictReader((sweep / "results.csv").open())}
    assert [r["status"] for r in rows.values()] == ["finished", "finished"]
    lines = (sweep / "trials" / stopped / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == list(range(1, 21))  # resumed, not rerun


def test_a_run_stopped_before_its_first_round_ends_as_stopped_not_failed(
    ray_cluster, synth_data: Path, tmp_path: Path
) -> None:
    """Stopped before round 1 ended (a sweep stopped while a trial starts): the run ends as a
    stopped run (StoppedByUser, so a sweep counts the trial stopped and runs it again on
    resume), not as a crash on its missing metrics file; nothing to resume, no folder left."""
    import io
    import threading

    from rich.console import Console

    from conftest import small_run
    from fedrs.orchestrator.runner import StoppedByUser, run

    stop = threading.Event()
    stop.set()
    # round 1's clients sleep: the stop lands while it trains, whatever the machine's speed
    slow = {"resources.num_actors": 1, "federation.faults": "fit@1:p1.0=sleep:5"}
    said = io.StringIO()
    with pytest.raises(StoppedByUser):
        run(
            small_run(synth_data, **slow),
            out=str(tmp_path / "r"),
            console=Console(file=said),
            stop=stop,
        )
    assert "stopped before round 1 ended: nothing to resume" in said.getvalue()
    assert not (tmp_path / "r").exists()
