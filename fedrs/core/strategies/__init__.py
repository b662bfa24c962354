"""Aggregation strategies, one module per algorithm, looked up by ``strategy.name``."""

from __future__ import annotations

from typing import Any

from fedrs.core.strategies.base import ClientUpdate, Params, Strategy
from fedrs.core.strategies.bulyan import Bulyan
from fedrs.core.strategies.fedadagrad import FedAdagrad
from fedrs.core.strategies.fedadam import FedAdam
from fedrs.core.strategies.fedavg import FedAvg, weighted_average
from fedrs.core.strategies.fedavgm import FedAvgM
from fedrs.core.strategies.fedprox import FedProx
from fedrs.core.strategies.fedyogi import FedYogi
from fedrs.core.strategies.krum import Krum
from fedrs.core.strategies.median import Median
from fedrs.core.strategies.normclip import NormClip
from fedrs.core.strategies.normfilter import NormFilter
from fedrs.core.strategies.prompt_avg import PromptAveraging
from fedrs.core.strategies.trimmed_mean import TrimmedMean
from fedrs.errors import ConfigError

STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s
    for s in (
        FedAvg,
        FedProx,
        PromptAveraging,
        FedAvgM,
        FedAdam,
        FedYogi,
        FedAdagrad,
        Median,
        TrimmedMean,
        Krum,
        Bulyan,
        NormClip,
        NormFilter,
    )
}


def make_strategy(
    name: str,
    *,
    global_keys: tuple[str, ...],
    prompt_keys: tuple[str, ...],
    mu: float | None = None,
    options: Any = None,
) -> Strategy:
    """Build the strategy ``name`` for a method that shares ``global_keys``; ``options`` is
    the run's ``strategy`` section (default: its defaults, with ``mu`` when given), of which
    the strategy takes its own ``Options``."""
    from fedrs.core.config import StrategyConfig

    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy.name {name!r}; choose from {sorted(STRATEGIES)}")
    if options is None:
        options = StrategyConfig(name=name, **({} if mu is None else {"mu": mu}))
    cls = STRATEGIES[name]
    return cls.create(
        options=cls.options_from(options), global_keys=global_keys, prompt_keys=prompt_keys
    )


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
