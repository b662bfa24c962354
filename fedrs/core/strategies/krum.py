"""Krum and Multi-Krum (Blanchard et al., 2017): the update(s) closest to their
``n - f - 2`` nearest neighbours; Multi-Krum averages the ``multi_krum`` best."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedrs.core.strategies.base import ClientUpdate, Params, Strategy, check
from fedrs.core.strategies.fedavg import average_keys
from fedrs.core.strategies.robust import ByzantineOptions, flat_updates, krum_select


@dataclass(frozen=True)
class KrumOptions(ByzantineOptions):
    multi_krum: int = 1  # average the m best-scored updates (1: Krum)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.multi_krum >= 1, f"strategy.multi_krum must be >= 1, got {self.multi_krum}")


class Krum(Strategy):
    name = "krum"
    summary = "the update(s) with the lowest Krum score (multi_krum > 1: their mean)"
    Options = KrumOptions

    def __init__(self, upload_keys: tuple[str, ...], f: int, m: int) -> None:
        super().__init__(upload_keys)
        self.f, self.m = f, m

    @classmethod
    def create(
        cls, *, options: Any, global_keys: tuple[str, ...], prompt_keys: tuple[str, ...]
    ) -> Strategy:
        return cls(global_keys, options.byzantine, options.multi_krum)

    def min_clients(self) -> int:
        return self.f + 3

    def aggregate(self, current: Params, updates: list[ClientUpdate]) -> Params:
        vectors, ordered = flat_updates(updates, self.upload_keys)
        picked = [ordered[i] for i in krum_select(vectors, self.f, min(self.m, len(ordered)))]
        # the chosen clients count equally: Krum discards weights an attacker could inflate
        equal = [ClientUpdate(u.client_id, u.params, 1) for u in picked]
        return average_keys(current, equal, self.upload_keys)
