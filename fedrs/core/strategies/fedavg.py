"""FedAvg (McMahan et al., 2017): average of client parameters weighted by example counts."""

from __future__ import annotations

import numpy as np

from fedrs.core.strategies.base import ClientUpdate, Params, Strategy


def weighted_average(tensors: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """sum_k w_k x_k / sum_k w_k, accumulated in float64 and cast back to the input dtype."""
    if not tensors or len(tensors) != len(weights):
        raise ValueError("weighted_average needs one weight per tensor and at least one tensor")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    acc = np.zeros(tensors[0].shape, dtype=np.float64)
    for x, w in zip(tensors, weights, strict=True):
        acc += np.asarray(x, dtype=np.float64) * (w / total)
    return acc.astype(tensors[0].dtype)


def average_keys(current: Params, updates: list[ClientUpdate], keys: tuple[str, ...]) -> Params:
    """``current`` with each of ``keys`` replaced by the example-weighted mean of the updates
    that carry it (clients of different groups may upload different tensors); a key no update
    carries keeps its current value.

    Updates are combined in client-id order, so the result does not depend on which client
    finished first.
    """
    ordered = sorted(updates, key=lambda u: u.client_id)
    out = dict(current)
    for key in keys:
        have = [u for u in ordered if key in u.params]
        if have:
            out[key] = weighted_average(
                [u.params[key] for u in have], [float(u.num_examples) for u in have]
            )
    return out


class FedAvg(Strategy):
    name = "fedavg"
    summary = "average of every global tensor, weighted by the clients' examples"
    averages = True

    def aggregate(self, current: Params, updates: list[ClientUpdate]) -> Params:
        return average_keys(current, updates, self.upload_keys)
