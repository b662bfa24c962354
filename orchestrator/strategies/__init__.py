"""Aggregation strategies, one module per algorithm, looked up by ``strategy.name``."""

from __future__ import annotations

from fedrs.errors import ConfigError
from fedrs.orchestrator.strategies.base import ClientUpdate, Params, Strategy
from fedrs.orchestrator.strategies.fedavg import FedAvg, weighted_average
from fedrs.orchestrator.strategies.fedprox import FedProx
from fedrs.orchestrator.strategies.prompt_avg import PromptAveraging

STRATEGIES: dict[str, type[Strategy]] = {
    FedAvg.name: FedAvg,
    FedProx.name: FedProx,
    PromptAveraging.name: PromptAveraging,
}


def make_strategy(
    name: str, *, mu: float, global_keys: tuple[str, ...], prompt_keys: tuple[str, ...]
) -> Strategy:
    """Build the strategy ``name`` for a method that shares ``global_keys``."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy.name {name!r}; choose from {sorted(STRATEGIES)}")
    return STRATEGIES[name].create(mu=mu, global_keys=global_keys, prompt_keys=prompt_keys)


__all__ = [
    "STRATEGIES",
    "ClientUpdate",
    "FedAvg",
    "FedProx",
    "Params",
    "PromptAveraging",
    "Strategy",
    "make_strategy",
    "weighted_average",
]
