"""Simulated attacks (``attack.*``): what a Byzantine client sends instead of its honest update.

The attackers are a deterministic ``attack.fraction`` of the registered clients (a permutation
drawn from ``attack.seed``; ``floor(fraction x N)`` of them), the same in every round and on
every actor. Each attack acts on what the client sends, whatever the method (``w_g`` the
tensors it received, ``w`` its honest result):

* ``signflip``: ``w_g - boost (w - w_g)`` (the update reversed; ``boost`` > 1: boosted, which
  reverses FedAvg's mean step once ``boost x f > n - f``);
* ``scale``: ``w_g + scale (w - w_g)`` (a boosted update);
* ``noise``: ``w + N(0, noise_std^2)``;
* ``nan``: every value NaN (a non-finite bomb; rejected and counted by the driver);
* ``collude``: every attacker sends the same ``w_g + scale z / ||z||``, ``z`` drawn from
  (seed, round): identical updates, so distance-based defences see a tight cluster;
* ``labelflip``: data poisoning: the client trains on labels ``C - 1 - y``;
* ``alie`` and ``ipm``: omniscient attacks, crafted by the driver from the round's honest
  updates (``omniscient``, after validation, before aggregation; the attacker sends its honest
  update, marked as an attacker's): ``alie`` ("a little is enough", Baruch et al., 2019), every
  attacker sends ``mean - z std`` of the honest updates per coordinate; ``ipm`` (inner-product
  manipulation, Xie et al., 2019), every attacker sends ``w_g - epsilon x`` the honest mean
  update (FedAvg's step turns against the honest mean once ``epsilon f > n - f``);
* ``absent``: not an attack but its reference: the attackers' updates never reach the
  aggregate (the driver leaves them out, ``withheld``), which is what a perfect defence would
  aggregate; their data is lost with them, so no defence can do better (the floor).

Extra payloads (per-class gradients) get the same treatment where it has a meaning
(``signflip``: times ``-boost``, ``scale``: scaled, ``noise``, ``nan``); ``collude``,
``labelflip``, ``alie`` and ``ipm`` leave them as computed.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist
from typing import Any

import numpy as np

from fedrs.core.strategies.base import ClientUpdate

Params = dict[str, np.ndarray]
OMNISCIENT = ("alie", "ipm")  # crafted by the driver from the round's honest updates
ABSENT = "absent"  # the attackers' updates left out: a perfect defence's aggregate


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
            new = g - cfg.boost * (w64 - g) if g is not None else -cfg.boost * w64
        elif kind == "scale":
            new = g + cfg.scale * (w64 - g) if g is not None else cfg.scale * w64
        elif kind == "noise":
            new = w64 + cfg.noise_std * _gaussian([cfg.seed, round_, client_id, i], w.shape)
        elif kind == "nan":
            new = np.full(w.shape, np.nan)
        elif kind == "collude" and g is not None:
            z = _gaussian([cfg.seed, round_, i], w.shape)
            new = g + cfg.scale * z / max(float(np.linalg.norm(z)), 1e-12)
        else:  # labelflip acts on the data; collude leaves extras as they are; alie / ipm /
            # absent: the honest update, replaced or left out by the driver
            new = w64
        out[name] = new.astype(w.dtype)
    return out


def alie_z_max(n: int, f: int) -> float:
    """Baruch et al.'s (2019) largest safe ``z`` for ``f`` attackers among ``n``:
    ``s = floor(n / 2 + 1) - f`` honest clients must sit beyond the attackers' value,
    ``z_max = Phi^-1((n - s) / n)`` (``s`` at least 1)."""
    s = max(math.floor(n / 2 + 1) - f, 1)
    return NormalDist().inv_cdf((n - s) / n)


def withheld(
    kind: str, updates: list[ClientUpdate], attacker_ids: set[int] | frozenset[int]
) -> list[ClientUpdate]:
    """The round's updates without the attackers' under ``absent`` (else all of them)."""
    if kind != ABSENT:
        return updates
    return [u for u in updates if u.client_id not in attacker_ids]


def omniscient(
    kind: str,
    current: Params,
    updates: list[ClientUpdate],
    attacker_ids: set[int] | frozenset[int],
    cfg: Any,
) -> list[ClientUpdate]:
    """The round's updates with each attacker's params replaced by what an omniscient attacker
    sends (``alie`` / ``ipm``), computed per tensor from the honest updates that carry it
    (every update's, when no honest one does). Extras, example counts and metrics are kept."""
    if kind not in OMNISCIENT or not attacker_ids:
        return updates
    n, f = len(updates), sum(u.client_id in attacker_ids for u in updates)
    z = (cfg.alie_z or alie_z_max(n, f)) if kind == "alie" else 0.0
    forged: dict[int, Params] = {u.client_id: {} for u in updates if u.client_id in attacker_ids}
    for key in sorted({k for u in updates for k in u.params}):
        have = [u for u in updates if key in u.params]
        honest = [u for u in have if u.client_id not in attacker_ids] or have
        g = np.asarray(current[key], np.float64)
        deltas = np.stack([np.asarray(u.params[key], np.float64) - g for u in honest])
        mean = deltas.mean(axis=0)
        # alie: per coordinate, the population std over the honest updates; ipm: -epsilon mean
        step = mean - z * deltas.std(axis=0) if kind == "alie" else -cfg.ipm_epsilon * mean
        new = g + step
        for u in have:
            if u.client_id in forged:
                forged[u.client_id][key] = new.astype(current[key].dtype)
    return [
        dataclasses.replace(u, params=forged[u.client_id]) if u.client_id in forged else u
        for u in updates
    ]


class LabelFlipped:
    """A shard seen with every label ``y`` replaced by ``num_classes - 1 - y``."""

    def __init__(self, shard: Any, num_classes: int) -> None:
        self.shard = shard
        self.labels = np.where(shard.labels >= 0, num_classes - 1 - shard.labels, shard.labels)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["shard"], name)

    def __len__(self) -> int:
        return len(self.shard)
