"""Bulyan (El Mhamdi et al., 2018): Krum selection of n - 2f updates, then per coordinate the
mean of the values closest to the median. Needs n >= 4f + 3 (a one-line error otherwise)."""

from __future__ import annotations

from typing import Any

from fedrs.core.strategies.base import ClientUpdate, Params, Strategy
from fedrs.core.strategies.robust import ByzantineOptions, bulyan, check_bulyan, flat_updates


class Bulyan(Strategy):
    name = "bulyan"
    summary = "Krum-selected n - 2f updates, then a median-centred trimmed mean (n >= 4f + 3)"
    Options = ByzantineOptions

    def __init__(self, upload_keys: tuple[str, ...], f: int) -> None:
        super().__init__(upload_keys)
        self.f = f

    @classmethod
    def create(
        cls, *, options: Any, global_keys: tuple[str, ...], prompt_keys: tuple[str, ...]
    ) -> Strategy:
        return cls(global_keys, options.byzantine)

    def min_clients(self) -> int:
        return 4 * self.f + 3

    def aggregate(self, current: Params, updates: list[ClientUpdate]) -> Params:
        check_bulyan(len(updates), self.f)
        vectors, ordered = flat_updates(updates, self.upload_keys)
        merged = bulyan(vectors, self.f)
        out, start = dict(current), 0
        for key in self.upload_keys:
            if all(key in u.params for u in ordered):
                size = current[key].size
                out[key] = (
                    merged[start : start + size]
                    .reshape(current[key].shape)
                    .astype(current[key].dtype)
                )
                start += size
        return out
