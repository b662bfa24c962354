"""fedrs as a Flower App: ``server_app`` runs the fedrs driver (sampling, the strategy, the
method's server step, checkpoints, metrics) with the sites as its client pool
(``actors/sites.py``), ``client_app`` answers on each site with the same ``ClientWorker`` the
Ray actors run. The App's config (``[tool.flwr.app.config]``, written by ``fedrs deploy app``)::

    config = "<the run config as JSON>"   out = "/abs/run/dir"   sites = 2
    wait-s = 300.0   (how long to wait for the sites to connect)   resume = false

The run directory is the one ``fedrs run`` writes (config.json, metrics.jsonl, summary.json,
checkpoint/, plots) plus ``federation/manifest.json``: what the sites said they hold (counts
and class histograms, no path) and ``deploy.json`` (the run's key and status).
"""

from __future__ import annotations

import json
import logging
import secrets
import traceback
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrs.actors.sites import (
    federation_manifest,
    flower_message,
    gather_sites,
)
from fedrs.core.config import RunConfig, from_dict, with_data_path
from fedrs.errors import ConfigError
from fedrs.io import write_json
from fedrs.methods import method_class

log = logging.getLogger(__name__)
STATUS = "deploy.json"
FEDERATION = "federation"
WIRE = "wire.jsonl"  # bytes of message content each round, both ways (the benchmark reads it)
CLIENT_APP_RAISED = 2  # flwr's ErrorCode.CLIENT_APP_RAISED_EXCEPTION

server_app = ServerApp()  # the ClientApp: flower_client.py (light: a process per message)


def _status(run_dir: Path, **fields: Any) -> dict[str, Any]:
    path = run_dir / STATUS
    old = json.loads(path.read_text()) if path.is_file() else {}
    new = {**old, **fields}
    write_json(path, new)
    return new


def deploy_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` as a deployment runs it, or a one-line ``ConfigError``: the sites are the
    clients (no virtual clients beyond the data's partitions), no simulated attacks or
    faults (a real site misbehaves by itself)."""
    if cfg.federation.num_clients:
        raise ConfigError(
            "federation.num_clients: a deployment's clients are the sites' partitions; leave it 0"
        )
    if cfg.attack.kind != "none":
        raise ConfigError("attack.kind: simulated attacks are for `fedrs run`; set it to none")
    if cfg.federation.faults:
        raise ConfigError("federation.faults: injected faults are for `fedrs run`; leave empty")
    if cfg.clocked:
        raise ConfigError(
            "[system] / federation.policy: the virtual clock simulates clients' systems for "
            "`fedrs run`; real sites have their own"
        )
    from fedrs.core.strategies import STRATEGIES
    from fedrs.orchestrator.preflight import check_composition

    if cfg.strategy.name not in STRATEGIES:
        raise ConfigError(f"unknown strategy.name {cfg.strategy.name!r}; see `fedrs strategies`")
    check_composition(cfg, method_class(cfg.method.name), STRATEGIES[cfg.strategy.name])
    return cfg


def run_on_sites(
    grid: Any,
    cfg: RunConfig,
    run_dir: Path,
    sites: int,
    wait_s: float = 300.0,
    resume: bool = False,
    run_id: int | None = None,
    message: Any = flower_message,
) -> dict[str, Any]:
    """The fedrs round loop with the ``sites`` SuperNodes of ``grid`` as its clients; the run
    directory as ``fedrs run`` writes it. Returns the summary. (``message`` makes a message
    for a node: Flower's, inside a Flower run.)"""
    from fedrs.orchestrator.driver import Driver

    run_dir.mkdir(parents=True, exist_ok=True)
    old = json.loads((run_dir / STATUS).read_text()) if (run_dir / STATUS).is_file() else {}
    key = old.get("run_key") if resume else None
    key = key or secrets.token_hex(8)  # the sites keep private state under this key
    if not resume:
        (run_dir / WIRE).unlink(missing_ok=True)
    _status(run_dir, state="starting", run_key=key, flower_run_id=run_id, error=None)
    try:
        cfg = deploy_config(cfg)
        method_cls = method_class(cfg.method.name)
        pool = gather_sites(grid, sites, wait_s, cfg.to_dict(), key, message)
        fed = run_dir / FEDERATION
        fed.mkdir(exist_ok=True)
        write_json(fed / "manifest.json", federation_manifest(pool))
        cfg = with_data_path(cfg, str(fed))
        write_json(run_dir / "config.json", cfg.to_dict())
        pool.cfg = cfg.to_dict()
        driver = Driver(cfg, str(run_dir), str(fed), method_cls, resume=resume, pool=pool)
        _status(run_dir, state="running", sites=pool.describe())
        head = method_cls.headline
        sent = dict(pool.wire)
        for rec in driver.run():
            log.info("round %d: %s %s", rec["round"], head, rec.get(head))
            wire = {k: v - sent[k] for k, v in pool.wire.items()}  # this round's messages
            sent = dict(pool.wire)
            with open(run_dir / WIRE, "a") as f:
                f.write(json.dumps({"round": rec["round"], **wire}) + "\n")
            _status(run_dir, round=rec["round"])
        summary = driver.finish()
        _status(run_dir, state="finished", rounds=summary["rounds_completed"])
        return summary
    except BaseException as exc:
        _status(run_dir, state="failed", error=f"{type(exc).__name__}: {exc}")
        log.error("fedrs server app failed:\n%s", traceback.format_exc())
        raise


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """The App's config (module docstring) -> ``run_on_sites``."""
    rc = context.run_config
    run_on_sites(
        grid,
        from_dict(json.loads(str(rc["config"]))),
        Path(str(rc["out"])),
        int(rc["sites"]),
        float(rc["wait-s"]),
        bool(rc.get("resume", False)),
        context.run_id,
    )
