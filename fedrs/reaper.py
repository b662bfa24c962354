"""Stop the local Ray a fedrs process started, also when that process is killed.

``ray.init`` stops the instance it started at a normal exit, and the GCS and raylet share the
process's fate. A ``SIGKILL`` runs no exit handler, though, and Ray's agents (dashboard agent,
runtime-env agent), the raylet's children, live on for a minute or two, listening on their
ports. ``start()`` spawns a small watcher in its own session: while the fedrs process lives it
records the process's descendants (pid and start time, every ``interval`` s); once the process
is gone, every recorded process still alive with the same start time is killed. Linux only
(``/proc``); elsewhere it does nothing.

    python -m fedrs.reaper PID [INTERVAL]
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PROC = Path("/proc")


def process_info(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of ``pid``, or None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root``: pid -> start time."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            info = process_info(int(entry.name))
            if info is not None:
                children.setdefault(info[0], []).append((int(entry.name), info[1]))
    out: dict[int, int] = {}
    todo = [root]
    while todo:
        for pid, started in children.get(todo.pop(), []):
            if pid not in out:
                out[pid] = started
                todo.append(pid)
    return out


def watch(parent: int, interval: float = 1.0) -> list[int]:
    """Record ``parent``'s descendants until it is gone, then kill the ones still alive;
    return the pids killed."""
    me = os.getpid()
    seen: dict[int, int] = {}
    while os.getppid() == parent:  # re-parented once the parent is gone
        seen |= descendants(parent)
        time.sleep(interval)
    killed = []
    for pid, started in seen.items():
        info = process_info(pid)
        if pid != me and info is not None and info[1] == started:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def start(interval: float = 1.0) -> subprocess.Popen | None:
    """Watch this process (call it right before starting a local Ray)."""
    if not PROC.is_dir():
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "fedrs.reaper", str(os.getpid()), str(interval)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the terminal's group does not stop it first
        close_fds=True,
    )


if __name__ == "__main__":
    watch(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 1.0)
