"""``fedrs run``: prepare the run directory and data, connect to Ray, drive the rounds.

Connects to an existing cluster when one is given (``RAY_ADDRESS``, as ``ray job submit`` sets
for its entrypoint) and starts a local one otherwise. The round loop itself runs in the driver
actor; this process streams its per-round metrics and prints progress.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from rich.console import Console

from fedrs.actors.placement import Placement
from fedrs.core.config import RunConfig
from fedrs.errors import ConfigError, FedrsError, remote_error
from fedrs.io import first_missing, fresh_path, write_json
from fedrs.methods import method_class
from fedrs.methods.base import Method
from fedrs.orchestrator import checkpoint
from fedrs.orchestrator import warm as warm_actors
from fedrs.orchestrator.preflight import (
    SYNTH_DIR,
    Checked,
    preflight,
    resume_config,
)
from fedrs.orchestrator.spawn import connect_ray, ensure_data, shutdown_pool, spawn_driver
from fedrs.runlock import LOCK, RunDirBusyError, locked

log = logging.getLogger(__name__)
RUN_FILES = (
    "config.json",
    "metrics.jsonl",
    "summary.json",
    "accuracy.png",
    "mR.png",  # the headline's curve is named by its metric (retrieval: mR)
    "per_class.png",
    "map.png",
    "checkpoint",
    "client_state",
    SYNTH_DIR,
)


def new_run_dir(out: str | None, overwrite: bool = False) -> Path:
    """The run directory for a new run. ``--out`` naming a non-empty folder is an error unless
    ``overwrite`` and the folder is a fedrs run (its files are then replaced); the default
    ``runs/<timestamp>`` never collides with an earlier run."""
    if not out:
        return fresh_path("runs")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory")
    if path.is_dir() and any(p.name != LOCK for p in path.iterdir()):
        is_run = (path / "config.json").is_file()
        if not is_run:
            raise ConfigError(
                f"--out {out} is not empty and holds no fedrs run; choose another directory"
            )
        if not overwrite:
            raise ConfigError(
                f"--out {out} already holds a run; continue it with --resume {out}, or pass "
                f"--overwrite to replace its results"
            )
    return path


def clear_run_files(run_dir: Path) -> None:
    """Remove what an earlier run wrote in ``run_dir`` (``--overwrite``), nothing else."""
    for name in RUN_FILES:
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


class StoppedByUser(KeyboardInterrupt):
    """A run stopped by Ctrl-C / SIGTERM after writing its summary (exit status 130)."""


def finished_summary(run_dir: Path, cfg: RunConfig, completed: int) -> dict[str, Any] | None:
    """The summary of a run that already did everything ``cfg`` asks, else None."""
    summary = run_dir / "summary.json"
    trains = method_class(cfg.method.name).trains
    if not summary.is_file() or (trains and completed < cfg.federation.rounds):
        return None
    try:
        return json.loads(summary.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # damaged: finishing again rewrites it


def run(
    cfg: RunConfig | None = None,
    out: str | None = None,
    resume: str | None = None,
    overrides: list[str] | None = None,
    method_cls: type[Method] | None = None,
    stop_after: int | None = None,
    console: Console | None = None,
    overwrite: bool = False,
    placement: Placement | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
    warm: bool = False,
) -> dict[str, Any]:
    """Run (or resume) a federation; return the summary. ``stop_after`` ends early after that
    round, as an interruption would (tests use it to check resume). ``placement``: run the
    driver and client actors in bundles reserved elsewhere (a sweep trial's placement group);
    ``on_round`` sees every round's record as it arrives; ``stop``, once set, stops the run as
    a first Ctrl-C does (a sweep's trials when the sweep is stopped); ``warm`` (with
    ``placement``): take over and leave warm actors in it (``orchestrator/warm.py``).

    Nothing is written before preflight passes. A run that fails before its first round
    leaves no new directory; one that fails later keeps its checkpoints for ``--resume``."""
    console = console or Console()
    if resume:
        run_dir = Path(resume)
        if not (run_dir / "config.json").is_file():
            resume_config(run_dir, overrides)  # the one-line error for a folder with no run
    else:
        cfg = cfg or RunConfig()
        run_dir = new_run_dir(out, overwrite)
    created = first_missing(run_dir)
    holding = False
    try:
        # one writer per run directory, before preflight and Ray: a second run is one line
        with locked(run_dir, "--resume" if resume else "--out"):
            holding = True
            if resume:
                cfg, completed = resume_config(run_dir, overrides)
                done = finished_summary(run_dir, cfg, completed)
                if done is not None:
                    console.print(
                        f"{run_dir}: already finished ({completed} of {cfg.federation.rounds} "
                        "rounds); nothing to do. Raise federation.rounds (--set "
                        "federation.rounds=N) to train on."
                    )
                    return {**done, "run_dir": str(run_dir), "already_finished": True}
            else:
                new_run_dir(out or str(run_dir), overwrite)  # again, now that it is ours
            return _run_locked(
                cfg,
                run_dir,
                resume,
                method_cls,
                stop_after,
                console,
                overwrite,
                placement,
                on_round,
                stop,
                warm,
            )
    except RunDirBusyError:
        raise  # the folder is another run's: touch nothing
    except BaseException:
        done = (run_dir / checkpoint.DIR / "latest.json").is_file()
        if holding and created is not None and not done:
            shutil.rmtree(created, ignore_errors=True)  # nothing worth resuming: leave no trace
        raise


def _run_locked(
    cfg: RunConfig,
    run_dir: Path,
    resume: str | None,
    method_cls: type[Method] | None,
    stop_after: int | None,
    console: Console,
    overwrite: bool,
    placement: Placement | None,
    on_round: Callable[[dict[str, Any]], None] | None,
    stop: threading.Event | None = None,
    keep_warm: bool = False,
) -> dict[str, Any]:
    """``run`` once the run directory is locked: preflight, the actors, the rounds."""
    clock = StartupClock()
    # the synthetic default is built while Ray starts (once the other checks have passed)
    data = _Background(ensure_data, cfg, run_dir) if not cfg.data.path and not resume else None
    try:
        checked = preflight(
            cfg,
            run_dir if resume else None,
            method_cls,
            connect=clock.timed(connect_ray, before=data.start if data else None),
            out=run_dir,
        )
    finally:  # a failed check: the build ends before the run's folder is cleaned up
        if data is not None:
            data.join()
    if data is not None:
        data.result()
    clock.mark("preflight")
    if overwrite and not resume:
        clear_run_files(run_dir)
    driver, pool = spawn_driver(
        cfg,
        run_dir,
        checked.method_cls,
        bool(resume),
        checked=checked,
        placement=placement,
        warm=keep_warm,
    )
    clock.mark("spawn")
    try:
        return _stream(driver, pool, checked, run_dir, stop_after, console, on_round, stop, clock)
    except StoppedByUser:
        raise  # the console said where it stopped and how to go on
    except BaseException:  # after the driver started: what can be resumed is said
        if (run_dir / checkpoint.DIR / "latest.json").is_file():
            log.warning("the run stopped; continue it with: fedrs run --resume %s", run_dir)
        raise


def _stream(
    driver: Any,
    pool: Any,
    checked: Checked,
    run_dir: Path,
    stop_after: int | None,
    console: Console,
    on_round: Callable[[dict[str, Any]], None] | None,
    stop: threading.Event | None = None,
    clock: StartupClock | None = None,
) -> dict[str, Any]:
    """``_drive`` with the driver's errors as one line and its actors always released (or
    kept warm for a sweep's next trial when the run ended cleanly)."""
    summary = None
    try:
        summary = _drive(driver, checked, run_dir, stop_after, console, on_round, stop, clock)
        return summary
    except KeyboardInterrupt:  # after a stop, or a second Ctrl-C: end the actors now
        ray.kill(driver)
        shutdown_pool(pool)
        raise
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, FedrsError):  # one line for the user, not a traceback
            raise exc.cause from None
        raise
    except ray.exceptions.RayActorError as exc:  # the driver actor failed to start
        started = remote_error(exc)
        if started is not None:
            raise started from None
        raise
    finally:  # free the actors' reserved resources, also after a failed round
        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(driver.shutdown.remote(), timeout=30)
        # kept for a sweep's next trial, or ended
        if not warm_actors.give_back(driver, ok=summary is not None):
            ray.kill(driver)
            shutdown_pool(pool)  # a driver that never started (or hung) released nothing


def _stop_on(stop: threading.Event, ended: threading.Event, stop_soon: Callable[[], int]) -> None:
    """Call ``stop_soon`` once ``stop`` is set, unless the rounds ``ended`` first."""
    while not ended.is_set():
        if stop.wait(0.25):
            if not ended.is_set():
                stop_soon()
            return


def _drive(
    driver: Any,
    checked: Checked,
    run_dir: Path,
    stop_after: int | None,
    console: Console,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
    clock: StartupClock | None = None,
) -> dict[str, Any]:
    """Stream the driver's rounds to the console; finish the run and return its summary."""
    cfg = checked.cfg
    actors = ray.get(driver.describe_actors.remote())
    clock = clock or StartupClock()
    clock.mark("actors_up")
    driver_startup = ray.get(driver.describe_startup.remote())
    devices = sorted({a["device"] for a in actors})
    excluded = checked.data.excluded
    console.print(
        f"[bold]fedrs[/] {cfg.method.name} + {checked.strategy.describe()}: {len(actors)} "
        f"client actors ({', '.join(devices)}), {cfg.federation.rounds} rounds x "
        + (
            f"{cfg.federation.clients_per_round} of {checked.data.regions} regions "
            f"({checked.registered} partner organisations)"
            if checked.data.regions
            else f"{cfg.federation.clients_per_round} of {checked.registered} clients"
        )
        + (f" ({len(excluded)} left out: damaged shards)" if excluded else "")
        + f"; weights: {checked.weights} -> {run_dir}"
    )
    head = checked.method_cls.headline
    stopping = threading.Event()

    def stop_soon() -> int:
        stopping.set()
        return ray.get(driver.request_stop.remote())

    ended = threading.Event()
    if stop is not None:  # set from elsewhere (a sweep being stopped): as a first Ctrl-C
        threading.Thread(target=_stop_on, args=(stop, ended, stop_soon), daemon=True).start()
    rounds = iter(driver.run.options(num_returns="streaming").remote(stop_after))
    try:
        while True:
            try:
                rec = ray.get(next(rounds))
            except StopIteration:
                break
            except KeyboardInterrupt:  # the first Ctrl-C / SIGTERM: stop soon, keep what is done
                if stopping.is_set():
                    raise  # the second: at once (the last checkpoint is whole: atomic writes)
                last = stop_soon()
                console.print(
                    f"stopping: the round in flight is abandoned unless already aggregated; the "
                    f"run ends after round {last} or the next (Ctrl-C again to exit at once)"
                )
                continue
            console.print(_progress_line(rec, cfg.federation.rounds, head))
            clock.round_started(float(rec.get("wall_s") or 0.0))
            if on_round is not None:
                on_round(rec)
    finally:
        ended.set()
    if stop_after is not None:
        return {"stopped_after": stop_after, "run_dir": str(run_dir)}
    summary = ray.get(driver.finish.remote())
    if stopping.is_set():
        done = summary["rounds_completed"]
        console.print(
            f"stopped after round {done} of {cfg.federation.rounds}: summary.json and plots "
            f"written; continue with: fedrs run --resume {run_dir}"
            if done
            else "stopped before round 1 ended: nothing to resume (a new run's folder is removed)"
        )
        raise StoppedByUser
    summary["run_dir"] = str(run_dir)
    summary["startup"] = clock.split(driver_startup, actors)
    write_json(run_dir / "summary.json", summary)  # with where the start went
    summary["actors"] = actors  # where they ran (node, placement group, device)
    summary["driver_placement_group_id"] = ray.get(driver.placement_group_id.remote())
    summary["driver_node_id"] = ray.get(driver.node_id.remote())
    acc, best = summary["final"].get(head), summary[f"best_{head}"]
    console.print(
        f"done: {head} {_fmt(acc)} (best {_fmt(best)}); "
        f"{int(summary['totals']['bytes_up']):,} B up, {int(summary['totals']['bytes_down']):,} B "
        f"down; files in {run_dir}"
    )
    return summary


class StartupClock:
    """Where a run's start went, by phase, for ``summary.json``'s ``startup``: ``preflight_s``
    (checks and data reads, Ray excluded; the synthetic default's build, which runs while Ray
    starts, where it takes longer), ``ray_s`` (Ray joined or started), ``spawn_s`` (the
    data built if needed, the config written, the actors asked for; warm: re-initialised),
    ``actors_up_s`` (until every actor answered), ``until_round_1_s`` (everything before round
    1 began); from the actors' own records, after ``spawn_s``: ``actor_process_s`` (the
    slowest actor's process up and its imports done; 0 when warm), ``actor_setup_s`` (data
    opened, method built), ``backbone_s`` (of which the backbone: open_clip's import and the
    model built, or 0 when cached), ``driver_process_s`` and ``first_params_s`` (the driver's
    first call to the actors: it waits for them)."""

    def __init__(self) -> None:
        self.t0 = time.time()
        self.marks: dict[str, float] = {}
        self.ray_s = 0.0
        self.round_1: float | None = None

    def timed(
        self, connect: Callable[[], None], before: Callable[[], None] | None = None
    ) -> Callable[[], None]:
        """``connect``, timed; ``before`` is called first (not timed)."""

        def call() -> None:
            if before is not None:
                before()
            t = time.time()
            connect()
            self.ray_s += time.time() - t

        return call

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()

    def round_started(self, wall_s: float) -> None:
        if self.round_1 is None:
            self.round_1 = time.time() - wall_s

    def split(self, driver: dict[str, Any], actors: list[dict[str, Any]]) -> dict[str, Any]:
        m, t0 = self.marks, self.t0
        spawned = m.get("spawn", t0)
        starts = [a.get("startup") or {} for a in actors]

        def slowest(values: list[float]) -> float:
            return round(max(values, default=0.0), 3)

        return {
            "preflight_s": round(m.get("preflight", t0) - t0 - self.ray_s, 3),
            "ray_s": round(self.ray_s, 3),
            "spawn_s": round(spawned - m.get("preflight", t0), 3),
            "actors_up_s": round(m.get("actors_up", spawned) - spawned, 3),
            "until_round_1_s": round((self.round_1 or time.time()) - t0, 3),
            "actor_process_s": slowest([max(0.0, s["started_at"] - spawned) for s in starts if s]),
            "actor_setup_s": slowest([s["setup_s"] for s in starts if s]),
            "backbone_s": slowest([s.get("method_s", 0.0) for s in starts if s]),
            "driver_process_s": round(max(0.0, driver.get("started_at", t0) - spawned), 3),
            "first_params_s": round(driver.get("first_params_s", 0.0), 3),
            # what each process imported of torch, torchvision, open_clip, flwr
            "driver_modules": driver.get("heavy_modules", []),
            "actor_modules": sorted({m for s in starts for m in s.get("heavy_modules", [])}),
        }


class _Background:
    """``fn(*args)`` in a thread once ``start`` is called; ``result`` waits and re-raises."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn, self.args = fn, args
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        def work() -> None:
            try:
                self.fn(*self.args)
            except BaseException as exc:  # re-raised by result()
                self.error = exc

        self.thread = threading.Thread(target=work, name="fedrs-data", daemon=True)
        self.thread.start()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()

    def result(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _progress_line(rec: dict[str, Any], rounds: int, head: str = "accuracy") -> str:
    parts = [f"round {rec['round']:>3}/{rounds}"]
    short = {"accuracy": "acc"}.get(head, head)
    for key, label in (
        (head, short),
        ("balanced_accuracy", "AA"),  # scenes and long tails: per-class mean, and kappa
        ("kappa", "kappa"),
        (f"personalized_{head}", "pers"),
        ("loss", "loss"),
    ):
        if key in rec:
            parts.append(f"{label} {_fmt(rec[key])}")
    if rec.get("collapsed"):
        parts.append(f"[yellow]collapsed: {rec['collapsed']}[/]")
    parts.append(f"ok {rec.get('clients_ok', 0)}")
    if rec.get("clients_failed") or rec.get("clients_rejected"):
        parts.append(f"[red]failed {rec['clients_failed']} rejected {rec['clients_rejected']}[/]")
    parts.append(f"{rec.get('wall_s', 0):.1f}s")
    return "  ".join(parts)
