"""Deterministic client sampling: a function of (seed, round) only, never of completion order.

The cost is O(k) in time and memory for k sampled out of N registered clients, whatever N
(100,000 or 10**12): numpy's ``Generator.choice(N, k, replace=False)`` uses Floyd's algorithm
(a hash set of k entries) unless N > 10,000 and k > N / 50, where it shuffles an arange(N) -
at most 50 k entries then. No permutation of all N clients is ever built.

Two samplers: a fixed-size cohort (``sample_usable``: ``clients_per_round`` distinct clients,
without replacement) and, under ``privacy.mode``, Poisson sampling (``poisson_usable``: every
client joins independently with probability q = clients_per_round / registered, the sampling
the DP accountant's subsampled-Gaussian analysis assumes). ``sample_round`` picks the one a
run config uses; the driver and ``--dry-run`` both call it.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

from fedrs.errors import ConfigError


def sample_clients(num_clients: int, per_round: int, seed: int, round_: int) -> list[int]:
    """``min(per_round, num_clients)`` distinct client ids in ``[0, num_clients)``, sorted,
    drawn from (seed, round)."""
    if num_clients < 1 or per_round < 1:
        raise ValueError("num_clients and per_round must be >= 1")
    rng = np.random.default_rng([seed, round_, 0x5EED])
    k = min(per_round, num_clients)
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))


def sample_usable(
    num_clients: int,
    per_round: int,
    seed: int,
    round_: int,
    partitions: int,
    excluded: frozenset[int] = frozenset(),
) -> list[int]:
    """``sample_clients`` over the registered clients whose partition (c mod ``partitions``) is
    not ``excluded``: the usable ones are numbered in client order and sampled by number, so
    with nothing excluded the draw is ``sample_clients``'s exactly. O(partitions + k)."""
    if not excluded:
        return sample_clients(num_clients, per_round, seed, round_)
    keep = [p for p in range(partitions) if p not in excluded]
    full, rest = divmod(num_clients, partitions)
    tail = [p for p in keep if p < rest]
    usable = full * len(keep) + len(tail)
    picks = sample_clients(usable, per_round, seed, round_)
    out = []
    for i in picks:
        if i < full * len(keep):
            out.append((i // len(keep)) * partitions + keep[i % len(keep)])
        else:
            out.append(full * partitions + tail[i - full * len(keep)])
    return sorted(out)


def inclusion_rate(per_round: int, registered: int) -> float:
    """q: the probability that a registered client joins a round under Poisson sampling,
    ``clients_per_round / registered`` (at most 1): the sampling rate the accountant uses."""
    return min(1.0, per_round / registered)


def usable_count(num_clients: int, partitions: int, excluded: frozenset[int] = frozenset()) -> int:
    """How many of the registered clients train on a partition that is not ``excluded``."""
    full, rest = divmod(num_clients, partitions)
    keep = [p for p in range(partitions) if p not in excluded]
    return full * len(keep) + sum(1 for p in keep if p < rest)


def poisson_usable(
    num_clients: int,
    rate: float,
    seed: int,
    round_: int,
    partitions: int,
    excluded: frozenset[int] = frozenset(),
) -> list[int]:
    """Poisson sampling: each usable registered client joins independently with probability
    ``rate``, drawn from (seed, round). Equivalently (and in O(k)): a cohort size k ~
    Binomial(usable, rate), then a uniform k-subset (``sample_usable``'s draw of that size).
    The cohort varies in size and may be empty."""
    usable = usable_count(num_clients, partitions, excluded)
    k = int(np.random.default_rng([seed, round_, 0x9015]).binomial(usable, rate))
    if k == 0:
        return []
    return sample_usable(num_clients, k, seed, round_, partitions, excluded)


def sample_round(
    cfg: Any,
    registered: int,
    partitions: int,
    excluded: frozenset[int] | Collection[int],
    round_: int,
) -> list[int]:
    """The clients of ``round_`` for run config ``cfg`` (the driver's and ``--dry-run``'s
    draw): Poisson-sampled at ``inclusion_rate`` under ``privacy.mode`` central or local (what
    the accountant's subsampled Gaussian assumes), else ``clients_per_round`` of them."""
    fed = cfg.federation
    excluded = frozenset(excluded)
    if cfg.privacy.mode != "none":
        rate = inclusion_rate(fed.clients_per_round, registered)
        return poisson_usable(registered, rate, fed.seed, round_, partitions, excluded)
    return sample_usable(registered, fed.clients_per_round, fed.seed, round_, partitions, excluded)


def registered_clients(cfg: Any, partitions: int) -> int:
    """How many clients are registered: ``federation.num_clients``, or one per data partition
    when it is 0. Fewer than the partitions would leave data no client ever trains on."""
    n = cfg.federation.num_clients or partitions
    if n < partitions:
        raise ConfigError(
            f"federation.num_clients={n} is below the dataset's {partitions} partitions: use 0 "
            f"(one client per partition) or at least {partitions}"
        )
    return n


def sample_cohort(
    cfg: Any,
    registered: int,
    partitions: int,
    excluded: frozenset[int] | Collection[int],
    round_: int,
    groups: list[list[int]] | None = None,
) -> list[int]:
    """``sample_round``, or with partner ``groups`` (organisations holding different
    modalities of one region's pixels, which only train together): the regions are sampled
    as ``sample_round`` samples clients (``clients_per_round`` regions; a region with an
    excluded organisation is left out) and every organisation of each joins."""
    if not groups:
        return sample_round(cfg, registered, partitions, excluded, round_)
    bad = frozenset(r for r, g in enumerate(groups) if any(c in excluded for c in g))
    regions = sample_round(cfg, len(groups), len(groups), bad, round_)
    return sorted(c for r in regions for c in groups[r])
