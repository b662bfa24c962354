"""The strategy interface: which tensors clients upload, what they are told, how to combine."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from fedrs.errors import ConfigError

Params = dict[str, np.ndarray]


def check(cond: bool, msg: str) -> None:
    """An option check: ConfigError(msg) unless ``cond``."""
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class NoOptions:
    """A strategy that reads no ``strategy.*`` key."""


@dataclass(frozen=True)
class ClientUpdate:
    """One validated client result as the server sees it."""

    client_id: int
    params: Params
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    extras: Params = field(default_factory=dict)  # method payloads beyond params (CLIP2FL)


class Strategy(ABC):
    name: ClassVar[str]
    summary: ClassVar[str] = ""  # one line for `fedrs strategies`
    # its strategy.* keys: a frozen dataclass declaring each with its default and its check
    Options: ClassVar[type] = NoOptions
    # True: the server step of a mean of the updates, so ``aggregate(current, [u])`` with one
    # update of weight 1 takes ``u.params`` as the round's mean (central DP hands it DP-FedAvg's
    # noised mean that way, ``fedrs/core/privacy.py``); robust aggregators are not
    averages: ClassVar[bool] = False

    def __init__(self, upload_keys: tuple[str, ...]) -> None:
        self.upload_keys = upload_keys
        # the last aggregate's diagnostics (a bound, updates left out), each round's record
        # keeps them as ``strategy_<name>``
        self.metrics: dict[str, float] = {}

    @classmethod
    def options_from(cls, section: Any) -> Any:
        """This strategy's ``Options`` from the run's ``strategy`` section (its own keys)."""
        return cls.Options(**{f.name: getattr(section, f.name) for f in fields(cls.Options)})

    @classmethod
    def create(
        cls, *, options: Any, global_keys: tuple[str, ...], prompt_keys: tuple[str, ...]
    ) -> Strategy:
        """The strategy for a method sharing ``global_keys``, given its ``Options``."""
        return cls(upload_keys=global_keys)

    def state_dict(self) -> Params:
        """What the strategy keeps across rounds (a server optimiser's moments), as arrays:
        checkpointed every round, restored by ``--resume``."""
        return {}

    def load_state_dict(self, state: Params) -> None:  # noqa: B027 (optional hook)
        """Restore ``state_dict()``."""

    def min_clients(self) -> int:
        """The fewest valid updates the strategy can combine (Bulyan: 4f + 3)."""
        return 1

    def describe(self) -> str:
        """The strategy in effect, in words: its name and the tensors it combines."""
        keys = list(self.upload_keys)
        names = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        return f"{self.name} of {names or 'nothing'}"

    def client_options(self) -> dict[str, Any]:
        """Extra local-training options the strategy needs on clients (FedProx: mu)."""
        return {}

    @abstractmethod
    def aggregate(self, current: Params, updates: list[ClientUpdate]) -> Params:
        """New global parameters from the current ones and this round's valid updates."""
