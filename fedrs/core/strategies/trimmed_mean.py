"""Coordinate-wise trimmed mean (Yin et al., 2018): per coordinate, the mean after dropping
``floor(trim_fraction x n)`` of the lowest and of the highest values."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedrs.core.strategies.base import ClientUpdate, Params, Strategy, check
from fedrs.core.strategies.robust import per_coordinate, trimmed_mean


@dataclass(frozen=True)
class TrimmedMeanOptions:
    trim_fraction: float = 0.1  # the share dropped at each end per coordinate

    def __post_init__(self) -> None:
        check(
            0 <= self.trim_fraction < 0.5,
            f"strategy.trim_fraction must be in [0, 0.5), got {self.trim_fraction}",
        )


class TrimmedMean(Strategy):
    name = "trimmed_mean"
    summary = "per coordinate, the mean without the trim_fraction lowest and highest values"
    Options = TrimmedMeanOptions

    def __init__(self, upload_keys: tuple[str, ...], fraction: float) -> None:
        super().__init__(upload_keys)
        self.fraction = fraction

    @classmethod
    def create(
        cls, *, options: Any, global_keys: tuple[str, ...], prompt_keys: tuple[str, ...]
    ) -> Strategy:
        return cls(global_keys, options.trim_fraction)

    def aggregate(self, current: Params, updates: list[ClientUpdate]) -> Params:
        return per_coordinate(
            current,
            updates,
            self.upload_keys,
            lambda rows: trimmed_mean(rows, math.floor(self.fraction * len(rows))),
        )
