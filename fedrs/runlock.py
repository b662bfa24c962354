"""One writer per run directory: an exclusive ``flock`` on ``RUN_DIR/.fedrs.lock``.

Taken before anything else touches the folder (before preflight and Ray), held for the run's
life and released on any exit: the kernel drops a ``flock`` when its process dies, so a lock
left by a killed run is stale by construction and the next run takes it. The file holds the
holder's pid and host, for the message a second run gets. A folder the lock had to create is
not counted as holding anything (``LOCK`` is ignored by the "folder holds a run" check), and
the file is removed on release (before the lock is dropped; a newcomer that opened the old
file before that sees it gone and opens the new one), so a refused or finished command leaves
the folder as it found it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from fedrs.errors import ConfigError

LOCK = ".fedrs.lock"


class RunDirBusyError(ConfigError):
    """Another fedrs process writes this run directory now."""


@contextlib.contextmanager
def locked(run_dir: str | os.PathLike[str], what: str = "--out") -> Iterator[Path]:
    """Hold ``run_dir``'s lock (creating the folder if needed); one-line errors when the folder
    cannot be written or another live process holds it. The lock file is removed on release,
    so a folder is left as it was found."""
    path = Path(run_dir)
    lock = path / LOCK
    while True:
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(
                f"{what} {run_dir} cannot be written: {exc.strerror or exc}; choose a writable "
                "folder"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirBusyError(
                f"{what} {run_dir} is in use by another fedrs run ({holder}); wait for it to "
                "end or choose another folder"
            ) from None
        try:  # the file may have been released and removed between our open and our lock
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # before unlocking: a newcomer opens a new file, never this one
        os.close(fd)  # releases the flock
