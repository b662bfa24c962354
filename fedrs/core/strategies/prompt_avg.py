"""Prompt averaging: only the named shared prompt tensors travel and are averaged.

P_s <- sum_k (n_k / n) P_s^k over the clients of the round (FedRSCLIP's server step; PromptFL's
when its one context is the shared prompt). Every other trainable tensor of the method stays on
its client, in the client-state store.
"""

from __future__ import annotations

from typing import Any

from fedrs.core.strategies.base import ClientUpdate, Params, Strategy
from fedrs.core.strategies.fedavg import average_keys
from fedrs.errors import ConfigError


class PromptAveraging(Strategy):
    name = "prompt_avg"
    summary = "only the method's shared prompt tensors travel and are averaged"
    averages = True

    @classmethod
    def create(
        cls, *, options: Any, global_keys: tuple[str, ...], prompt_keys: tuple[str, ...]
    ) -> Strategy:
        if not prompt_keys:
            raise ConfigError("strategy prompt_avg needs a method with shared prompt tensors")
        return cls(upload_keys=prompt_keys)

    def aggregate(self, current: Params, updates: list[ClientUpdate]) -> Params:
        return average_keys(current, updates, self.upload_keys)
