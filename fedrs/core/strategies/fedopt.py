"""Server optimisers on the pseudo-gradient (Reddi et al., 2021, "Adaptive Federated
Optimization"; Hsu et al., 2019 for server momentum): the shared machinery of ``fedavgm``,
``fedadam``, ``fedyogi`` and ``fedadagrad``.

Each round, per tensor: ``delta = FedAvg(clients) - x`` (the example-weighted mean of the
clients that sent it, minus the current global value), then the optimiser's step on ``delta``
with its moments kept per tensor across rounds (``state_dict``: checkpointed, resumed
exactly). The step rules are small pure functions (``fedavgm_step``, ``adaptive_step``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedrs.core.strategies.base import ClientUpdate, Params, Strategy, check
from fedrs.core.strategies.fedavg import average_keys

SEP = "/"  # state names: "<moment>/<tensor>"


def fedavgm_step(
    x: np.ndarray, delta: np.ndarray, v: np.ndarray | None, lr: float, momentum: float
) -> tuple[np.ndarray, np.ndarray]:
    """FedAvgM: ``v = momentum v + delta``; ``x + lr v`` (returns new x, v)."""
    v = delta if v is None else momentum * v + delta
    return x + lr * v, v


def adaptive_step(
    kind: str,
    x: np.ndarray,
    delta: np.ndarray,
    m: np.ndarray | None,
    v: np.ndarray | None,
    lr: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FedAdagrad / FedAdam / FedYogi (Reddi et al., Algorithm 2): ``m = b1 m + (1 - b1)
    delta``; ``v`` = Adagrad ``v + delta^2``, Adam ``b2 v + (1 - b2) delta^2``, Yogi
    ``v - (1 - b2) delta^2 sign(v - delta^2)``; ``x + lr m / (sqrt(v) + tau)``. Moments start
    at 0 and ``v`` at ``tau^2`` (the paper's initialisation). Returns new x, m, v."""
    m = np.zeros_like(delta) if m is None else m
    v = np.full_like(delta, tau * tau) if v is None else v
    m = beta1 * m + (1 - beta1) * delta
    d2 = delta * delta
    if kind == "adagrad":
        v = v + d2
    elif kind == "adam":
        v = beta2 * v + (1 - beta2) * d2
    elif kind == "yogi":
        v = v - (1 - beta2) * d2 * np.sign(v - d2)
    else:
        raise ValueError(f"unknown adaptive optimiser {kind!r}")
    return x + lr * m / (np.sqrt(v) + tau), m, v


@dataclass(frozen=True)
class ServerOptions:
    server_lr: float = 0.0  # eta; 0: the strategy's own (fedavgm 1.0, the adaptive ones 0.1)

    def __post_init__(self) -> None:
        check(self.server_lr >= 0, f"strategy.server_lr must be >= 0, got {self.server_lr}")


def _unit(key: str, value: float) -> None:
    check(0 <= value < 1, f"strategy.{key} must be in [0, 1), got {value}")


@dataclass(frozen=True)
class AdaptiveOptions(ServerOptions):
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3  # adaptivity: the denominator's floor

    def __post_init__(self) -> None:
        super().__post_init__()
        _unit("beta1", self.beta1)
        _unit("beta2", self.beta2)
        check(self.tau > 0, f"strategy.tau must be > 0, got {self.tau}")


@dataclass(frozen=True)
class MomentumOptions(ServerOptions):
    server_momentum: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        _unit("server_momentum", self.server_momentum)


class ServerOptimizer(Strategy):
    """FedAvg's mean as a pseudo-gradient, then a server step; moments per tensor."""

    moments: ClassVar[tuple[str, ...]] = ()
    Options = ServerOptions
    averages = True
    default_lr: ClassVar[float] = 1.0  # strategy.server_lr when it is not set

    def __init__(self, upload_keys: tuple[str, ...], cfg: Any) -> None:
        super().__init__(upload_keys)
        self.cfg = cfg
        self.state: dict[str, dict[str, np.ndarray]] = {m: {} for m in self.moments}

    @classmethod
    def create(
        cls, *, options: Any, global_keys: tuple[str, ...], prompt_keys: tuple[str, ...]
    ) -> Strategy:
        return cls(upload_keys=global_keys, cfg=options)

    @property
    def lr(self) -> float:
        return self.cfg.server_lr or self.default_lr

    def step(self, key: str, x: np.ndarray, delta: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def aggregate(self, current: Params, updates: list[ClientUpdate]) -> Params:
        mean = average_keys(current, updates, self.upload_keys)
        out = dict(current)
        for key in self.upload_keys:
            if not any(key in u.params for u in updates):
                continue  # nobody sent it: no step, moments unchanged
            x = current[key].astype(np.float64)
            out[key] = self.step(key, x, mean[key].astype(np.float64) - x).astype(
                current[key].dtype
            )
        return out

    def state_dict(self) -> Params:
        return {f"{m}{SEP}{k}": v for m, d in self.state.items() for k, v in d.items()}

    def load_state_dict(self, state: Params) -> None:
        self.state = {m: {} for m in self.moments}
        for name, value in state.items():
            moment, _, key = name.partition(SEP)
            if moment in self.state:
                self.state[moment][key] = np.asarray(value, dtype=np.float64)


class Adaptive(ServerOptimizer):
    kind: ClassVar[str]
    moments = ("m", "v")
    Options = AdaptiveOptions
    default_lr = 0.1

    def step(self, key: str, x: np.ndarray, delta: np.ndarray) -> np.ndarray:
        c = self.cfg
        x, m, v = adaptive_step(
            self.kind,
            x,
            delta,
            self.state["m"].get(key),
            self.state["v"].get(key),
            self.lr,
            c.beta1,
            c.beta2,
            c.tau,
        )
        self.state["m"][key], self.state["v"][key] = m, v
        return x

    def describe(self) -> str:
        c = self.cfg
        return (
            f"{super().describe()} (server lr {self.lr:g}, betas {c.beta1:g}/{c.beta2:g}, "
            f"tau {c.tau:g})"
        )
