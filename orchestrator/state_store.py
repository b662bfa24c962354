"""Client-state store: each client's private tensors, kept outside the driver's memory.

Layout: ``ROOT/<cid // 1000>/<cid>/r<round>.safetensors``, one file per (client, round) in which
the client trained. Whichever actor trains client k next loads the newest version written
*before* the current round, so

* private state follows a client to any actor (ROOT must be on storage all nodes see: the run
  directory on a shared filesystem on multi-node clusters);
* a round interrupted before its checkpoint leaves versions the resumed run simply overwrites;
* the driver discards the version of a client whose update it rejected.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fedrs.io import write_bytes

_VERSION = re.compile(r"r(\d+)\.safetensors")
Params = dict[str, np.ndarray]


class FileStateStore:
    def __init__(self, root: str | os.PathLike[str], keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = keep

    def _dir(self, client_id: int) -> Path:
        return self.root / f"{client_id // 1000:04d}" / str(client_id)

    def versions(self, client_id: int) -> list[int]:
        try:
            names = os.listdir(self._dir(client_id))
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for n in names if (m := _VERSION.fullmatch(n)))

    def load(self, client_id: int, before_round: int) -> Params | None:
        """The newest state written in a round < ``before_round``, or None if there is none."""
        usable = [r for r in self.versions(client_id) if r < before_round]
        if not usable:
            return None
        data = (self._dir(client_id) / f"r{usable[-1]}.safetensors").read_bytes()
        return dict(st_load(data))

    def save(self, client_id: int, round_: int, params: Params) -> None:
        """Write the state trained in ``round_`` atomically; prune versions beyond ``keep``."""
        if not params:
            return
        folder = self._dir(client_id)
        folder.mkdir(parents=True, exist_ok=True)
        blob = st_save({k: np.ascontiguousarray(v) for k, v in params.items()})
        write_bytes(folder / f"r{round_}.safetensors", blob)
        for old in self.versions(client_id)[: -self.keep]:
            with contextlib.suppress(FileNotFoundError):
                (folder / f"r{old}.safetensors").unlink()

    def discard(self, client_id: int, round_: int) -> None:
        """Drop the version written in ``round_`` (its update was rejected or it dropped out)."""
        with contextlib.suppress(FileNotFoundError):
            (self._dir(client_id) / f"r{round_}.safetensors").unlink()
