"""``fedrs run --dry-run``: the plan of a run, computed without training or building weights.

Actors and resources, trainable parameters, what each client sends and receives per round, and
totals per run, from the method's tensor shapes and open_clip's architecture config.
"""

from __future__ import annotations

import math
from typing import Any

from fedrs.core.config import RunConfig
from fedrs.errors import FedrsError
from fedrs.models.backbone import model_config
from fedrs.orchestrator.preflight import (
    check_cluster,
    check_data,
    check_federation,
    check_method_fit,
    check_weights,
    resolve_names,
)

BYTES_PER_PARAM = 4  # float32 on the wire


def _advice(check: Any, *args: Any, **kwargs: Any) -> str | None:
    """None when ``check`` passes here, else its one line (a plan may be made on one machine
    for another: the weights and the cluster are reported, not enforced)."""
    try:
        check(*args, **kwargs)
    except FedrsError as exc:
        return str(exc)
    return None


def plan(cfg: RunConfig, method_cls: Any = None) -> dict[str, Any]:
    data = check_data(cfg, None)
    method, strategy, shapes = resolve_names(cfg, data.num_classes, method_cls)
    check_method_fit(cfg, data, method)
    registered = check_federation(cfg, data)
    mcfg = model_config(cfg.model.arch)
    size = {k: math.prod(s) for k, s in (shapes["global"] | shapes["private"]).items()}
    extras = shapes.get("extras", {})  # per-client payloads beside the tensors (at most)
    trained = sum(size[k] for k in strategy.upload_keys if k in size)
    sent = trained + sum(math.prod(s) for s in extras.values())
    received = sum(size[k] for k in shapes["global"])
    private = sum(size[k] for k in shapes["private"])
    fed, res = cfg.federation, cfg.resources
    per_round = fed.clients_per_round
    rounds = fed.rounds if method.trains else 0
    traffic = _traffic(cfg, method, strategy, shapes, data.excluded, registered, rounds)
    up_run, down_run, partner_run = traffic
    return {
        "method": method.name,
        "strategy": strategy.name,
        "strategy_in_effect": strategy.describe(),
        "model": {
            "arch": cfg.model.arch,
            "pretrained": cfg.model.pretrained or None,
            "text_width": mcfg["text_cfg"]["width"],
            "vision_width": mcfg["vision_cfg"]["width"],
        },
        "actors": {
            "num_actors": res.num_actors,
            "per_actor": {"CPU": res.num_cpus_per_client, "GPU": res.num_gpus_per_client},
            "total": {
                "CPU": res.num_actors * res.num_cpus_per_client,
                "GPU": res.num_actors * res.num_gpus_per_client,
            },
            "placement_strategy": res.placement_strategy,
        },
        "clients": {
            "registered": registered,
            "excluded": {str(k): v for k, v in data.excluded.items()},
            "per_round": per_round,
            # under privacy.mode each client joins with probability per_round / registered
            "sampling": "poisson" if cfg.privacy.mode != "none" else "fixed",
            "rounds": rounds,
            # partner organisations: per_round counts regions, each joining whole
            "regions": data.regions,
        },
        "tensors": {
            scope: {k: list(s) for k, s in shapes.get(scope, {}).items()}
            for scope in ("global", "private", "extras")
        },
        "trainable_params": trained + private if method.trains else 0,
        "private_params_per_client": private,
        "params_sent_per_client": sent,
        "params_received_per_client": received,
        "bytes_sent_per_client": sent * BYTES_PER_PARAM,
        "bytes_received_per_client": received * BYTES_PER_PARAM,
        "bytes_up_per_run": up_run * BYTES_PER_PARAM,
        "bytes_down_per_run": down_run * BYTES_PER_PARAM,
        # between partner organisations (None: none; or unknown until the data is built)
        "partner_bytes_per_round": partner_run,
        "warnings": [
            w
            for w in (
                _advice(check_weights, cfg.model.arch, cfg.model.pretrained, fetch=False),
                _advice(check_cluster, cfg),
            )
            if w
        ],
        # what the plan cannot foresee (not a reason the run could not start)
        "notes": [n for n in (_clocked(cfg),) if n],
    }


def _traffic(
    cfg: RunConfig,
    method: Any,
    strategy: Any,
    shapes: dict[str, Any],
    excluded: dict[int, str],
    registered: int,
    rounds: int,
) -> tuple[int, int, list[int] | None]:
    """Numbers sent up and down over the run, round by round as the driver would: the same
    draw of clients, their groups and stages (``exchange``), the tensors they hold already;
    and the bytes partner organisations send each other in each round (``partners``)."""
    from fedrs.core.sampling import sample_cohort
    from fedrs.orchestrator import partners
    from fedrs.orchestrator.exchange import client_record, exchange_for, upload_numbers
    from fedrs.orchestrator.holdings import Holdings

    records, groups = _client_records(cfg)
    between: list[int] | None = [] if groups and cfg.data.path else None
    glob = list(shapes["global"])
    held = Holdings(glob, [math.prod(shapes["global"][k]) for k in glob])
    written = [k for k in glob if k in method.download_only]
    up_keys = tuple(strategy.upload_keys)
    extras = shapes.get("extras", {})
    up_run = down_run = 0
    for rnd in range(1, rounds + 1):
        # a tensor changes in a round when a sampled client uploads it or the server writes
        # it; a client is sent only what it does not hold yet (orchestrator/holdings.py)
        moved = set(written)
        sampled = sample_cohort(cfg, registered, len(records), excluded, rnd, groups)
        if between is not None:
            share = partners.plan_round(method, cfg, records, sampled, rnd)
            between.append(sum(share.bytes_sent(c) for c in share.shapes) if share else 0)
        for cid in sampled:
            ex = exchange_for(method, cfg, client_record(records, cid), rnd, tuple(glob), up_keys)
            up_run += upload_numbers(method, cfg, ex, shapes["global"], extras)
            down_run += held.cost(cid, ex.down)
            held.deliver(cid, ex.down)
            moved.update(ex.up)
        held.changed([k for k in glob if k in moved], rnd)
    return up_run, down_run, between


def _clocked(cfg: RunConfig) -> str | None:
    """What the plan cannot foresee under the virtual clock (``fedrs/core/system.py``)."""
    if not cfg.clocked:
        return None
    return (
        f"federation.policy={cfg.federation.policy} / [system]: the virtual clock decides "
        "which sampled clients run (their speeds, links and availability, and the FLOPs the "
        "run counts at its start); the bytes per run assume the synchronous draw with every "
        "sampled client running"
    )


def _client_records(cfg: RunConfig) -> tuple[list[dict[str, Any]], list[list[int]] | None]:
    """The data's client records (manifest), one per partition, and its partner groups."""
    import json
    from pathlib import Path

    from fedrs.core.modal import regions_of
    from fedrs.orchestrator.partners import partner_groups

    if not cfg.data.path:  # the synthetic default: every client holds everything, or
        modal = cfg.data.modal  # partner organisations hold one group each
        if not modal.partners:
            return [{"id": c} for c in range(cfg.data.num_clients)], None
        held = modal.groups()
        groups = regions_of(cfg.data.num_clients, len(held))
        records = [
            {"id": c, "modalities": list(held[g]), "partners": [p for p in ids if p != c]}
            for ids in groups
            for g, c in enumerate(ids)
        ]
        return records, groups
    manifest = json.loads((Path(cfg.data.path) / "manifest.json").read_text())
    return list(manifest["clients"]), partner_groups(manifest)


def render(p: dict[str, Any]) -> str:
    a = p["actors"]
    poisson = " expected (Poisson sampling, DP)" if p["clients"]["sampling"] == "poisson" else ""
    at_most = "at most " if p["tensors"]["extras"] else ""  # extras: per client, see extras_for
    lines = [
        f"method {p['method']} + strategy {p['strategy_in_effect']} on {p['model']['arch']}",
        f"actors: {a['num_actors']} x {a['per_actor']} ({a['placement_strategy']}), "
        f"total {a['total']}",
        f"clients: {p['clients']['registered']} registered, {p['clients']['per_round']} "
        + (
            f"of {p['clients']['regions']} regions (all their organisations) "
            if p["clients"]["regions"]
            else ""
        )
        + f"per round{poisson}, {p['clients']['rounds']} rounds",
        f"trainable parameters per client: {p['trainable_params']:,} "
        f"({p['private_params_per_client']:,} private, never sent)",
        f"per client per round: sends {at_most}{p['params_sent_per_client']:,} params "
        f"({p['bytes_sent_per_client']:,} B), receives {p['params_received_per_client']:,} "
        f"({p['bytes_received_per_client']:,} B)",
        f"per run: {p['bytes_up_per_run']:,} B up, {p['bytes_down_per_run']:,} B down"
        " (every sampled client, round by round)",
    ]
    between = p["partner_bytes_per_round"]
    if between:
        lines.append(
            f"between partner organisations: {sum(between):,} B per run "
            f"({', '.join(f'{b:,}' for b in between)} B by round)"
        )
    for scope in ("global", "private", "extras"):
        for name, shape in p["tensors"][scope].items():
            lines.append(f"  {scope:7} {name:24} {'x'.join(map(str, shape))}")
    lines += [f"warning: this machine could not run it: {w}" for w in p["warnings"]]
    lines += [f"note: {n}" for n in p.get("notes", [])]
    return "\n".join(lines)
