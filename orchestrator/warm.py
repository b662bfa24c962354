"""Warm actors: the driver and client actors of one sweep trial kept for the next.

A sweep's trials run in Tune trainables that Tune reuses (``reuse_actors``) together with their
placement group. The first trial a trainable runs starts the actors as ``fedrs run`` does (each
a process importing torch and open_clip, building the frozen backbone); when it ends cleanly
they are kept here, by placement group, and the next trial with the same ``warm_key`` re-
initialises them in place (``Driver.reinit``, ``ClientWorker.reinit``): every attribute of the
last run is replaced, the processes keep their imports and their backbone cache. A trial that
fails, is stopped or asks for another key ends them; the next starts cold.

The client actors read their setup from a ``SetupBoard`` actor, rewritten before each trial, so
that an actor Ray restarts (it replays the constructor's arguments) comes back for the trial
running now, not the first one.

The key: the placement (group, bundles), the actor shape (``resources``: actors, CPUs and GPUs
each, the driver's, restarts, allocator) and the backbone (arch and weights, so one process
never holds two). Data builds, methods and options differ between trials freely.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from fedrs.actors.placement import Placement
from fedrs.core.config import RunConfig

log = logging.getLogger(__name__)


@dataclass
class WarmSet:
    """Actors kept between runs in one placement group."""

    key: tuple[Any, ...]
    board: Any  # SetupBoard actor
    board_name: str
    driver: Any = None  # Driver actor
    actors: tuple[Any, ...] = ()  # ClientWorker actors
    runs: int = 0  # runs these actors served

    def end(self) -> None:
        """Kill the actors (and the board)."""
        for actor in (self.driver, *self.actors, self.board):
            if actor is not None:
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)


_held: dict[str, WarmSet] = {}  # placement group id -> the set resting between runs
_lent: list[WarmSet] = []  # the sets runs use now


def _weights_identity(pretrained: str) -> Any:
    """A local checkpoint by path, size and modification time (rewritten: another key)."""
    if pretrained and os.path.isfile(pretrained):
        st = Path(pretrained).stat()
        return (str(Path(pretrained).resolve()), st.st_size, st.st_mtime_ns)
    return pretrained


def warm_key(cfg: RunConfig, placement: Placement) -> tuple[Any, ...]:
    """What must be equal for a run to take over another's actors."""
    r = cfg.resources
    return (
        placement.pg.id.hex(),
        placement.driver_bundle,
        placement.first_client_bundle,
        r.num_actors,
        r.num_cpus_per_client,
        r.num_gpus_per_client,
        r.server_num_cpus,
        r.server_num_gpus,
        r.max_actor_restarts,
        r.retain_freed_memory,
        cfg.model.arch,
        _weights_identity(cfg.model.pretrained),
    )


def take(cfg: RunConfig, placement: Placement) -> tuple[WarmSet, bool]:
    """The set this run uses: the one resting in its placement group when the key matches
    (``reused`` True), else a new one (a resting set of another key is ended first); its
    actors are started by the caller."""
    from fedrs.actors.client import SetupBoard

    key = warm_key(cfg, placement)
    found = _held.pop(key[0], None)
    if found is not None and found.key == key:
        return found, True
    if found is not None:
        log.info("warm actors of another shape or backbone ended")
        found.end()
    name = f"fedrs-setup-{uuid.uuid4().hex}"
    board = (
        ray.remote(SetupBoard)
        .options(
            name=name,
            num_cpus=0,
            scheduling_strategy=placement.strategy(placement.driver_bundle),
        )
        .remote()
    )
    return WarmSet(key, board, name), False


def lend(ws: WarmSet) -> None:
    """``ws`` is in use by the run whose driver it holds."""
    _lent.append(ws)


def give_back(driver: Any, ok: bool) -> bool:
    """After a run: keep its actors for the next (``ok``: it ended cleanly) or end them.
    False when ``driver`` is not a warm set's (the caller releases it as usual)."""
    ws = next((w for w in _lent if w.driver is driver), None)
    if ws is None:
        return False
    _lent.remove(ws)
    if ok:
        ws.runs += 1
        _held[ws.key[0]] = ws
    else:
        ws.end()
    return True


def end_all() -> None:
    """End every resting set (tests; the process ending does the same)."""
    while _held:
        _held.popitem()[1].end()
