"""Client-level differential privacy (``privacy.*``), after DP-FedAvg (McMahan et al., 2018).

Sampling: under ``privacy.mode`` each registered client joins a round independently with
probability ``q = clients_per_round / registered`` (Poisson sampling,
``fedrs/core/sampling.py``), so rounds vary in size and may be empty. That is the sampling
the accountant's subsampled-Gaussian analysis (Opacus: RDP, or PRV) assumes; neighbouring
datasets differ by one client added or removed.

* ``central``: the server clips each client's update ``w_k - w_g`` (all its tensors together)
  to L2 norm ``C`` and releases DP-FedAvg's estimator of the round's mean,
  ``(sum_k clip(w_k - w_g) + N(0, (sigma C)^2 I)) / (q N)``, ``q N`` the expected cohort
  (usable registered clients times q), never the realised count (which would leak whether a
  client took part). The sum's sensitivity is ``C``, so sigma is the noise multiplier the
  accountant composes, one sampled Gaussian mechanism per round at rate ``q``. The estimate is
  handed to the strategy as the round's mean: only mean-based strategies are accepted
  (``Strategy.averages``; median, Krum, ... are refused in preflight), and the method's server
  sees no individual update. An empty round still releases ``noise / (q N)`` (the mechanism
  runs every round, as accounted).
* ``local``: each client clips its own update to ``C`` and adds ``N(0, (2 sigma C)^2)`` before
  sending. Two updates of one client differ by up to ``2C`` (replace-one neighbours: any two
  datasets of that client), so the noise multiplier is still sigma; the server sees only noised
  updates. The guarantee per client composes one unsampled Gaussian mechanism per round it took
  part in (the server sees who took part: no amplification); ``epsilon`` reports the worst
  case, a client in every round so far.

Rounds under DP never fail for their size: with no fault every sampled client's update counts,
and ``federation.min_clients`` applies only to clients that were sampled and then dropped out or
were rejected (a fault, not a sampling outcome). An empty round under ``local`` leaves the
global tensors unchanged.

Both cover the tensors a client sends: a method whose clients send extra payloads under the
run's config (``Method.sent_extras``: CLIP2FL's per-class gradients, FedRSCLIP's visual prompts
with ``share_visual_mean``) is refused, as the extras are not privatised. Noise is drawn from
(seed, round), so a resumed run adds the same noise as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrs.core.strategies.base import ClientUpdate, Params
from fedrs.core.strategies.normclip import clip_update


def gaussian_noise(seed: list[int], shape: tuple[int, ...], std: float) -> np.ndarray:
    return std * np.random.default_rng(seed).standard_normal(shape)


def clipped_delta(current: Params, params: Params, c: float) -> dict[str, np.ndarray]:
    """``params - current`` (float64, the tensors ``params`` carries) scaled as a whole to L2
    norm at most ``c``."""
    delta = {k: np.asarray(v, np.float64) - current[k] for k, v in params.items()}
    norm = float(np.sqrt(sum(float(np.sum(d * d)) for d in delta.values())))
    scale = min(1.0, c / norm) if norm > 0 else 1.0
    return {k: d * scale for k, d in delta.items()}


def central_estimate(
    current: Params,
    updates: list[ClientUpdate],
    keys: tuple[str, ...],
    cfg: Any,
    expected: float,
    seed: int,
    round_: int,
) -> Params:
    """DP-FedAvg's noised mean for each of ``keys``: ``current + (sum of the updates' clipped
    deltas + N(0, (sigma C)^2)) / expected`` (an update without a key adds 0 to it; noise on
    every key, whoever sent it). ``expected``: the expected cohort, q x usable clients."""
    if expected <= 0:
        raise ValueError(f"the expected cohort must be > 0, got {expected}")
    total = {k: np.zeros(current[k].shape, np.float64) for k in keys}
    for u in sorted(updates, key=lambda u: u.client_id):
        for k, d in clipped_delta(current, u.params, cfg.clip_norm).items():
            if k in total:
                total[k] += d
    std = cfg.noise_multiplier * cfg.clip_norm
    out = {}
    for i, key in enumerate(sorted(keys)):
        noise = gaussian_noise([seed, round_, 0xD9, i], current[key].shape, std)
        out[key] = (current[key] + (total[key] + noise) / expected).astype(current[key].dtype)
    return out


def privatize_local(
    sent: Params, received: Params, cfg: Any, seed: int, round_: int, client_id: int
) -> Params:
    """A client's tensors with the update clipped to ``C`` and ``N(0, (2 sigma C)^2)`` added
    (sensitivity ``2C``: any two clipped updates of this client)."""
    clipped = clip_update(received, ClientUpdate(client_id, sent, 1), cfg.clip_norm).params
    std = cfg.noise_multiplier * 2 * cfg.clip_norm
    return {
        k: (v + gaussian_noise([seed, round_, client_id, 0x10C, i], v.shape, std)).astype(v.dtype)
        for i, (k, v) in enumerate(sorted(clipped.items()))
    }


def epsilon(cfg: Any, rounds: int, sample_rate: float) -> float:
    """(epsilon at ``cfg.delta``) after ``rounds`` Gaussian mechanisms of noise multiplier
    ``cfg.noise_multiplier`` at ``sample_rate``, from Opacus's accountant."""
    if rounds <= 0:
        return 0.0
    if cfg.noise_multiplier <= 0:
        return float("inf")
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if cfg.accountant == "rdp" else PRVAccountant()
    acc.history = [(cfg.noise_multiplier, sample_rate, rounds)]
    return float(acc.get_epsilon(delta=cfg.delta))


def spent(cfg: Any, rnd: int, registered: int) -> dict[str, Any]:
    """``{"epsilon", "delta"}`` after ``rnd`` rounds of a run config (``privacy.mode``
    central: subsampled at q = clients_per_round / registered; local: every round counts in
    full); empty without DP."""
    from fedrs.core.sampling import inclusion_rate

    p = cfg.privacy
    if p.mode == "none":
        return {}
    rate = inclusion_rate(cfg.federation.clients_per_round, registered)
    return {"epsilon": epsilon(p, rnd, rate if p.mode == "central" else 1.0), "delta": p.delta}


def expected_cohort(cfg: Any, registered: int, partitions: int, excluded: Any) -> float:
    """q x the usable registered clients: central DP's fixed denominator (DP-FedAvg)."""
    from fedrs.core.sampling import inclusion_rate, usable_count

    usable = usable_count(registered, partitions, frozenset(excluded))
    return inclusion_rate(cfg.federation.clients_per_round, registered) * usable
