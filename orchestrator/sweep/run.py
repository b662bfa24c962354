"""Heterogeneity sweeps: many fedrs runs as Ray Tune trials (``fedrs sweep``).

    fedrs sweep SWEEP.toml [--set k=v ...] [--out DIR]      # a new sweep
    fedrs sweep SWEEP.toml --set AXIS=VALUE ... --out DIR    # one cell: the sweep's own trial
    fedrs sweep --resume DIR                                 # finish an interrupted one
    fedrs sweep report DIR                                   # table, heatmap, curves

The sweep file holds ``[base]`` (a run config exactly as a ``fedrs run`` TOML), ``[grid]``
(dotted run-config keys -> lists of values; every combination is a trial), optionally
``[random]`` (keys -> ``{choice = [...]}``, ``{uniform = [lo, hi]}``, ``{loguniform = [lo,
hi]}`` or ``{randint = [lo, hi]}``, drawn ``sweep.num_samples`` times per grid point),
``[build]`` (``fedrs data build`` options: ``sources``, ``image_size``, ...; each trial's
partition comes from its ``data.*`` keys and ``federation.seed``) and ``[sweep]`` (``metric``,
``mode``, ``num_samples``, ``seed``, ``max_concurrent``, ``max_retries``, ``warm``). A grid
value may be a table when the key is a section (``method = [{name = "A"}, {name = "B", option =
1}]``): it replaces that section of the base; under a free name (``arm = [{label = "fedprox",
"method.name" = "student", "strategy.name" = "fedprox"}, ...]``) its keys are set together.

Trials are expanded once, deterministically, and stored in ``DIR/sweep.json``; Ray Tune only
schedules them. Each trial is a whole fedrs run (``DIR/trials/NAME``) whose driver and client
actors live in the trial's own placement group (``actors.pool.trial_bundles``: fractional GPUs
as in ``fedrs run``), so Tune starts as many trials at once as the cluster's free resources
hold. A trial that fails is recorded with its one-line error (``DIR/status/NAME.json``) and the
others go on. Tune reuses a trainable and its placement group for the next trial of the same
shape, and with ``sweep.warm`` (the default) that trial also takes over the driver and client
actors the last one left there, re-initialised in place (``orchestrator/warm.py``: no process
start, import or backbone build again; results identical to cold trials). ``--resume`` submits
only the trials that have not finished, continuing an interrupted one from its checkpoint.
Trials that need the same data build share one, built once under a file lock in ``DIR/builds``.
Results: ``DIR/results.parquet`` and ``.csv``, one row per trial (rewritten as trials end);
TensorBoard event files per trial under ``DIR/tune`` (Tune's loggers); MLflow when asked
(``--mlflow URI``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from fedrs.io import write_json
from fedrs.orchestrator.sweep.builds import ensure_build
from fedrs.orchestrator.sweep.progress import RunClock, SweepProgress, is_finished, report_round
from fedrs.orchestrator.sweep.results import carry
from fedrs.orchestrator.sweep.spec import (
    BUILDS,
    CARRIED,
    STATUS,
    STOP,
    TRIALS,
    TUNE,
    SweepError,
    SweepResult,
    Trial,
    axes_text,
    expand,
    headline,
    load_sweep,
)
from fedrs.orchestrator.sweep.store import load_trials, new_sweep_dir, row_axes, write_spec

log = logging.getLogger(__name__)


def run_trial(
    config: dict[str, Any],
    sweep_dir: str,
    trials: dict[str, Trial],
    build: dict[str, Any],
    warm: bool = True,
) -> None:
    """Tune's trainable: one fedrs run in the trial's placement group; ``warm``: on the
    actors the trainable's last trial left there when they fit (``orchestrator/warm.py``)."""
    import ray
    from rich.console import Console

    from fedrs.actors.placement import Placement, trial_bundles
    from fedrs.orchestrator.checkpoint import latest_round
    from fedrs.orchestrator.runner import StoppedByUser, run

    root = Path(sweep_dir)
    if (root / STOP).exists():  # the sweep is stopping: a trial not yet started stays pending
        report_round({"not_started": 1})  # (a result, so that Tune prints nothing of its own)
        return
    trial = trials[config["trial"]]
    status = root / STATUS / f"{trial.name}.json"
    clock = RunClock(report_round)
    record: dict[str, Any] = {"status": "running", "started": time.time(), "node": os.uname()[1]}
    stop, ended = threading.Event(), threading.Event()
    threading.Thread(target=_watch_stop, args=(root / STOP, stop, ended), daemon=True).start()
    try:
        write_json(status, record)
        data_path = ensure_build(trial.cfg, build, root / BUILDS)
        cfg = trial.cfg.replace(**{"data.path": data_path})
        clock.data_s = time.perf_counter() - clock.t0
        pg = ray.util.get_current_placement_group()
        placement = None
        if pg is not None:
            _, first = trial_bundles(cfg)
            placement = Placement(pg, driver_bundle=0, first_client_bundle=first)
            record["placement_group_id"] = pg.id.hex()
        run_dir = root / TRIALS / trial.name
        resume = latest_round(run_dir) > 0
        summary = run(
            None if resume else cfg,
            out=None if resume else str(run_dir),
            resume=str(run_dir) if resume else None,
            overwrite=not resume and run_dir.is_dir(),
            placement=placement,
            on_round=clock.on_round,
            console=Console(quiet=True),
            stop=stop,
            warm=warm and placement is not None,
        )
        record |= {
            "status": "finished",
            "resumed": resume,
            "actors": summary.get("actors", []),
            "driver_placement_group_id": summary.get("driver_placement_group_id"),
        }
    except StoppedByUser:  # the sweep was stopped: summary and checkpoint of the last round
        record |= {"status": "stopped", "rounds_completed": latest_round(run_dir)}
    except BaseException as exc:
        text = str(exc).strip().splitlines()
        record |= {
            "status": "failed",
            "error": f"{type(exc).__name__}: {text[-1] if text else ''}".rstrip(": "),
        }
        raise
    finally:
        ended.set()
        timing = clock.split()
        record |= {"wall_s": timing["total_s"], "timing": timing}
        write_json(status, record)


def _watch_stop(marker: Path, stop: threading.Event, ended: threading.Event) -> None:
    """Set ``stop`` when the sweep's stop marker appears (polled), until the trial ``ended``."""
    while not ended.wait(0.25):
        if marker.exists():
            stop.set()
            return


def run_sweep(
    path: str | None = None,
    out: str | None = None,
    resume: str | None = None,
    overrides: list[str] | None = None,
    mlflow: str | None = None,
    console: Any = None,
    done: str | list[str] | None = None,
    round_lines: bool = True,
) -> SweepResult:
    """Run (or resume) a sweep; return where it is and how many trials finished or failed.
    Results are written as trials end. ``done``: stored ``results.csv`` files of this sweep (a
    study run across machines) whose finished trials are taken as they are, not run again.
    ``round_lines``: a progress line per trial round too (else per trial event only)."""
    from rich.console import Console

    from fedrs.orchestrator.sweep.results import write_results

    console = console or Console()
    if mlflow:
        _check_mlflow(mlflow)
    sweep, trials, sweep_dir = _open(path, out, resume, overrides)
    carried = carry(trials, done) if done else {}
    if carried:
        write_json(sweep_dir / CARRIED, carried)
    todo = [t for t in trials if not is_finished(sweep_dir, t)]
    _preflight(todo)  # before anything is written: what no trial could run is one line now
    if not resume:
        write_spec(sweep_dir, sweep, trials)
    sweep_dir = sweep_dir.resolve()
    finished = len(trials) - len(todo)
    console.print(
        f"[bold]fedrs sweep[/] {len(trials)} trials over {', '.join(sweep.axes) or 'no axes'}"
        + (f"; {finished} already finished, {len(todo)} to run" if finished else "")
        + f" -> {sweep_dir}",
        soft_wrap=True,
    )
    metric = sweep.options.metric or headline(trials[0].cfg)
    if not todo:
        write_results(sweep_dir, trials, metric)
        return SweepResult(sweep_dir, len(trials), len(trials), 0)
    callbacks: list[Any] = [
        SweepProgress(console, trials, sweep_dir, metric, sweep.options.mode, round_lines)
    ]
    if mlflow:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(MLflowLoggerCallback(tracking_uri=mlflow, experiment_name=sweep_dir.name))
    tuner = _tuner(sweep, todo, sweep_dir, callbacks)
    quiet = logging.getLogger("ray.tune")  # our progress lines say it; tracebacks: error.txt
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        with _stop_on_signal(sweep_dir / STOP, console):
            tuner.fit()
    finally:
        quiet.setLevel(level)
        stopped = (sweep_dir / STOP).exists()
        (sweep_dir / STOP).unlink(missing_ok=True)
        rows = write_results(sweep_dir, trials, metric)
    return _report(console, sweep, sweep_dir, rows, stopped)


def _check_mlflow(uri: str) -> None:
    """SweepError (one line) unless MLflow is installed and its tracking store answers."""
    try:
        import mlflow
        from ray.air.integrations.mlflow import MLflowLoggerCallback  # noqa: F401
    except ImportError:
        raise SweepError("--mlflow needs MLflow: pip install 'fedrs[mlflow]'") from None
    try:  # a store MLflow refuses is one line now, not a traceback from inside Tune
        mlflow.set_tracking_uri(uri)
        mlflow.search_experiments(max_results=1)
    except Exception as exc:
        first = str(exc).strip().split(". ")[0]
        raise SweepError(f"--mlflow {uri}: {first}") from None


def _open(
    path: str | None, out: str | None, resume: str | None, overrides: list[str] | None
) -> tuple[Any, list[Trial], Path]:
    """(sweep, its trials, its directory): stored ones with ``resume``, else expanded from the
    sweep file into a new directory."""
    if resume:
        if overrides:
            raise SweepError("--resume continues the stored sweep: drop --set")
        sweep, trials = load_trials(Path(resume))
        return sweep, trials, Path(resume)
    if path is None:
        raise SweepError("give a sweep file (SWEEP.toml) or --resume DIR")
    sweep = load_sweep(path, overrides)
    return sweep, expand(sweep), new_sweep_dir(out, path)


def _preflight(todo: list[Trial]) -> None:
    """One line, before any trial starts, for weights that are missing or a trial that no
    node of the cluster can host."""
    from fedrs.orchestrator.preflight import (
        ClusterError,
        check_weights,
        cluster_nodes,
        placement_problem,
    )
    from fedrs.orchestrator.spawn import connect_ray

    for arch, weights in dict.fromkeys((t.cfg.model.arch, t.cfg.model.pretrained) for t in todo):
        check_weights(arch, weights)  # a missing checkpoint is one line, not a failed trial each
    if not todo:
        return
    connect_ray()
    nodes = cluster_nodes()
    for t in todo:
        problem = placement_problem(t.cfg, nodes, driver_in_group=True)
        if problem:
            raise ClusterError(f"trial {t.name} ({axes_text(t.axes)}): {problem}")


def _tuner(sweep: Any, todo: list[Trial], sweep_dir: Path, callbacks: list[Any]) -> Any:
    """A Ray Tune ``Tuner`` over the trials to run: one placement group per trial (the run's
    own bundles behind an empty head), actors reused, failures retried as the sweep says."""
    from ray import tune

    from fedrs.actors.placement import trial_bundles

    by_name = {t.name: t for t in todo}

    def resources(spec: dict[str, Any]) -> Any:
        cfg = by_name[spec["trial"]].cfg
        bundles, _ = trial_bundles(cfg)
        # an empty head bundle: Tune's trainable (which only waits on the driver) reserves
        # nothing, so a trial costs exactly what `fedrs run` would
        return tune.PlacementGroupFactory([{}, *bundles], strategy=cfg.resources.placement_strategy)

    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            sweep_dir=str(sweep_dir),
            trials=by_name,
            build=sweep.build,
            warm=sweep.options.warm,
        ),
        resources,
    )
    attempt = 1 + sum(1 for _ in (sweep_dir / TUNE).glob("attempt-*"))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no Tune banner: the lines above say it
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Ctrl-C is ours: trials end gracefully
    (sweep_dir / STOP).unlink(missing_ok=True)  # a stop of an earlier attempt is over
    return tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search([t.name for t in todo])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=sweep.options.max_concurrent or None,
            reuse_actors=True,  # a trainable process (imports done) serves trial after trial
            trial_dirname_creator=lambda tr: tr.config["trial"],
            trial_name_creator=lambda tr: tr.config["trial"],
        ),
        run_config=tune.RunConfig(
            name=f"attempt-{attempt}",
            storage_path=str(sweep_dir / TUNE),
            failure_config=tune.FailureConfig(max_failures=sweep.options.max_retries),
            verbose=0,
            callbacks=callbacks,
        ),
    )


def _report(
    console: Any, sweep: Any, sweep_dir: Path, rows: list[dict[str, Any]], stopped: bool
) -> SweepResult:
    """The closing lines: how many trials finished, failed, stopped or were not run, and why
    each failed one did."""
    failed = [r for r in rows if r["status"] == "failed"]
    finished = sum(r["status"] == "finished" for r in rows)
    cut = sum(r["status"] == "stopped" for r in rows)
    total = len(rows)
    left = total - finished - len(failed)
    console.print(
        (
            f"sweep done: {finished} finished, {len(failed)} failed of {total}"
            if not left
            else f"sweep stopped{' by Ctrl-C / SIGTERM' if stopped else ''}: {finished} finished, "
            f"{len(failed)} failed, {cut} stopped after a complete round, {left - cut} not run "
            f"of {total}; continue with fedrs sweep --resume {sweep_dir}"
        )
        + f"; results in {sweep_dir / 'results.csv'}",
        soft_wrap=True,
    )
    for r in failed:
        console.print(
            f"  [red]failed[/] {r['trial']} ({axes_text(row_axes(r, sweep))}): {r['error']}",
            soft_wrap=True,
        )
    return SweepResult(sweep_dir, total, finished, len(failed), stopped)


@contextlib.contextmanager
def _stop_on_signal(marker: Path, console: Any) -> Any:
    """While Tune runs: the first Ctrl-C / SIGTERM writes the stop ``marker`` (each running
    trial then ends after its round in flight, with summary and checkpoint; trials not yet
    started stay pending); a second one exits at once."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        if marker.exists():
            raise KeyboardInterrupt
        write_json(marker, {"signal": signum, "time": time.time()})
        console.print(
            "stopping the sweep: running trials end after their round in flight, the rest "
            "stay pending (Ctrl-C again to exit at once)"
        )

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in previous:
            signal.signal(sig, handler)
    except ValueError:  # not the main thread: signals stay as they are
        previous = {}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
