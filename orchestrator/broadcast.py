"""The global tensors as Ray objects, per group of clients: what the last round changed goes
out in a new object each round, the rest in one object handed out again for as long as it stays
unchanged (the client actors keep that one resident, so a frozen backbone stage or a tensor no
strategy aggregates crosses the object store once)."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from fedrs.actors.client import Download
from fedrs.orchestrator.holdings import Holdings

Group = tuple[str, ...]


class Broadcast:
    """``put``: how an object is handed to many clients (``ClientPool.put``: the object
    store; a deployment's sites get the object itself)."""

    def __init__(self, put: Any = ray.put) -> None:
        self.put = put
        self._resting: dict[Group, tuple[tuple[int, ...], Any]] = {}  # group -> versions, ref

    def downloads(
        self, groups: list[Group], params: dict[str, np.ndarray], holdings: Holdings, rnd: int
    ) -> dict[Group, Download]:
        """One ``Download`` per group, after round ``rnd`` changed what ``holdings`` says."""
        out, kept = {}, {}
        for names in groups:
            moving = tuple(k for k in names if holdings.version(k) == rnd)
            resting = tuple(k for k in names if holdings.version(k) != rnd)
            ref = None
            if resting:
                versions = tuple(holdings.version(k) for k in resting)
                old = self._resting.get(resting)
                if old is None or old[0] != versions:
                    old = (versions, self.put({k: params[k] for k in resting}))
                kept[resting] = old
                ref = old[1]
            out[names] = Download(self.put({k: params[k] for k in moving}), ref)
        self._resting = kept  # objects of groups no longer asked for are released
        return out
