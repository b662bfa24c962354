"""The exchange rules, once: what each client receives and sends in a round, and whether what it
sent back is accepted (or why not).

Pure functions of the config, the method class, the client's data record and the round. The
driver (``driver.py``), the ``--dry-run`` planner (``plan.py``) and the benchmark harness
(``benchmarks/harness.py``, ``research_loop.py``) all call them, so the three agree by
construction::

    exchange_for(...)  -> Exchange(down, up, extras)   what travels, per client and round
    fit_options(...)   -> FitOptions                   what the client is told to train
    accept_all(...)    -> accepted updates, rejected   what the server takes from the replies
                          (``fedrs.core.validation.accept``, the rule a site also runs under
                          secure aggregation)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrs.core.config import RunConfig
from fedrs.core.strategies import ClientUpdate
from fedrs.core.validation import accept
from fedrs.methods.base import FitOptions, Method


@dataclass(frozen=True)
class Exchange:
    """One client's traffic in one round: the global tensors it receives (``down``), the
    tensors it uploads (``up``) and the extra payloads it may send (``extras``; None: any
    the method declares)."""

    down: tuple[str, ...]
    up: tuple[str, ...]
    extras: tuple[str, ...] | None = None


def uploadable(method_cls: type[Method], global_keys: tuple[str, ...]) -> tuple[str, ...]:
    """The global tensors clients may upload at all: all but the method's ``download_only``
    (what only the server writes). The strategy is built over these."""
    return tuple(k for k in global_keys if k not in method_cls.download_only)


def client_record(clients: list[dict[str, Any]], client_id: int) -> dict[str, Any]:
    """The data record (manifest entry) of registered client ``client_id``: it trains on
    partition ``client_id % partitions``."""
    return clients[client_id % len(clients)]


def _narrow(keys: tuple[str, ...], group: Any) -> tuple[str, ...]:
    return keys if group is None else tuple(k for k in keys if k in group)


def exchange_for(
    method_cls: type[Method],
    cfg: RunConfig,
    record: dict[str, Any],
    rnd: int,
    global_keys: tuple[str, ...],
    upload_keys: tuple[str, ...],
) -> Exchange:
    """What the client described by ``record`` receives and sends in round ``rnd``: the
    global tensors narrowed to its group (``download_keys_for``), the strategy's upload keys
    narrowed likewise (``upload_keys_for``), and its extra payloads (``extras_for``)."""
    extras = method_cls.extras_for(cfg, record, rnd)
    return Exchange(
        down=_narrow(global_keys, method_cls.download_keys_for(cfg, record, rnd)),
        up=_narrow(upload_keys, method_cls.upload_keys_for(cfg, record, rnd)),
        extras=None if extras is None else tuple(extras),
    )


def fit_options(
    cfg: RunConfig, rnd: int, client_id: int, strategy: Any, ex: Exchange | None = None
) -> FitOptions:
    """The local-training options the client gets: ``cfg.client``, the strategy's client
    options (FedProx's ``proximal_mu``) and, given its ``Exchange``, its upload keys."""
    options = FitOptions.from_config(cfg, rnd, client_id, strategy)
    return options if ex is None else dataclasses.replace(options, upload_keys=ex.up)


def payload_bytes(payload: Any) -> int:
    """Bytes of the arrays in an uploaded payload (0 for anything malformed)."""
    if not isinstance(payload, dict):
        return 0
    return int(sum(v.nbytes for v in payload.values() if isinstance(v, np.ndarray)))


def reply_bytes(reply: dict[str, Any]) -> int:
    """Bytes a client's reply carried up: its tensors and its extra payloads."""
    return payload_bytes(reply.get("params")) + payload_bytes(reply.get("extras"))


def accept_all(
    method_cls: type[Method],
    cfg: RunConfig,
    sampled: list[int],
    exchanges: list[Exchange],
    results: dict[int, dict[str, Any]],
    params: dict[str, np.ndarray],
    spec: dict[str, tuple[tuple[int, ...], Any]],
    extra_shapes: dict[str, tuple[int, ...]] | None,
    sealed: bool = False,
    sent: list[dict[str, np.ndarray]] | None = None,
) -> tuple[list[ClientUpdate], dict[int, str]]:
    """``accept`` for every reply of a round (``results`` by index into ``sampled``): the
    updates accepted, in client order, and by client why the others were not. ``sealed``:
    under secure aggregation the sites ran ``accept`` and sent their verdicts
    (``accept_sealed``). ``sent``: by index, the tensors each client trained from, where
    they are not ``params`` (asynchronous rounds)."""
    updates: list[ClientUpdate] = []
    rejected: dict[int, str] = {}
    for ti, reply in sorted(results.items()):
        ex, cid = exchanges[ti], sampled[ti]
        if sealed:
            update, why = accept_sealed(cid, reply)
        else:
            base = params if sent is None else sent[ti]
            update, why = accept(
                method_cls,
                cfg,
                cid,
                reply,
                {k: base[k] for k in ex.down},
                {k: spec[k] for k in ex.up},
                extra_shapes,
            )
        if update is None:
            rejected[cid] = str(why)
        else:
            updates.append(update)
    return updates, rejected


def accept_sealed(client_id: int, reply: dict[str, Any]) -> tuple[ClientUpdate | None, str]:
    """A site's verdict on its client under secure aggregation (``actors/secagg.py``): an
    update without tensors (they reach the server only summed), or why the site rejected
    it; a reply that carries tensors, or no verdict, is rejected."""
    if not isinstance(reply, dict):
        return None, "the site sent no verdict"
    if "rejected" in reply:
        return None, f"rejected at its site: {reply['rejected']}"
    if reply.get("sealed") is not True or "params" in reply or "extras" in reply:
        return None, "the site sent tensors in the clear under secure aggregation"
    n = reply.get("num_examples")
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        return None, f"num_examples {n!r} is not a positive integer"
    metrics = reply.get("metrics") if isinstance(reply.get("metrics"), dict) else {}
    return ClientUpdate(client_id, {}, n, metrics), ""


def upload_numbers(
    method_cls: type[Method],
    cfg: RunConfig,
    ex: Exchange,
    global_shapes: dict[str, tuple[int, ...]],
    extra_shapes: dict[str, tuple[int, ...]],
) -> int:
    """Numbers the client sends under ``ex`` (``--dry-run``): its tensors as they travel
    (``wire_size``: fewer when compressed) and, at most, its extra payloads."""
    extras = sum(
        int(np.prod(s, dtype=np.int64))
        for k, s in extra_shapes.items()
        if ex.extras is None or k in ex.extras
    )
    return extras + sum(method_cls.wire_size(cfg, global_shapes[k]) for k in ex.up)


def declared_extras(
    cfg: RunConfig, method_cls: type[Method], num_classes: int
) -> dict[str, tuple[int, ...]] | None:
    """The extra payloads' shapes the method declares (``tensor_shapes``' ``"extras"``), by
    name; None when it declares none (names and values are still checked)."""
    from fedrs.models.backbone import model_config

    try:
        shapes = method_cls.tensor_shapes(cfg, model_config(cfg.model.arch), num_classes)
    except NotImplementedError:
        return None
    return shapes.get("extras") or None
