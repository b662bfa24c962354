"""A sweep directory: ``sweep.json`` (the sweep and its expanded trials, what ``--resume``
reads), each trial's status file, the rows carried from a stored results table (``--done``)
and the configuration hash a stored row is matched by."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from fedrs.core.config import RunConfig, from_dict
from fedrs.io import fresh_path, write_json
from fedrs.orchestrator.sweep.spec import (
    CARRIED,
    SPEC,
    STATUS,
    Sweep,
    SweepError,
    Trial,
    parse_sweep,
)


# ------------------------------------------------------------------------------ one trial
def trial_status(sweep_dir: Path, name: str) -> dict[str, Any]:
    path = sweep_dir / STATUS / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {"status": "pending"}


ADDED_KEYS = {("client", "max_grad_norm"): 0.0, ("federation", "policy"): "sync"}
ADDED_KEYS |= {("federation", "deadline_s"): 0.0, ("federation", "overselect"): 1.3}
ADDED_KEYS |= {("federation", "buffer"): 0, ("strategy", "filter_factor"): 3.0}
ADDED_KEYS |= {("resources", "keep_warm_s"): 0.0}
ADDED_SECTIONS = ("secagg", "system")  # hashed only when set away from their defaults


def config_sha(cfg: RunConfig) -> str:
    """A trial's configuration, hashed as a stored row records it: paths reduced to their
    file names (a study re-run on another machine keeps its hashes)."""
    data = cfg.to_dict()
    for section in ADDED_SECTIONS:
        if data[section] == RunConfig().to_dict()[section]:
            data.pop(section)
    for section, key in (("data", "path"), ("model", "pretrained")):
        data[section][key] = Path(data[section][key]).name if data[section][key] else ""
    # sub-tables hashed flat (data.modal.patch_size as data.patch_size): rows stored before
    # the multi-modal keys had their own table keep their hashes
    for values in data.values():
        for name in [k for k, v in values.items() if isinstance(v, dict)]:
            values.update(values.pop(name))
    # keys added since rows were stored count only when set: those rows keep their hashes
    for (section, key), default in ADDED_KEYS.items():
        if data[section].get(key) == default:
            data[section].pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def carried_rows(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """The rows taken as done from a stored results table, by trial name (``--done``)."""
    try:
        return json.loads((sweep_dir / CARRIED).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


# ------------------------------------------------------------------------------ the sweep
def new_sweep_dir(out: str | None, source: str | None) -> Path:
    if not out:
        return fresh_path("sweeps", Path(source).stem if source else "sweep")
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        hint = f"; continue it with --resume {out}" if (path / SPEC).is_file() else ""
        raise SweepError(f"--out {out} exists and is not empty{hint}")
    return path


def write_spec(sweep_dir: Path, sweep: Sweep, trials: list[Trial]) -> None:
    """``DIR/sweep.json``: the sweep and its expanded trials (what ``--resume`` reads)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        sweep_dir / SPEC,
        {
            "spec": sweep.to_dict(),
            "trials": [{"name": t.name, "axes": t.axes, "config": t.cfg.to_dict()} for t in trials],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )


def load_trials(sweep_dir: Path) -> tuple[Sweep, list[Trial]]:
    """The sweep and trials stored in ``sweep_dir`` (as first expanded)."""
    if not Path(sweep_dir).exists():
        raise SweepError(f"{sweep_dir}: missing (no such sweep directory)")
    try:
        stored = json.loads((sweep_dir / SPEC).read_text())
    except (OSError, json.JSONDecodeError):
        raise SweepError(f"{sweep_dir} holds no sweep ({SPEC} missing or damaged)") from None
    sweep = parse_sweep(stored["spec"])
    trials = [Trial(t["name"], t["axes"], from_dict(t["config"])) for t in stored["trials"]]
    return sweep, trials


def row_axes(row: dict[str, Any], sweep: Sweep) -> dict[str, Any]:
    return {k: row.get(k) for k in sweep.axes}
