"""FedAvgM (Hsu et al., 2019): FedAvg's update as a pseudo-gradient with server momentum."""

from __future__ import annotations

import numpy as np

from fedrs.core.strategies.fedopt import MomentumOptions, ServerOptimizer, fedavgm_step


class FedAvgM(ServerOptimizer):
    name = "fedavgm"
    summary = "FedAvg with server momentum: v = beta v + delta, x += server_lr v"
    moments = ("v",)
    Options = MomentumOptions

    def step(self, key: str, x: np.ndarray, delta: np.ndarray) -> np.ndarray:
        c = self.cfg
        x, self.state["v"][key] = fedavgm_step(
            x, delta, self.state["v"].get(key), self.lr, c.server_momentum
        )
        return x
