"""Norm filtering: the updates whose ``w - w_global`` is longer than ``filter_factor`` x the
round's median update norm are left out; the rest are averaged as FedAvg averages them
(example-weighted).

Our reading of norm bounding (Sun et al., 2019) that removes instead of clipping: an update
scaled up (boosted sign flip, IPM's -epsilon x mean, a scaled model replacement) is dropped
whole, so it neither pulls the mean nor, as a clipped reversed update still does, subtracts an
honest-sized step; honest updates keep their example weights, which matters on non-IID clients
where distance-based rules (Krum) drop the clients whose data differs. While attackers are
under half, the median is an honest norm. Its blind spot: attacks within the honest norms
(ALIE, an unboosted sign flip). The last round's bound and how many it left out are the
strategy's ``metrics`` (``strategy_bound``, ``strategy_excluded`` in each round's record).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrs.core.strategies.base import ClientUpdate, Params, Strategy, check
from fedrs.core.strategies.fedavg import average_keys
from fedrs.core.strategies.normclip import update_norms


@dataclass(frozen=True)
class NormFilterOptions:
    # updates longer than this x the round's median update norm are left out
    filter_factor: float = 3.0

    def __post_init__(self) -> None:
        check(
            self.filter_factor >= 1,
            f"strategy.filter_factor must be >= 1 (x the median update norm), "
            f"got {self.filter_factor}",
        )


class NormFilter(Strategy):
    name = "normfilter"
    summary = "updates longer than filter_factor x the median update norm left out, then FedAvg"
    Options = NormFilterOptions

    def __init__(self, upload_keys: tuple[str, ...], factor: float) -> None:
        super().__init__(upload_keys)
        self.factor = factor

    @classmethod
    def create(
        cls, *, options: Any, global_keys: tuple[str, ...], prompt_keys: tuple[str, ...]
    ) -> Strategy:
        return cls(global_keys, options.filter_factor)

    def aggregate(self, current: Params, updates: list[ClientUpdate]) -> Params:
        norms = update_norms(current, updates)
        bound = self.factor * float(np.median(norms))  # >= the median: never empty
        kept = np.flatnonzero(norms <= bound)
        self.metrics = {"bound": bound, "excluded": float(len(updates) - len(kept))}
        return average_keys(current, [updates[i] for i in kept], self.upload_keys)
