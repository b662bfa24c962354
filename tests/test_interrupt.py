"""Ctrl-C (SIGINT) and `ray job stop` (SIGTERM) on a real `fedrs run`: the first stops it within
seconds, abandoning the round in flight, with summary.json and plots of the last complete round
and a resumable checkpoint; a second exits at once without damaging that checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

FEDRS = [sys.executable, "-m", "fedrs.cli"]


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
