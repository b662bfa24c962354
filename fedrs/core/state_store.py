"""Client-state store: each client's private tensors, kept outside the driver's memory.

Layout: ``ROOT/<cid // 1000>/<cid>/r<round>.safetensors``, one file per (client, round) in which
the client trained. Whichever actor trains client k next loads the newest version written
*before* the current round, so

* private state follows a client to any actor (ROOT must be on storage all nodes see: the run
  directory on a shared filesystem on multi-node clusters);
* a round interrupted before its checkpoint leaves versions the resumed run simply overwrites;
* the driver discards the version of a client whose update it rejected.

Nothing is held in memory per client: 100,000 registered clients are 100,000 small files, and
a load is one ``listdir`` of the client's own folder plus one read. Writes are atomic (temp
file, rename); ``save`` also fsyncs each file (durable across a power loss), which on a busy
disk dominates its cost (``fedrs bench scale-clients``), so bulk writes (seeding or migrating a
store) go through ``save_many``: no per-file fsync, one sync at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fedrs.io import contiguous, write_bytes

log = logging.getLogger(__name__)
_VERSION = re.compile(r"r(\d+)\.safetensors")
Params = dict[str, np.ndarray]


class FileStateStore:
    def __init__(self, root: str | os.PathLike[str], keep: int = 2, fsync: bool = True) -> None:
        self.root = Path(root)
        self.keep = keep
        self.fsync = fsync
        self.unreadable = 0  # versions skipped because they could not be read (counted)

    def _folder(self, client_id: int) -> str:
        return os.path.join(self.root, f"{client_id // 1000:04d}", str(client_id))

    def versions(self, client_id: int) -> list[int]:
        try:
            names = os.listdir(self._folder(client_id))
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for n in names if (m := _VERSION.fullmatch(n)))

    def load(self, client_id: int, before_round: int) -> Params | None:
        """The newest state written in a round < ``before_round``, or None if there is none.

        A version that cannot be read (cut short by a crash before it reached the disk) is
        skipped with a warning for the one before it."""
        folder = self._folder(client_id)
        for rnd in reversed([r for r in self.versions(client_id) if r < before_round]):
            path = os.path.join(folder, f"r{rnd}.safetensors")
            try:
                with open(path, "rb") as fh:
                    return dict(st_load(fh.read()))
            except FileNotFoundError:  # pruned or discarded since the listdir
                continue
            except (SafetensorError, ValueError, OSError) as exc:
                self.unreadable += 1
                log.warning("client %d: unreadable private state %s (%s)", client_id, path, exc)
        return None

    def save(self, client_id: int, round_: int, params: Params) -> None:
        """Write the state trained in ``round_`` atomically; prune versions beyond ``keep``."""
        self._save(client_id, round_, params, self.fsync)

    def save_many(self, round_: int, states: Iterable[tuple[int, Params]]) -> int:
        """Write many clients' states of ``round_`` (bulk seeding or migration): each file
        atomically but without its own fsync, then one sync of everything. Returns the count."""
        count = 0
        for client_id, params in states:
            self._save(client_id, round_, params, fsync=False)
            count += 1
        if self.fsync:
            os.sync()
        return count

    def _save(self, client_id: int, round_: int, params: Params, fsync: bool) -> None:
        if not params:
            return
        folder = self._folder(client_id)
        blob = st_save({k: contiguous(v) for k, v in params.items()})
        path = os.path.join(folder, f"r{round_}.safetensors")
        write_bytes(path, blob, fsync)  # makes the client's folder on its first state
        for old in self.versions(client_id)[: -self.keep]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, f"r{old}.safetensors"))

    def discard(self, client_id: int, round_: int) -> None:
        """Drop the version written in ``round_`` (its update was rejected or it dropped out)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self._folder(client_id), f"r{round_}.safetensors"))
