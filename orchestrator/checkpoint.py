"""Round checkpoints: global tensors + server state, written atomically, newest two kept.

``RUN_DIR/checkpoint/round_<r>.safetensors`` holds the tensors; ``latest.json`` (replaced
atomically after the tensors are on disk) names the last completed round and the file's
sha256, checked on load: a truncated or altered checkpoint is a one-line error, never used.
Nothing here unpickles: safetensors and JSON only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fedrs.errors import FedrsError
from fedrs.io import contiguous, write_bytes, write_json

SERVER_PREFIX = "server/"
STRATEGY_PREFIX = "strategy/"  # a server optimiser's moments, beside the method server's state
DIR = "checkpoint"


class CheckpointError(FedrsError):
    """A round's checkpoint could not be written (a full disk, a lost mount)."""


def save(
    run_dir: Path, round_: int, params: dict[str, np.ndarray], server_state: dict[str, Any]
) -> None:
    folder = run_dir / DIR
    tensors = {k: contiguous(v) for k, v in params.items()}
    tensors |= {
        SERVER_PREFIX + k: contiguous(v)
        for k, v in server_state.items()
        if isinstance(v, np.ndarray)
    }
    name = f"round_{round_:05d}.safetensors"
    blob = st_save(tensors) if tensors else st_save({})
    write_bytes(folder / name, blob)
    digest = hashlib.sha256(blob).hexdigest()
    write_json(folder / "latest.json", {"round": round_, "file": name, "sha256": digest})
    for old in sorted(folder.glob("round_*.safetensors"))[:-2]:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()


def latest_round(run_dir: Path) -> int:
    """The last completed round recorded in ``run_dir`` (0 before round 1)."""
    latest = run_dir / DIR / "latest.json"
    if not latest.exists():
        return 0
    try:
        return int(json.loads(latest.read_text())["round"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FedrsError(f"cannot read checkpoint in {run_dir}: {exc}") from None


def load(run_dir: Path) -> tuple[int, dict[str, np.ndarray], dict[str, Any]] | None:
    """(round, params, server_state) of the last completed round, or None before round 1."""
    latest = run_dir / DIR / "latest.json"
    if not latest.exists():
        return None
    try:
        meta = json.loads(latest.read_text())
        blob = (latest.parent / Path(meta["file"]).name).read_bytes()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FedrsError(f"cannot read checkpoint in {run_dir}: {exc}") from None
    if "sha256" in meta and hashlib.sha256(blob).hexdigest() != meta["sha256"]:
        raise FedrsError(
            f"checkpoint {latest.parent / meta['file']} fails its sha256 check (truncated or "
            f"tampered): not resuming from it"
        )
    try:
        tensors = dict(st_load(blob))
    except (SafetensorError, ValueError) as exc:
        raise FedrsError(f"cannot read checkpoint in {run_dir}: {exc}") from None
    params = {k: v for k, v in tensors.items() if not k.startswith(SERVER_PREFIX)}
    server = {k[len(SERVER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(SERVER_PREFIX)}
    return int(meta["round"]), params, server


def section(state: dict[str, Any], prefix: str, *others: str) -> dict[str, Any]:
    """The entries of a saved server state under ``prefix`` (the strategy's ``strategy/``),
    prefix removed; ``prefix`` "" with ``others``: what no other section claims (the method's)."""
    return {
        k[len(prefix) :]: v
        for k, v in state.items()
        if k.startswith(prefix) and not (others and k.startswith(others))
    }


def save_round(
    run_dir: Path,
    round_: int,
    params: dict[str, np.ndarray],
    servers: tuple[Any, Any, Any],
    before: Any = None,
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """Round ``round_``'s global tensors with the state of ``servers`` (the method's server,
    the strategy, the driver's holdings), atomically; ``before()`` runs first (chaos runs
    inject faults there). CheckpointError, naming the round to resume after, on failure."""
    server, strategy, holdings = servers
    try:
        if before is not None:
            before()
        state = (
            server.state_dict()
            | {STRATEGY_PREFIX + k: v for k, v in strategy.state_dict().items()}
            | holdings.state_dict()
            | (extra or {})  # the driver's own (under the holdings' prefix: not the method's)
        )
        save(run_dir, round_, params, state)
    except OSError as exc:  # the last complete checkpoint is untouched (atomic writes)
        done = latest_round(run_dir)
        raise CheckpointError(
            f"round {round_}: cannot write its checkpoint ({exc.strerror or exc}); the run can "
            f"be resumed after round {done} with --resume once that is fixed"
        ) from None


def restore_round(
    saved: dict[str, Any], round_: int, servers: tuple[Any, Any, Any], holdings_prefix: str
) -> None:
    """Load what ``save_round`` kept of the method's server, the strategy and the holdings."""
    server, strategy, holdings = servers
    server.load_state_dict(section(saved, "", STRATEGY_PREFIX, holdings_prefix))
    strategy.load_state_dict(section(saved, STRATEGY_PREFIX))
    holdings.load_state_dict(saved, round_)
