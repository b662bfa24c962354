"""A sweep's results table (``results.parquet`` + ``results.csv``, one row per trial: axes,
``status``, ``error``, every number of the final round as ``final_<key>``, ``best_<headline>``,
``rounds_completed``, bytes, ``wall_s``, ``run_dir``, ``config_sha``), read back from a sweep
folder or from a stored copy kept beside the sweep file."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedrs.io import atomic_open, write_bytes
from fedrs.orchestrator.sweep.spec import TRIALS, SweepError, Trial, axes_text, label
from fedrs.orchestrator.sweep.store import carried_rows, config_sha, trial_status

RESULTS = "results"

BOOKKEEPING = ("round", "clients", "clients_ok", "clients_failed", "clients_rejected")


def as_number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def trial_row(sweep_dir: Path, trial: Trial, metric: str) -> dict[str, Any]:
    """One trial's row (from its run directory and status file, or as carried in)."""
    carried = carried_rows(sweep_dir).get(trial.name)
    if carried is not None:
        return carried
    run_dir = sweep_dir / TRIALS / trial.name
    status = trial_status(sweep_dir, trial.name)
    row: dict[str, Any] = {"trial": trial.name}
    row |= {k: label(v) if isinstance(v, dict) else v for k, v in trial.axes.items()}
    summary: dict[str, Any] = {}
    with contextlib.suppress(OSError, json.JSONDecodeError):
        summary = json.loads((run_dir / "summary.json").read_text())
    state = status.get("status", "pending")
    if summary and summary.get("rounds_completed", 0) >= trial.cfg.federation.rounds:
        state = "finished"
    row["status"] = state
    row["error"] = status.get("error") if state == "failed" else None
    final = summary.get("final", {})
    for key, value in final.items():
        if key not in BOOKKEEPING and as_number(value) is not None:
            row[f"final_{key}"] = as_number(value)
    head = summary.get("headline", metric)
    row[f"best_{head}"] = as_number(summary.get(f"best_{head}"))
    totals = summary.get("totals", {})
    row["rounds_completed"] = summary.get("rounds_completed", 0)
    if "time_to_target_s" in summary:  # [system] target_accuracy: virtual s (None: never)
        row["final_time_to_target_s"] = as_number(summary["time_to_target_s"])
    row["bytes_up"] = as_number(totals.get("bytes_up"))
    row["bytes_down"] = as_number(totals.get("bytes_down"))
    row["wall_s"] = as_number(status.get("wall_s"))
    row["run_dir"] = str(run_dir)
    row["config_sha"] = config_sha(trial.cfg)
    return row


def columns(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


def write_results(sweep_dir: Path, trials: list[Trial], metric: str) -> list[dict[str, Any]]:
    """Rewrite ``results.parquet`` and ``results.csv`` (atomically); return the rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [trial_row(sweep_dir, t, metric) for t in trials]
    cols = columns(rows)
    table: dict[str, list[Any]] = {c: [r.get(c) for r in rows] for c in cols}
    for col, values in table.items():  # one type per column: numbers as float, else text
        present = [v for v in values if v is not None]
        if present and all(as_number(v) is not None for v in present):
            if not all(isinstance(v, int) for v in present):
                table[col] = [None if v is None else float(v) for v in values]
        elif present:
            table[col] = [None if v is None else str(v) for v in values]
    buf = io.BytesIO()
    pq.write_table(pa.table(table), buf)
    write_bytes(sweep_dir / f"{RESULTS}.parquet", buf.getvalue())
    with atomic_open(sweep_dir / f"{RESULTS}.csv", "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def read_results(sweep_dir: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    path = sweep_dir / f"{RESULTS}.parquet"
    if not path.is_file():
        raise SweepError(f"{sweep_dir} has no {path.name} yet (no trial has ended)")
    return pq.read_table(path).to_pylist()


# columns that are text even when they read as numbers (a config_sha of hex digits only,
# "418061091865", or "123e45678901")
TEXT = ("trial", "status", "error", "run_dir", "config_sha")


def _typed(text: str) -> Any:
    """A CSV cell as it was written: empty -> None, numbers -> int / float, else the text."""
    if text == "":
        return None
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    return text


def read_stored(path: str | Path) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """A study's stored ``results.csv`` (kept in the repository beside its sweep file): the
    rows, the axes (the columns between ``trial`` and ``status``) and the sweep file's
    ``[sweep]`` + ``[report]`` tables when ``NAME.toml`` sits beside ``NAME.results.csv``."""

    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: missing (no such results file)")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = list(reader.fieldnames or [])
        rows = [{k: v if k in TEXT and v else _typed(v) for k, v in r.items()} for r in reader]
    if cols[:1] != ["trial"] or "status" not in cols:
        raise SweepError(f"{path}: not a sweep's results.csv (no trial / status columns)")
    axes = cols[1 : cols.index("status")]
    settings: dict[str, Any] = {}
    sweep_file = path.with_name(path.name.removesuffix(".results.csv") + ".toml")
    if path.name.endswith(".results.csv") and sweep_file.is_file():
        data = tomllib.loads(sweep_file.read_text())
        from fedrs.orchestrator.sweep.spec import check_report_table

        settings = {
            "sweep": data.get("sweep", {}),
            "report": check_report_table(data.get("report", {})),
        }
    return rows, axes, settings


def trial_finder(trials: list[Trial]) -> Callable[[str], Trial | None]:
    """``find(name)``: the trial of this sweep a stored row's name (``t007-3f9a2c``) is, by
    its full name, else by its axes' digest (the part after the index) when one trial has it:
    a trial keeps its stored row when values added to the grid (or a grid cut to one cell)
    move its index."""
    names = {t.name: t for t in trials}
    digests: dict[str, list[Trial]] = {}
    for t in trials:
        digests.setdefault(t.name.partition("-")[2], []).append(t)

    def find(name: str) -> Trial | None:
        found = digests.get(name.partition("-")[2], [])
        return names.get(name) or (found[0] if len(found) == 1 else None)

    return find


def same_axes(row: dict[str, Any], trial: Trial) -> bool:
    """A stored row's axis columns name ``trial``'s values (as ``trial_row`` wrote them)."""
    return all(
        label(row[k]) == label(label(v) if isinstance(v, dict) else v)
        for k, v in trial.axes.items()
        if k in row
    )


def carry(trials: list[Trial], stored: str | Path | list[str | Path]) -> dict[str, dict[str, Any]]:
    """The finished rows of stored ``results.csv`` files that are trials of this sweep: the
    same axes (``trial_finder``: the name, or the axes' digest in it) and configuration
    (``config_sha``), renamed to this sweep's trial; the first file that has a trial finished
    gives its row. A finished row of the same axes with another configuration is a
    SweepError (the sweep file changed since)."""
    from fedrs.orchestrator.sweep.results import read_stored

    find = trial_finder(trials)
    out: dict[str, dict[str, Any]] = {}
    for path in [stored] if isinstance(stored, str | Path) else stored:
        rows, _, _ = read_stored(path)
        for row in rows:
            trial = find(str(row["trial"]))
            if trial is None or row.get("status") != "finished" or trial.name in out:
                continue
            if trial.name != row["trial"] and not same_axes(row, trial):
                continue  # another cell whose axes share the digest
            if row.get("config_sha") != config_sha(trial.cfg):
                raise SweepError(
                    f"--done {path}: trial {trial.name} ({axes_text(trial.axes)}) was run "
                    f"with another configuration (config_sha {row.get('config_sha') or 'missing'}"
                    f", now {config_sha(trial.cfg)}); run it again"
                )
            out[trial.name] = {**row, "trial": trial.name}
    return out
