"""One writer per run directory: a second `fedrs run` / `--resume` on a folder in use, and an
unwritable `--out`, are one-line errors before Ray starts; a dead holder's lock is stale."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli_mistakes import assert_one_line_error, fedrs

from fedrs.errors import ConfigError
from fedrs.runlock import LOCK, RunDirBusyError, locked

HOLD = (
    "import sys, time; from fedrs.runlock import locked\n"
    "with locked(sys.argv[1]):\n"
    "    print('held', flush=True); time.sleep(120)\n"
)


def _holder(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_and_a_dead_holders_lock_is_stale(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    proc = _holder(run_dir)
    try:
        busy = f"in use by another fedrs run \\(pid {proc.pid}"
        with pytest.raises(RunDirBusyError, match=busy), locked(run_dir):
            pass
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean exit: the kernel drops the flock
        proc.wait()
    with locked(run_dir) as held:  # stale: taken at once
        (held / "config.json").write_text("{}")
        assert (run_dir / LOCK).read_text().startswith(f"pid {os.getpid()} on ")
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json"]  # released: removed
    empty = tmp_path / "empty"
    with locked(empty):
        pass
    assert empty.is_dir() and not any(empty.iterdir())  # nothing written: no lock file left


def test_an_unwritable_folder_is_one_line() -> None:
    with pytest.raises(ConfigError, match="cannot be written"), locked("/proc/fedrs-out"):
        pass


def test_cli_refuses_a_run_directory_in_use_and_an_unwritable_out(tmp_path: Path) -> None:
    run_dir = tmp_path / "busy"
    proc = _holder(run_dir)
    try:
        res = fedrs(tmp_path, "run", "--out", str(run_dir), "--set", "federation.rounds=1")
        assert_one_line_error(res, "is in use by another fedrs run", f"pid {proc.pid}")
        res = fedrs(tmp_path, "run", "--resume", str(run_dir))
        assert_one_line_error(res, "no config.json")  # no run there yet: said before locking
        (run_dir / "config.json").write_text("{}")
        res = fedrs(tmp_path, "run", "--resume", str(run_dir))
        assert_one_line_error(res, "--resume", "is in use by another fedrs run")
        assert "Ray instance" not in res.stderr  # refused before Ray started
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK, "config.json"]  # the holder's
    finally:
        proc.kill()
        proc.wait()
    res = fedrs(tmp_path, "run", "--out", "/proc/fedrs-out")
    assert_one_line_error(res, "--out /proc/fedrs-out cannot be written")
    assert not os.path.exists("/proc/fedrs-out")
