"""Deterministic client sampling: a function of (seed, round) only, never of completion order.

The cost is O(k) in time and memory for k sampled out of N registered clients, whatever N
(100,000 or 10**12): numpy's ``Generator.choice(N, k, replace=False)`` uses Floyd's algorithm
(a hash set of k entries) unless N > 10,000 and k > N / 50, where it shuffles an arange(N) -
at most 50 k entries then. No permutation of all N clients is ever built.
"""

from __future__ import annotations

import numpy as np


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
