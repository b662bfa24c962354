"""Norm bounding (Sun et al., 2019): each client's update ``w - w_global`` (all its tensors
together) clipped to L2 norm ``clip_norm``, then FedAvg of the clipped updates.

``clip_norm = 0``: an adaptive bound from the round's own norms, their median. While fewer
than half the updates are an attacker's, the median is an honest client's norm (or lies
between two), so no attacker's update outweighs the typical honest one however it is scaled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrs.core.strategies.base import ClientUpdate, Params, Strategy, check
from fedrs.core.strategies.fedavg import average_keys
from fedrs.core.strategies.robust import clip_to_norm


def _delta(current: Params, update: ClientUpdate) -> np.ndarray:
    """``w - w_global`` over all the update's tensors, flattened (sorted by name)."""
    keys = sorted(update.params)
    if not keys:
        return np.zeros(0)
    return np.concatenate(
        [np.asarray(update.params[k], np.float64).ravel() - current[k].ravel() for k in keys]
    )


def update_norms(current: Params, updates: list[ClientUpdate]) -> np.ndarray:
    """Each update's L2 norm of its delta, all its tensors together."""
    return np.array([np.linalg.norm(_delta(current, u)) for u in updates])


def median_norm(current: Params, updates: list[ClientUpdate]) -> float:
    """The median L2 norm of the updates' deltas (the adaptive bound, ``clip_norm = 0``)."""
    return float(np.median(update_norms(current, updates)))


def clip_update(current: Params, update: ClientUpdate, c: float) -> ClientUpdate:
    """The update with its whole delta scaled to norm <= ``c`` (one factor for all tensors)."""
    keys = sorted(update.params)
    delta = _delta(current, update)
    clipped = clip_to_norm(delta, c)
    scale = (
        1.0
        if not len(delta) or not delta.any()
        else float(np.linalg.norm(clipped) / np.linalg.norm(delta))
    )
    params = {
        k: (current[k] + scale * (np.asarray(update.params[k], np.float64) - current[k])).astype(
            current[k].dtype
        )
        for k in keys
    }
    return ClientUpdate(
        update.client_id, params, update.num_examples, update.metrics, update.extras
    )


@dataclass(frozen=True)
class NormClipOptions:
    # each update's (w - w_global) clipped to this L2 norm; 0: adaptive, the median of the
    # round's update norms (an honest client's norm while attackers are under half)
    clip_norm: float = 1.0

    def __post_init__(self) -> None:
        check(
            self.clip_norm >= 0,
            f"strategy.clip_norm must be >= 0 (0: the median update norm), got {self.clip_norm}",
        )


class NormClip(Strategy):
    name = "normclip"
    summary = "each update clipped to L2 norm clip_norm (0: the median update norm), then FedAvg"
    Options = NormClipOptions

    def __init__(self, upload_keys: tuple[str, ...], c: float) -> None:
        super().__init__(upload_keys)
        self.c = c
        self.bound = c  # the last round's bound (adaptive: its median norm)

    @classmethod
    def create(
        cls, *, options: Any, global_keys: tuple[str, ...], prompt_keys: tuple[str, ...]
    ) -> Strategy:
        return cls(global_keys, options.clip_norm)

    def aggregate(self, current: Params, updates: list[ClientUpdate]) -> Params:
        self.bound = self.c if self.c > 0 else median_norm(current, updates)
        self.metrics = {"bound": self.bound}
        clipped = [clip_update(current, u, self.bound) for u in updates]
        return average_keys(current, clipped, self.upload_keys)
