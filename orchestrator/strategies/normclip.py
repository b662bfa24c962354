"""Norm bounding (Sun et al., 2019): each client's update ``w - w_global`` (all its tensors
together) clipped to L2 norm ``clip_norm``, then FedAvg of the clipped updates."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrs.orchestrator.strategies.base import ClientUpdate, Params, Strategy
from fedrs.orchestrator.strategies.fedavg import average_keys
from fedrs.orchestrator.strategies.robust import clip_to_norm


def clip_update(current: Params, update: ClientUpdate, c: float) -> ClientUpdate:
    """The update with its whole delta scaled to norm <= ``c`` (one factor for all tensors)."""
    keys = sorted(update.params)
    delta = (
        np.concatenate(
            [np.asarray(update.params[k], np.float64).ravel() - current[k].ravel() for k in keys]
        )
        if keys
        else np.zeros(0)
    )
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


class NormClip(Strategy):
    name = "normclip"
    summary = "each client's update clipped to L2 norm clip_norm, then FedAvg"
    options = ("clip_norm",)

    def __init__(self, upload_keys: tuple[str, ...], c: float) -> None:
        super().__init__(upload_keys)
        self.c = c

    @classmethod
    def create(
        cls, *, options: Any, global_keys: tuple[str, ...], prompt_keys: tuple[str, ...]
    ) -> Strategy:
        return cls(global_keys, options.clip_norm)

    def aggregate(self, current: Params, updates: list[ClientUpdate]) -> Params:
        clipped = [clip_update(current, u, self.c) for u in updates]
        return average_keys(current, clipped, self.upload_keys)
