"""``fedrs run``: prepare the run directory and data, connect to Ray, drive the rounds.

Connects to an existing cluster when one is given (``RAY_ADDRESS``, as ``ray job submit`` sets
for its entrypoint) and starts a local one otherwise. The round loop itself runs in the driver
actor; this process streams its per-round metrics and prints progress.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import ray
from rich.console import Console

from fedrs.errors import ConfigError, FedrsError
from fedrs.io import write_json
from fedrs.methods import method_class
from fedrs.methods.base import Method
from fedrs.orchestrator.config import RunConfig, from_dict

log = logging.getLogger(__name__)
SYNTH_DIR = "data"


def new_run_dir(out: str | None) -> Path:
    if out:
        return Path(out)
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def ensure_data(cfg: RunConfig, run_dir: Path) -> str:
    """``data.path`` when set; else the synthetic default, built once inside the run dir."""
    if cfg.data.path:
        if not (Path(cfg.data.path) / "manifest.json").is_file():
            raise ConfigError(
                f"data.path {cfg.data.path!r} holds no manifest.json; build it with "
                f"`fedrs data build` (or leave data.path empty for the synthetic default)"
            )
        return str(Path(cfg.data.path).resolve())
    from fedrs.datasets.manifest import MANIFEST
    from fedrs.datasets.partition import PartitionSpec
    from fedrs.datasets.synth import build_synthetic

    out = run_dir / SYNTH_DIR
    if not (out / MANIFEST).is_file():
        d = cfg.data
        part = PartitionSpec(
            scheme=d.partition,
            num_clients=d.num_clients,
            seed=cfg.federation.seed,
            alpha=d.alpha,
            classes_per_client=d.classes_per_client,
            imbalance_factor=d.imbalance_factor,
            min_examples=5,
        )
        log.info("building the synthetic default dataset in %s", out)
        build_synthetic(out, per_class=d.per_class, image_size=d.image_size, partition=part)
    return str(out.resolve())


def connect_ray() -> None:
    """Join ``RAY_ADDRESS``'s cluster if set, else start a local one on loopback (once per
    process)."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
    else:
        # "local": always a fresh instance. A bare ray.init() would instead follow
        # /tmp/ray/ray_current_cluster to whatever `ray start` ran last, even a dead cluster.
        ray.init(
            address="local",
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            log_to_driver=True,
        )


def run(
    cfg: RunConfig | None = None,
    out: str | None = None,
    resume: str | None = None,
    overrides: list[str] | None = None,
    method_cls: type[Method] | None = None,
    stop_after: int | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run (or resume) a federation; return the summary. ``stop_after`` ends early after that
    round, as an interruption would (tests use it to check resume)."""
    console = console or Console()
    if resume:
        run_dir = Path(resume)
        saved = run_dir / "config.json"
        if not saved.is_file():
            raise ConfigError(f"--resume {resume}: no config.json there (not a fedrs run dir)")
        import json

        cfg = from_dict(json.loads(saved.read_text()), overrides)
    else:
        cfg = cfg or RunConfig()
        run_dir = new_run_dir(out)
    driver = spawn_driver(cfg, run_dir, method_cls or method_class(cfg.method.name), bool(resume))
    try:
        return _drive(driver, cfg, run_dir, stop_after, console)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, FedrsError):  # one line for the user, not a remote traceback
            raise exc.cause from None
        raise
    finally:
        ray.kill(driver)


def spawn_driver(
    cfg: RunConfig, run_dir: Path, method_cls: type[Method], resume: bool = False
) -> Any:
    """Check the data, record the config and start the driver actor (which spawns the client
    actors); returns its handle. ``run`` streams its rounds; benchmarks may call
    ``run_round`` on it one round at a time."""
    run_dir.mkdir(parents=True, exist_ok=True)
    data_path = ensure_data(cfg, run_dir)
    from fedrs.datasets.manifest import FedDataset
    from fedrs.orchestrator.driver import registered_clients

    registered_clients(cfg, FedDataset(data_path, verify=False).num_clients)  # one-line errors
    write_json(run_dir / "config.json", cfg.to_dict())

    connect_ray()
    from fedrs.orchestrator.driver import Driver

    return ray.remote(num_cpus=0)(Driver).remote(
        cfg, str(run_dir.resolve()), data_path, method_cls, resume
    )


def _drive(
    driver: Any, cfg: RunConfig, run_dir: Path, stop_after: int | None, console: Console
) -> dict[str, Any]:
    """Stream the driver's rounds to the console; finish the run and return its summary."""
    actors = ray.get(driver.describe_actors.remote())
    devices = sorted({a["device"] for a in actors})
    console.print(
        f"[bold]fedrs[/] {cfg.method.name} + {cfg.strategy.name}: {len(actors)} client "
        f"actors ({', '.join(devices)}), {cfg.federation.rounds} rounds x "
        f"{cfg.federation.clients_per_round} clients -> {run_dir}"
    )
    for ref in driver.run.options(num_returns="streaming").remote(stop_after):
        console.print(_progress_line(ray.get(ref), cfg.federation.rounds))
    if stop_after is not None:
        return {"stopped_after": stop_after, "run_dir": str(run_dir)}
    summary = ray.get(driver.finish.remote())
    summary["run_dir"] = str(run_dir)
    console.print(
        f"done: accuracy {summary['final'].get('accuracy', float('nan')):.3f} "
        f"(best {summary['best_accuracy'] or float('nan'):.3f}); "
        f"{int(summary['totals']['bytes_up']):,} B up, {int(summary['totals']['bytes_down']):,} B "
        f"down; files in {run_dir}"
    )
    return summary


def _progress_line(rec: dict[str, Any], rounds: int) -> str:
    parts = [f"round {rec['round']:>3}/{rounds}"]
    for key, label in (("accuracy", "acc"), ("personalized_accuracy", "pers"), ("loss", "loss")):
        if key in rec and rec[key] == rec[key]:
            parts.append(f"{label} {rec[key]:.3f}")
    parts.append(f"ok {rec.get('clients_ok', 0)}")
    if rec.get("clients_failed") or rec.get("clients_rejected"):
        parts.append(f"[red]failed {rec['clients_failed']} rejected {rec['clients_rejected']}[/]")
    parts.append(f"{rec.get('wall_s', 0):.1f}s")
    return "  ".join(parts)
