"""Coordinate-wise median (Yin et al., 2018): robust to a minority of arbitrary updates."""

from __future__ import annotations

from fedrs.core.strategies.base import ClientUpdate, Params, Strategy
from fedrs.core.strategies.robust import coordinate_median, per_coordinate


class Median(Strategy):
    name = "median"
    summary = "per-coordinate median of the clients' tensors (each client one vote)"

    def aggregate(self, current: Params, updates: list[ClientUpdate]) -> Params:
        return per_coordinate(current, updates, self.upload_keys, coordinate_median)
