"""What a sweep shows while it runs: a trial's wall time split by phase (``RunClock``), its
rounds reported to Tune, and one console line per trial event (``SweepProgress``)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback

from fedrs.errors import FedrsError
from fedrs.io import write_json
from fedrs.orchestrator.sweep.spec import STATUS, TRIALS, Trial, axes_text
from fedrs.orchestrator.sweep.store import carried_rows, trial_status

log = logging.getLogger(__name__)


class RunClock:
    """Where a run's wall time goes, from the moments its round records arrive: ``start_s``
    (preflight, driver and actor spawn, backbone, first parameters: before round 1 began),
    ``rounds_s`` (the rounds themselves, as the driver timed them), ``finish_s`` (summary,
    plot, actor shutdown); ``data_s`` is set by the caller."""

    def __init__(self, report: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.t0 = time.perf_counter()
        self.report = report
        self.marks: list[tuple[float, float]] = []  # (arrival since t0, the round's wall_s)
        self.data_s = 0.0

    def on_round(self, rec: dict[str, Any]) -> None:
        self.marks.append((time.perf_counter() - self.t0, float(rec.get("wall_s") or 0.0)))
        if self.report is not None:
            self.report(rec)

    def split(self) -> dict[str, float]:
        total = time.perf_counter() - self.t0
        if not self.marks:
            return {"total_s": total, "data_s": self.data_s}
        first_arrival, first_wall = self.marks[0]
        return {
            "total_s": total,
            "data_s": self.data_s,
            "start_s": max(0.0, first_arrival - first_wall - self.data_s),
            "rounds_s": sum(w for _, w in self.marks),
            "finish_s": total - self.marks[-1][0],
        }


def report_round(rec: dict[str, Any]) -> None:
    from ray import tune

    tune.report({k: v for k, v in rec.items() if is_number(v)})


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def is_finished(sweep_dir: Path, trial: Trial) -> bool:
    from fedrs.orchestrator.checkpoint import latest_round
    from fedrs.orchestrator.runner import finished_summary

    if trial.name in carried_rows(sweep_dir):
        return True
    run_dir = sweep_dir / TRIALS / trial.name
    try:
        return finished_summary(run_dir, trial.cfg, latest_round(run_dir)) is not None
    except FedrsError:  # a damaged checkpoint: the trial runs again and says why
        return False


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.4 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class SweepProgress(Callback):
    """Console progress from Tune's trial events: done / running / failed, the best so far
    and, once a trial has ended in this process, the time left at the rate trials end here
    (trials finished / time since the first started, so concurrency counts)."""

    def __init__(
        self,
        console: Any,
        trials: list[Trial],
        sweep_dir: Path,
        metric: str,
        mode: str,
        round_lines: bool = True,
    ) -> None:
        self.console, self.total, self.metric, self.mode = console, len(trials), metric, mode
        self.round_lines = round_lines  # a line per trial round too, not only per trial event
        self.sweep_dir = sweep_dir
        self.axes = {t.name: t.axes for t in trials}
        self.trials = trials
        self.done = sum(is_finished(sweep_dir, t) for t in trials)
        self.running: set[str] = set()
        self.failed = 0
        self.best: tuple[float, str] | None = None
        self.clock = time.monotonic
        self.first_start: float | None = None  # of the trials this process runs
        self.ended = 0  # trials of this process that finished (a quick failure is no rate)
        for t in trials:  # a resumed sweep: the best round of the trials already finished
            if is_finished(sweep_dir, t):
                with contextlib.suppress(OSError, ValueError):
                    for line in (sweep_dir / TRIALS / t.name / "metrics.jsonl").open():
                        self.seen(t.name, json.loads(line))

    def seen(self, name: str, result: dict[str, Any]) -> None:
        value = result.get(self.metric)
        if is_number(value) and (
            self.best is None or (value > self.best[0]) == (self.mode == "max")
        ):
            self.best = (float(value), name)

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks; a console won't
        return {k: v for k, v in self.__dict__.items() if k != "console"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from rich.console import Console

        self.__dict__.update(state)
        self.console = Console()

    def line(self, what: str) -> None:
        best = (
            f"best {self.metric} {self.best[0]:.4f} "
            f"({axes_text(self.axes[self.best[1]], short=True)})"
            if self.best
            else f"best {self.metric} -"
        )
        self.console.print(
            f"[{self.done}/{self.total} done, {len(self.running)} running, {self.failed} failed] "
            f"{what} | {best}{self.left()}",
            soft_wrap=True,
            highlight=False,
        )

    def left(self) -> str:
        """`` | ~12 min left``: the trials not yet ended at the rate trials finish in this
        process; empty before one has finished."""
        todo = self.total - self.done - self.failed
        if todo <= 0 or not self.ended or self.first_start is None:
            return ""
        rate = self.ended / max(self.clock() - self.first_start, 1e-9)
        return f" | ~{duration(todo / rate)} left"

    def _table(self) -> None:
        """Rewrite the results table as each trial ends (an interrupted sweep keeps it)."""
        from fedrs.orchestrator.sweep.results import write_results

        try:
            write_results(self.sweep_dir, self.trials, self.metric)
        except OSError as exc:  # a full disk must not stop the trials still running
            log.warning("could not update the results table: %s", exc)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.first_start is None:
            self.first_start = self.clock()
        self.running.add(trial.config["trial"])
        self.line(f"started {trial.config['trial']}")

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        name = trial.config["trial"]
        self.seen(name, result)
        if self.round_lines and result.get("round") is not None:
            self.line(f"{name} round {int(result['round'])}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        name = trial.config["trial"]
        self.running.discard(name)
        state = trial_status(self.sweep_dir, name).get("status")
        if state == "finished":
            self.done += 1
            self.ended += 1
        what = {"finished": "finished", "stopped": "stopped"}.get(state, "not started")
        self.line(f"{what} {name}")
        self._table()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        name = trial.config["trial"]
        self.running.discard(name)
        self.failed += 1
        status = trial_status(self.sweep_dir, name)
        if status.get("status") != "failed":  # its process died: it could not say so itself
            lines = str(getattr(trial, "error_msg", "") or "").strip().splitlines()
            last = next((x for x in reversed(lines) if x.strip()), "the trial's process died")
            write_json(
                self.sweep_dir / STATUS / f"{name}.json",
                {**status, "status": "failed", "error": last.strip()[:500]},
            )
        self.line(
            f"[red]FAILED[/] {name}: {trial_status(self.sweep_dir, name).get('error')} "
            f"(traceback: {Path(trial.path or '.') / 'error.txt'})"
        )
        self._table()
