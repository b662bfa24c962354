"""What each client already holds of the global tensors, and so what a download costs.

A global tensor's *version* is the round that last changed it (0: the initial value). A client
that received version v of a tensor keeps it: it is sent again only once the tensor changes.
Tensors a stage freezes (FedDiff's U-Nets while the classifier trains) or that no strategy
aggregates therefore cost their bytes once per client, as in a deployment where clients keep
what they were sent. The driver counts ``bytes_down`` with this, from the tensors' actual
changes; ``fedrs run --dry-run`` predicts the same from what the sampled clients upload.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

PREFIX = "driver/"  # checkpointed beside the method server's and the strategy's state


class Holdings:
    def __init__(self, keys: Sequence[str], nbytes: Sequence[int]) -> None:
        size = dict(zip(keys, nbytes, strict=True))
        self.keys = tuple(sorted(size))  # the checkpoint's order whatever order params come in
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.nbytes = np.asarray([size[k] for k in self.keys], dtype=np.int64)
        self.versions = np.zeros(len(self.keys), dtype=np.int64)
        self.held: dict[int, np.ndarray] = {}  # client -> version held per tensor (-1: none)

    def _rows(self, names: Iterable[str]) -> np.ndarray:
        return np.fromiter((self.index[k] for k in names), dtype=np.int64)

    def cost(self, client: int, names: Iterable[str]) -> int:
        """Bytes of ``names`` that ``client`` does not hold in their current version."""
        rows = self._rows(names)
        held = self.held.get(client)
        if held is None:
            return int(self.nbytes[rows].sum())
        return int(self.nbytes[rows][held[rows] != self.versions[rows]].sum())

    def deliver(self, client: int, names: Iterable[str], at: np.ndarray | None = None) -> None:
        """``client`` received ``names`` as they are now (``at``: as they were when a
        ``snapshot`` was taken, for work handed out before the rounds since)."""
        held = self.held.setdefault(client, np.full(len(self.keys), -1, dtype=np.int64))
        rows = self._rows(names)
        held[rows] = (self.versions if at is None else at)[rows]

    def snapshot(self) -> np.ndarray:
        """Every tensor's version now (``deliver``'s ``at``)."""
        return self.versions.copy()

    def changed(self, names: Iterable[str], round: int) -> None:
        self.versions[self._rows(names)] = round

    def version(self, name: str) -> int:
        return int(self.versions[self.index[name]])

    def state_dict(self) -> dict[str, np.ndarray]:
        ids = sorted(self.held)
        return {
            PREFIX + "versions": self.versions.copy(),
            PREFIX + "held_clients": np.asarray(ids, dtype=np.int64),
            PREFIX + "held": (
                np.stack([self.held[c] for c in ids])
                if ids
                else np.zeros((0, len(self.keys)), dtype=np.int64)
            ),
        }

    def load_state_dict(self, state: dict[str, Any], round: int) -> None:
        """Restore a checkpoint's holdings; one without them (or of other tensors) counts every
        tensor as changed in ``round``, held by nobody: re-sent once, never under-counted."""
        versions = state.get(PREFIX + "versions")
        held = state.get(PREFIX + "held")
        ids = state.get(PREFIX + "held_clients")
        if (
            versions is None
            or held is None
            or ids is None
            or len(versions) != len(self.keys)
            or len(ids) != len(held)
        ):
            self.versions[:] = round
            self.held = {}
            return
        self.versions = np.asarray(versions, dtype=np.int64).copy()
        self.held = {
            int(c): np.asarray(row, dtype=np.int64).copy() for c, row in zip(ids, held, strict=True)
        }


def unchanged(a: np.ndarray, b: np.ndarray) -> bool:
    """The same tensor, bit for bit (an aggregate equal to the previous one is unchanged)."""
    if a is b:
        return True
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return np.array_equal(
        np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8)
    )
