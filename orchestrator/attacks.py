"""Simulated attacks (``attack.*``): what a Byzantine client sends instead of its honest update.

The attackers are a deterministic ``attack.fraction`` of the registered clients (a permutation
drawn from ``attack.seed``; ``floor(fraction x N)`` of them), the same in every round and on
every actor. Each attack acts on what the client sends, whatever the method (``w_g`` the
tensors it received, ``w`` its honest result):

* ``signflip``: ``w_g - (w - w_g)`` (the update reversed);
* ``scale``: ``w_g + scale (w - w_g)`` (a boosted update);
* ``noise``: ``w + N(0, noise_std^2)``;
* ``nan``: every value NaN (a non-finite bomb; rejected and counted by the driver);
* ``collude``: every attacker sends the same ``w_g + scale z / ||z||``, ``z`` drawn from
  (seed, round): identical updates, so distance-based defences see a tight cluster;
* ``labelflip``: data poisoning: the client trains on labels ``C - 1 - y``.

Extra payloads (per-class gradients) get the same treatment where it has a meaning
(``signflip``: negated, ``scale``: scaled, ``noise``, ``nan``); ``collude`` and ``labelflip``
leave them as computed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Params = dict[str, np.ndarray]


def attackers(num_registered: int, fraction: float, seed: int) -> frozenset[int]:
    """The attacking clients: the first ``floor(fraction x N)`` of a seeded permutation."""
    k = math.floor(fraction * num_registered + 1e-9)
    perm = np.random.default_rng([seed, 0xA77AC]).permutation(num_registered)
    return frozenset(int(c) for c in perm[:k])


def _gaussian(seed: list[int], shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def tamper(
    kind: str, sent: Params, received: Params, cfg: Any, round_: int, client_id: int
) -> Params:
    """What an attacker sends in place of ``sent`` (its honest tensors)."""
    out: Params = {}
    for i, (name, w) in enumerate(sorted(sent.items())):
        w64 = np.asarray(w, np.float64)
        g = np.asarray(received[name], np.float64) if name in received else None
        if kind == "signflip":
            new = 2 * g - w64 if g is not None else -w64
        elif kind == "scale":
            new = g + cfg.scale * (w64 - g) if g is not None else cfg.scale * w64
        elif kind == "noise":
            new = w64 + cfg.noise_std * _gaussian([cfg.seed, round_, client_id, i], w.shape)
        elif kind == "nan":
            new = np.full(w.shape, np.nan)
        elif kind == "collude" and g is not None:
            z = _gaussian([cfg.seed, round_, i], w.shape)
            new = g + cfg.scale * z / max(float(np.linalg.norm(z)), 1e-12)
        else:  # labelflip acts on the data; collude leaves extras as they are
            new = w64
        out[name] = new.astype(w.dtype)
    return out


class LabelFlipped:
    """A shard seen with every label ``y`` replaced by ``num_classes - 1 - y``."""

    def __init__(self, shard: Any, num_classes: int) -> None:
        self.shard = shard
        self.labels = np.where(shard.labels >= 0, num_classes - 1 - shard.labels, shard.labels)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["shard"], name)

    def __len__(self) -> int:
        return len(self.shard)
