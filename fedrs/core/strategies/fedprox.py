"""FedProx (Li et al., 2020): clients add (mu / 2) ||w - w_global||^2; the server is FedAvg."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedrs.core.strategies.base import Strategy, check
from fedrs.core.strategies.fedavg import FedAvg


@dataclass(frozen=True)
class FedProxOptions:
    mu: float = 0.01  # the proximal coefficient

    def __post_init__(self) -> None:
        check(self.mu >= 0, f"strategy.mu must be >= 0, got {self.mu}")


class FedProx(FedAvg):
    name = "fedprox"
    summary = "FedAvg on the server; clients add (mu/2)||w - w_global||^2 to their loss"
    Options = FedProxOptions

    def __init__(self, upload_keys: tuple[str, ...], mu: float) -> None:
        super().__init__(upload_keys)
        self.mu = mu

    @classmethod
    def create(
        cls, *, options: Any, global_keys: tuple[str, ...], prompt_keys: tuple[str, ...]
    ) -> Strategy:
        return cls(upload_keys=global_keys, mu=options.mu)

    def describe(self) -> str:
        return f"{super().describe()} (clients: proximal mu={self.mu:g})"

    def client_options(self) -> dict[str, Any]:
        return {"proximal_mu": self.mu}
