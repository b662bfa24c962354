"""Byzantine-robust aggregation as small pure functions on stacked client tensors.

Every client counts once (no example weighting: a weight is something an attacker could
inflate). ``vectors`` are ``(n, d)``: one flattened update per client, in client-id order.

* ``coordinate_median``: the per-coordinate median (Yin et al., 2018);
* ``trimmed_mean``: per coordinate, the mean after dropping the ``k`` lowest and ``k`` highest
  values (Yin et al., 2018);
* ``krum_scores`` / ``krum_select``: each update's summed squared distance to its
  ``n - f - 2`` nearest others; the ``m`` lowest-scored (Blanchard et al., 2017; m > 1:
  Multi-Krum);
* ``bulyan``: ``theta = n - 2f`` updates chosen by Krum one at a time, then per coordinate the
  mean of the ``theta - 2f`` values closest to the median (El Mhamdi et al., 2018); needs
  ``n >= 4f + 3``;
* ``clip_to_norm``: an update scaled down to L2 norm ``c`` when it is longer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrs.core.strategies.base import ClientUpdate, Params, check
from fedrs.errors import ConfigError


@dataclass(frozen=True)
class ByzantineOptions:
    byzantine: int = 0  # f, the attackers krum / bulyan tolerate

    def __post_init__(self) -> None:
        check(self.byzantine >= 0, f"strategy.byzantine must be >= 0, got {self.byzantine}")


def coordinate_median(vectors: np.ndarray) -> np.ndarray:
    return np.median(vectors, axis=0)


def trimmed_mean(vectors: np.ndarray, k: int) -> np.ndarray:
    """Mean over clients after dropping the ``k`` smallest and ``k`` largest per coordinate."""
    n = len(vectors)
    if 2 * k >= n:
        raise ValueError(f"trimming {k} from each end leaves nothing of {n} updates")
    return np.sort(vectors, axis=0)[k : n - k].mean(axis=0)


def pairwise_sq_distances(vectors: np.ndarray) -> np.ndarray:
    x = vectors.astype(np.float64)
    sq = (x * x).sum(1)
    return np.maximum(sq[:, None] + sq[None] - 2 * x @ x.T, 0.0)


def krum_scores(vectors: np.ndarray, f: int) -> np.ndarray:
    """Per update, the sum of squared distances to its ``n - f - 2`` nearest other updates."""
    n = len(vectors)
    k = n - f - 2
    if k < 1:
        raise ValueError(f"Krum needs n > f + 2 (n = {n}, f = {f})")
    d = pairwise_sq_distances(vectors)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :k].sum(1)


def krum_select(vectors: np.ndarray, f: int, m: int = 1) -> np.ndarray:
    """Indices of the ``m`` lowest Krum scores (ties: the lower index first)."""
    return np.argsort(krum_scores(vectors, f), kind="stable")[:m]


def bulyan(vectors: np.ndarray, f: int) -> np.ndarray:
    """Bulyan's aggregate of ``n >= 4f + 3`` updates."""
    n = len(vectors)
    check_bulyan(n, f)
    remaining = list(range(n))
    chosen: list[int] = []
    for _ in range(n - 2 * f):
        # too few left to score (n - f - 2 < 1): take them in order
        best = int(krum_select(vectors[remaining], f, 1)[0]) if len(remaining) > f + 2 else 0
        chosen.append(remaining.pop(best))
    sel = vectors[chosen]
    beta = len(chosen) - 2 * f
    med = np.median(sel, axis=0)
    closest = np.argsort(np.abs(sel - med), axis=0, kind="stable")[:beta]
    return np.take_along_axis(sel, closest, axis=0).mean(axis=0)


def check_bulyan(n: int, f: int) -> None:
    if n < 4 * f + 3:
        raise ConfigError(
            f"bulyan with strategy.byzantine={f} needs at least 4f + 3 = {4 * f + 3} updates "
            f"per round, got {n}: sample more clients or lower strategy.byzantine"
        )


def clip_to_norm(delta: np.ndarray, c: float) -> np.ndarray:
    norm = float(np.linalg.norm(delta))
    return delta if norm <= c else delta * (c / norm)


# ---------------------------------------------------------------------------------------------
# Applying them to the tensors of a round


def stacked(updates: list[ClientUpdate], key: str) -> tuple[np.ndarray, list[int]]:
    """``(n, size)`` float64 rows of ``key`` from the updates that carry it (client order)."""
    have = sorted((u for u in updates if key in u.params), key=lambda u: u.client_id)
    rows = [np.asarray(u.params[key], dtype=np.float64).ravel() for u in have]
    return (np.stack(rows) if rows else np.zeros((0, 0))), [u.client_id for u in have]


def per_coordinate(
    current: Params, updates: list[ClientUpdate], keys: tuple[str, ...], rule: object
) -> Params:
    """``current`` with each key replaced by ``rule(stacked rows)`` over the updates that
    carry it (a key nobody sent keeps its value)."""
    out = dict(current)
    for key in keys:
        rows, _ = stacked(updates, key)
        if len(rows):
            out[key] = rule(rows).reshape(current[key].shape).astype(current[key].dtype)  # type: ignore[operator]
    return out


def flat_updates(updates: list[ClientUpdate], keys: tuple[str, ...]) -> tuple[np.ndarray, list]:
    """One row per update: the concatenation of the keys every update carries (client
    order), for distance-based rules (Krum, Bulyan)."""
    ordered = sorted(updates, key=lambda u: u.client_id)
    common = [k for k in keys if all(k in u.params for u in ordered)]
    rows = [
        np.concatenate([np.asarray(u.params[k], np.float64).ravel() for k in common])
        if common
        else np.zeros(0)
        for u in ordered
    ]
    return np.stack(rows), ordered
