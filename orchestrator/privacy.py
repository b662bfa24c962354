"""Client-level differential privacy (``privacy.*``), after DP-FedAvg (McMahan et al., 2018).

* ``central``: the server clips each client's update ``w_k - w_g`` (all its tensors together)
  to L2 norm ``C``, averages them unweighted (each client's influence bounded by ``C / n``) and
  adds ``N(0, (sigma C / n)^2)`` to every coordinate, ``n`` = clients per round. The
  accountant (Opacus: RDP, or PRV) composes one sampled Gaussian mechanism per round with
  sampling rate ``q = clients_per_round / registered clients`` and noise multiplier sigma.
* ``local``: each client clips its own update to ``C`` and adds ``N(0, (sigma C)^2)`` before
  sending; the server sees only noised updates. Its guarantee per client composes one
  (unsampled) Gaussian mechanism per round the client took part in; ``epsilon`` reports the
  worst case (a client in every round so far).

Both cover the tensors a client sends; methods with extra payloads (CLIP2FL's per-class
gradients) are refused (their extras are not privatised). Noise is drawn from (seed, round),
so a resumed run adds the same noise as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrs.orchestrator.strategies.base import ClientUpdate, Params
from fedrs.orchestrator.strategies.normclip import clip_update


def gaussian_noise(seed: list[int], shape: tuple[int, ...], std: float) -> np.ndarray:
    return std * np.random.default_rng(seed).standard_normal(shape)


def clip_all(current: Params, updates: list[ClientUpdate], c: float) -> list[ClientUpdate]:
    """Each update clipped to norm ``c`` and counted once (unweighted mean: sensitivity c/n)."""
    return [
        ClientUpdate(u.client_id, clip_update(current, u, c).params, 1, u.metrics, u.extras)
        for u in updates
    ]


def add_central_noise(
    aggregate: Params, keys: tuple[str, ...], n: int, cfg: Any, seed: int, round_: int
) -> Params:
    """``aggregate`` with ``N(0, (sigma C / n)^2)`` added to each of ``keys``."""
    std = cfg.noise_multiplier * cfg.clip_norm / max(n, 1)
    out = dict(aggregate)
    for i, key in enumerate(sorted(keys)):
        noise = gaussian_noise([seed, round_, 0xD9, i], aggregate[key].shape, std)
        out[key] = (aggregate[key] + noise).astype(aggregate[key].dtype)
    return out


def privatize_local(
    sent: Params, received: Params, cfg: Any, seed: int, round_: int, client_id: int
) -> Params:
    """A client's tensors with the update clipped to ``C`` and ``N(0, (sigma C)^2)`` added."""
    clipped = clip_update(received, ClientUpdate(client_id, sent, 1), cfg.clip_norm).params
    std = cfg.noise_multiplier * cfg.clip_norm
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
