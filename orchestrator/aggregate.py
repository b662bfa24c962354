"""What the server does with a round's accepted updates: the quorum rule, then the strategy
and the method's server step (with the omniscient attacks and central DP where configured).
Pure functions of their arguments; the driver calls them once per round."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrs.core.attacks import OMNISCIENT, omniscient, withheld
from fedrs.core.config import RunConfig
from fedrs.core.privacy import central_estimate
from fedrs.core.strategies import ClientUpdate, Strategy
from fedrs.errors import FedrsError


class RoundFailedError(FedrsError):
    """Too few clients reported in a round."""


def check_quorum(
    cfg: RunConfig,
    strategy: Strategy,
    rnd: int,
    sampled: int,
    ok: int,
    failed: dict[int, str],
    unavailable: int = 0,
) -> None:
    """RoundFailedError when fewer updates were accepted than ``federation.min_clients`` or
    the strategy needs (under privacy.mode Poisson cohorts vary: only faults fail). The
    ``unavailable`` clients the virtual clock dropped (offline, gone offline, late,
    over-selected: the simulated system, not a fault) do not count: a round whose every
    sampled client was unavailable is empty, and the global model stays as it was."""
    fed = cfg.federation
    need = max(fed.min_clients, strategy.min_clients())
    if cfg.privacy.mode != "none":
        need = min(need, sampled)
    need = min(need, sampled - unavailable)
    if ok < need:
        first = next(iter(failed.items()), (None, "no client sampled"))
        raise RoundFailedError(
            f"round {rnd}: {ok} of {sampled} clients reported, fewer than "
            f"federation.min_clients={fed.min_clients} or the "
            f"{strategy.min_clients()} {strategy.name} needs (client {first[0]}: {first[1]})"
        )


def combine(
    cfg: RunConfig,
    strategy: Strategy,
    server: Any,
    params: dict[str, np.ndarray],
    updates: list[ClientUpdate],
    liars: set[int],
    rnd: int,
    cohort: float,
    mean: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], list[ClientUpdate]]:
    """The new global tensors (strategy, then the method's ``server.update``) and the updates
    they came from (omniscient attacks replace the liars' with crafted ones). ``cohort``: the
    expected number of clients per round, central DP's denominator. ``mean``: the round's
    mean computed elsewhere (a secure sum), the updates then carrying no tensors."""
    if cfg.attack.kind in OMNISCIENT:  # alie / ipm: crafted from the honest updates
        updates = omniscient(cfg.attack.kind, params, updates, liars, cfg.attack)
    updates = withheld(cfg.attack.kind, updates, liars)  # absent: a perfect defence's input
    if cfg.privacy.mode == "central":  # DP-FedAvg's noised mean, as the round's mean
        mean = central_estimate(
            params, updates, strategy.upload_keys, cfg.privacy, cohort, cfg.federation.seed, rnd
        )
    if mean is not None:  # only mean-based strategies get here (``preflight``)
        new = strategy.aggregate(params, [ClientUpdate(-1, mean, 1)])
        return server.update(rnd, new, []), updates  # no individual update here
    if updates:
        return server.update(rnd, strategy.aggregate(params, updates), updates), updates
    return dict(params), updates  # an empty Poisson cohort (local DP): nothing moves
