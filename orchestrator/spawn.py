"""Starting a run on Ray: the data it trains on (built here for the synthetic default), Ray
joined or started locally, then the client actors and the driver actor that takes them over."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

import ray

from fedrs import reaper
from fedrs.actors.placement import Placement
from fedrs.core.config import RunConfig
from fedrs.datasets.partition import PartitionSpec
from fedrs.errors import FedrsError
from fedrs.io import write_json
from fedrs.methods import method_class
from fedrs.methods.base import Method
from fedrs.orchestrator.preflight import SYNTH_DIR, Checked, check_ray_address, preflight

log = logging.getLogger(__name__)


def ensure_data(cfg: RunConfig, run_dir: Path) -> str:
    """``data.path`` when set; else the synthetic default, built once inside the run dir."""
    if cfg.data.path:
        return str(Path(cfg.data.path).resolve())
    from fedrs.datasets.manifest import MANIFEST

    out = run_dir / SYNTH_DIR
    if not (out / MANIFEST).is_file():
        log.info("building the synthetic default dataset in %s", out)
        build_synthetic_default(cfg, out, data_partition(cfg))
    return str(out.resolve())


def build_synthetic_default(cfg: RunConfig, out: Path, part: PartitionSpec) -> None:
    """The synthetic data the method asks for (``Method.synthetic_data``, a
    ``datasets.defaults.SyntheticDefault``): land-cover scenes, captioned scenes or a
    co-registered HSI + LiDAR scene."""

    method_class(cfg.method.name).synthetic_data.build(cfg.data, out, part)


def data_partition(cfg: RunConfig, min_examples: int | None = None) -> PartitionSpec:
    """The partition ``cfg.data`` asks for, seeded by ``federation.seed`` (the synthetic
    default's, and a sweep's builds from sources); ``min_examples``: the spec's default."""
    d = cfg.data
    return PartitionSpec(
        scheme=d.partition,
        num_clients=d.num_clients,
        seed=cfg.federation.seed,
        alpha=d.alpha,
        classes_per_client=d.classes_per_client,
        imbalance_factor=d.imbalance_factor,
        **({} if min_examples is None else {"min_examples": min_examples}),
    )


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _sigterm_as_ctrl_c() -> None:
    """SIGTERM (``ray job stop``) stops a run as Ctrl-C does. ``ray.init`` installs its own
    handler, which logs and aborts the process: ours goes back on after it (main thread only)."""
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGTERM, _interrupt)


class _NoTokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Token authentication is enabled" not in record.getMessage()


def connect_ray() -> None:
    """Join ``RAY_ADDRESS``'s cluster if set, else start a local one on loopback (once per
    process). An address where nothing answers is one line within seconds."""
    global _started_here
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        check_ray_address()
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
    else:
        # "local": always a fresh instance. A bare ray.init() would instead follow
        # /tmp/ray/ray_current_cluster to whatever `ray start` ran last, even a dead cluster.
        # The reaper stops it (agents included) should this process be killed.
        reaper.start()
        # token authentication stays on (Ray's default for a local instance); Ray's notice
        # that it is on, printed by every command, is dropped (the user cannot act on it)
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
            _NoTokenNotice()
        )
        ray.init(
            address="local",
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            log_to_driver=True,
        )
        _started_here = True
    _sigterm_as_ctrl_c()


_started_here = False  # connect_ray started a local Ray that ends with this process


def _ray_outlives_run() -> bool:
    """Whether actors kept after this run could serve another (``resources.keep_warm_s``):
    not on the local Ray this process started (it ends with the process)."""
    if _started_here:
        log.warning(
            "resources.keep_warm_s: this run's Ray ends with it, so nothing is kept; join a "
            "cluster that stays up (RAY_ADDRESS, ray job submit) to keep actors warm"
        )
    return not _started_here


def spawn_driver(
    cfg: RunConfig,
    run_dir: Path,
    method_cls: type[Method],
    resume: bool = False,
    checked: Checked | None = None,
    placement: Placement | None = None,
    warm: bool = False,
) -> tuple[Any, Any]:
    """Preflight (unless already ``checked``), prepare the data, record the config, start the
    client actors and the driver actor that takes them over; returns (driver handle, client
    pool): the driver shuts the pool down, ``shutdown_pool`` is the caller's safety net.
    ``run`` streams its rounds; benchmarks may call ``run_round`` one round at a time.

    ``warm`` (with a ``placement``: a sweep trial): take over the actors an earlier run left
    in the placement group, re-initialised in place, and leave them for the next
    (``orchestrator/warm.py``; the caller hands them back with ``warm.give_back``)."""
    if checked is None:
        checked = preflight(
            cfg, run_dir if resume else None, method_cls, connect=connect_ray, out=run_dir
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    data_path = ensure_data(cfg, run_dir)
    write_json(run_dir / "config.json", cfg.to_dict())
    connect_ray()
    from fedrs.actors.pool import ClientPool
    from fedrs.orchestrator.driver import STATE_DIR

    res = cfg.resources
    state_root = str((run_dir / STATE_DIR).resolve())
    args = (cfg, str(run_dir.resolve()), data_path, method_cls, resume, checked.data.excluded)
    if warm and placement is not None:  # a sweep trial
        return _spawn_warm(cfg, method_cls, data_path, state_root, placement, args)
    if placement is None and res.keep_warm_s > 0 and _ray_outlives_run():
        return _spawn_warm(cfg, method_cls, data_path, state_root, None, args)
    # The client actors start now, while the driver actor starts: each start-up is a process
    # importing torch (and open_clip), seconds that would otherwise add up one after the other.
    # The driver takes the pool over (and shuts it down); should it fail to start, so do they.
    pool = ClientPool(cfg, method_cls, data_path, state_root, placement=placement)
    driver = _driver_class(res)
    if placement is not None:
        driver = driver.options(scheduling_strategy=placement.strategy(placement.driver_bundle))
    elif res.driver_node == "local" and (strategy := driver_strategy(res)) is not None:
        driver = driver.options(scheduling_strategy=strategy)
    try:
        handle = driver.remote(*args, placement, pool)
    except BaseException:
        pool.shutdown()
        raise
    return handle, pool


def _driver_class(res: Any) -> Any:
    # two threads: request_stop (Ctrl-C) must run while run() streams rounds
    from fedrs.orchestrator.driver import Driver

    return ray.remote(
        num_cpus=res.server_num_cpus, num_gpus=res.server_num_gpus, max_concurrency=2
    )(Driver)


def _spawn_warm(
    cfg: RunConfig,
    method_cls: type[Method],
    data_path: str,
    state_root: str,
    placement: Placement | None,
    args: tuple[Any, ...],
) -> tuple[Any, Any]:
    """``spawn_driver`` on warm actors: a sweep trial's (``placement``: resting in its
    placement group) or a run's kept across runs (no ``placement``: the cluster's registry),
    re-initialised in place when they fit; else new ones, kept afterwards."""
    from fedrs.actors.pool import ClientPool
    from fedrs.orchestrator import warm

    if placement is None:
        ws, reused = warm.take_shared(cfg)
        placement = ws.placement
        assert placement is not None
    else:
        ws, reused = warm.take(cfg, placement)
    try:
        ray.get(ws.board.put.remote((cfg.to_dict(), method_cls, data_path, state_root)))
        n = cfg.resources.num_actors
        pool = ClientPool(
            cfg,
            method_cls,
            data_path,
            state_root,
            placement=placement,
            board=ws.board_name,
            **(
                {"warm": list(ws.actors)}  # re-initialised in place
                if reused
                else {"extra": [ws.options(f"client-{i}") for i in range(n)]}  # started
            ),
        )
        if reused:
            # settled here: the driver actor may belong to another job, which cannot read
            # objects this process owns once it has them (Ray reports their owner dead)
            pool.settle()
            try:
                ray.get(ws.driver.reinit.remote(*args, placement, pool))
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, FedrsError):  # one line, as a cold start says it
                    raise exc.cause from None
                raise
        else:
            ws.actors = tuple(pool.actors)
            strategy = placement.strategy(placement.driver_bundle)
            if ws.sid and cfg.resources.driver_node == "local":  # kept across runs: as a run's
                strategy = driver_strategy(cfg.resources) or strategy
            driver = _driver_class(cfg.resources).options(
                scheduling_strategy=strategy, **ws.options("driver")
            )
            ws.driver = driver.remote(*args, placement, pool)
    except BaseException:
        ws.end()
        raise
    log.info(
        "%s actors (run %d on them%s)",
        "warm" if reused else "new",
        ws.runs + 1,
        ", kept across runs" if ws.sid else " in this placement group",
    )
    warm.lend(ws)
    return ws.driver, pool


def driver_strategy(res: Any) -> Any:
    """``resources.driver_node = "local"``: a driver actor that only coordinates (0 CPUs,
    0 GPUs, the default) runs on the node running this process (the head under ``ray job
    submit``). It always fits there, so the affinity is hard: Ray's soft affinity moves an actor
    off a node that is merely busy. None (Ray places it) for a driver that asks for resources:
    pinned, it could wait forever behind the client actors on a full node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if res.server_num_cpus or res.server_num_gpus:
        return None
    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def shutdown_pool(pool: Any) -> None:
    """Release client actors and their placement group whatever state they are in."""
    with contextlib.suppress(Exception):
        pool.shutdown()
