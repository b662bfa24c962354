"""Partner exchanges, once: which sampled clients share with which in a round, whether what
one shared is accepted, where it is relayed, what it costs, and which clients lose the round
because a partner could not share. Pure functions; the driver and ``--dry-run`` call them.

Partners are organisations that hold different modalities of the same pixels (a data build
with ``--client-modalities 'hsi|lidar'``: its manifest's ``partners`` lists each region's
clients). A method takes part by declaring ``Method.partner_shapes`` (see methods/base.py);
each round then runs::

    share (every sampled client, its payload)  ->  check_share  ->  route: each client gets its
    partners' payloads (one object-store copy each)  ->  fit(..., options.partners)

A region one of whose organisations fails, times out or sends a malformed payload skips the
round: its other organisations do not train on a partner's missing features.

``Partners.share`` is the one step that runs these on the actor pool (the driver calls it
between sending the global tensors and local training).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrs.actors.client import FitTask
from fedrs.actors.dispatch import PerTask
from fedrs.core.config import RunConfig
from fedrs.methods.base import Method
from fedrs.orchestrator.exchange import client_record, fit_options

BYTES = 4  # float32


def partner_groups(manifest: dict[str, Any] | None) -> list[list[int]] | None:
    """Each region's clients (the manifest's ``partners``), or None: no partners."""
    groups = (manifest or {}).get("partners")
    return [list(map(int, g)) for g in groups] if groups else None


@dataclass(frozen=True)
class PartnerPlan:
    """One round's partner exchange: what each sampled client shares (``shapes``) and with
    which of the round's clients (``partners``)."""

    shapes: dict[int, dict[str, tuple[int, ...]]]
    partners: dict[int, tuple[int, ...]]

    def bytes_sent(self, client_id: int) -> int:
        """Bytes ``client_id`` sends its partners in the round (one payload per partner)."""
        size = sum(int(np.prod(s, dtype=np.int64)) for s in self.shapes[client_id].values())
        return size * BYTES * len(self.partners[client_id])


def plan_round(
    method_cls: type[Method],
    cfg: RunConfig,
    records: list[dict[str, Any]],
    sampled: list[int],
    rnd: int,
) -> PartnerPlan | None:
    """The round's partner exchange, or None when no sampled client shares anything."""
    chosen = set(sampled)
    shapes, partners = {}, {}
    for cid in sampled:
        record = client_record(records, cid)
        declared = method_cls.partner_shapes(cfg, record, rnd)
        if declared is None:
            continue
        shapes[cid] = {k: tuple(int(n) for n in s) for k, s in declared.items()}
        partners[cid] = tuple(int(p) for p in record.get("partners", ()) if p in chosen)
    return PartnerPlan(shapes, partners) if shapes else None


def check_share(payload: Any, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Why a shared payload is refused (None: accepted): its names, float32 arrays of the
    declared shapes (so of the declared size), finite values."""
    if not isinstance(payload, dict):
        return f"shared {type(payload).__name__}, not named arrays"
    if set(payload) != set(shapes):
        return f"shared {sorted(payload)}, declared {sorted(shapes)}"
    for name, shape in shapes.items():
        value = payload[name]
        if not isinstance(value, np.ndarray) or value.dtype != np.float32:
            return f"shared {name} is not a float32 array"
        if value.shape != shape:
            return f"shared {name} has shape {value.shape}, declared {shape}"
        if not np.isfinite(value).all():
            return f"shared {name} has non-finite values"
    return None


def lost(plan: PartnerPlan, shared: set[int], why: dict[int, str]) -> dict[int, str]:
    """The clients that skip the round, with why: each one whose own share failed, and every
    partner of one that failed (``why``: the failed clients' reasons)."""
    out: dict[int, str] = {}
    for cid, partners in plan.partners.items():
        if cid not in shared:
            out[cid] = f"could not share with its partners: {why.get(cid, 'no reply')}"
            continue
        missing = [p for p in partners if p in plan.shapes and p not in shared]
        if missing:
            out[cid] = f"partner {missing[0]} could not share: {why.get(missing[0], 'no reply')}"
    return out


def route(plan: PartnerPlan, handles: dict[int, Any], clients: list[int]) -> dict[int, dict]:
    """What each of ``clients`` receives: its partners' shared payloads (``handles``: one per
    sharing client, e.g. an object-store reference), by partner id."""
    return {
        cid: {p: handles[p] for p in plan.partners.get(cid, ()) if p in handles} for cid in clients
    }


class Partners:
    """The share step of a round, on the actor pool (``share`` below); nothing to do for data
    without partners or a method that declares no ``partner_shapes``."""

    def __init__(
        self, cfg: RunConfig, method_cls: type[Method], manifest: dict, pool: Any, strategy: Any
    ) -> None:
        self.cfg, self.method_cls, self.pool, self.strategy = cfg, method_cls, pool, strategy
        self.records = manifest["clients"]
        self.groups = partner_groups(manifest) or []

    def share(
        self, rnd: int, sampled: list[int], downloads: list[Any], stop: threading.Event
    ) -> tuple[dict[int, dict], dict[int, str], dict[str, Any]]:
        """Each sharing client's payload (``downloads[i]``: client ``sampled[i]``'s global
        tensors) checked and put in the object store once, each client given its partners'.
        Returns the inbox by client, the clients that lose the round with why, and the round's
        partner traffic for its record (``partner_bytes``, per client, regions skipped)."""
        t0 = time.perf_counter()
        plan = plan_round(self.method_cls, self.cfg, self.records, sampled, rnd)
        if plan is None:
            return {}, {}, {}
        sharers = [i for i, cid in enumerate(sampled) if cid in plan.shapes]
        tasks = [
            FitTask(sampled[i], fit_options(self.cfg, rnd, sampled[i], self.strategy))
            for i in sharers
        ]
        results, failures = self.pool.map(
            "share",
            PerTask(downloads[i] for i in sharers),
            tasks,
            self.cfg.federation.round_timeout_s,
            affinity=[sampled[i] for i in sharers],
            stop=stop,
        )
        why = {sampled[sharers[ti]]: reason for ti, reason in failures.items()}
        handles = {}
        for ti, reply in results.items():
            cid = sampled[sharers[ti]]
            refused = check_share(reply.get("payload"), plan.shapes[cid])
            if refused:
                why[cid] = refused
            else:
                handles[cid] = self.pool.put(reply["payload"])  # one copy, read by each partner
        out = lost(plan, set(handles), why)
        sent = {cid: plan.bytes_sent(cid) for cid in handles if cid not in out}
        skipped = [g for g in self.groups if set(g) & set(out)]
        return (
            route(plan, handles, [c for c in sampled if c not in out]),
            out,
            {
                "partner_bytes": sum(sent.values()),
                "partner_bytes_by_client": {str(c): b for c, b in sorted(sent.items())},
                "regions_skipped": len(skipped),
                "share_s": time.perf_counter() - t0,  # the share phase, on the driver's clock
            },
        )
