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

Across runs (``resources.keep_warm_s > 0`` on a cluster that outlives the run: ``RAY_ADDRESS``,
``ray job submit``): the set is detached (actors, board and a placement group of its own, named
in the ``fedrs-warm`` namespace) and a detached ``WarmRegistry`` actor holds it between runs.
The next run of any job with the same key takes it over; the key adds the code (the fedrs
files' sizes and times) and the job's runtime environment, so actors never run another
version's code. A resting set is ended ``keep_warm_s`` after its run; a lent one whose run
stops renewing its lease (the process died) after ``LEASE_S``; a run that fails ends its set.
``fedrs warm`` lists the resting sets and ends them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from fedrs.actors.placement import WARM_NAMESPACE as NAMESPACE
from fedrs.actors.placement import Placement, SchedulingError, trial_bundles
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
    # kept across runs (the registry's): its id, its placement group, the lease renewal
    sid: str = ""
    placement: Placement | None = None
    renewing: threading.Event = field(default_factory=threading.Event)

    def end(self) -> None:
        """Kill the actors (and the board); a set kept across runs: by the registry, which
        also removes its placement group."""
        if self.sid:
            self.renewing.set()
            with contextlib.suppress(Exception):
                ray.get(registry().end.remote(self.sid), timeout=30)
            return
        for actor in (self.driver, *self.actors, self.board):
            if actor is not None:
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)

    def options(self, role: str) -> dict[str, Any]:
        """Extra actor options for ``role`` ("driver", "client-<i>", "board"): detached and
        named in a set kept across runs, none in a sweep's."""
        if not self.sid:
            return {}
        return {"name": _name(self.sid, role), "namespace": NAMESPACE, "lifetime": "detached"}


_held: dict[str, WarmSet] = {}  # placement group id -> the set resting between runs
_lent: list[WarmSet] = []  # the sets runs use now


def _weights_identity(pretrained: str) -> Any:
    """A local checkpoint by path, size and modification time (rewritten: another key)."""
    if pretrained and os.path.isfile(pretrained):
        st = Path(pretrained).stat()
        return (str(Path(pretrained).resolve()), st.st_size, st.st_mtime_ns)
    return pretrained


def _shape(cfg: RunConfig) -> tuple[Any, ...]:
    """The actor shape (``resources``: actors, CPUs and GPUs each, the driver's, restarts,
    allocator) and the backbone (arch and weights, so one process never holds two)."""
    r = cfg.resources
    return (
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


def warm_key(cfg: RunConfig, placement: Placement) -> tuple[Any, ...]:
    """What must be equal for a run to take over another's actors in a placement group."""
    pg = placement.pg.id.hex()
    return (pg, placement.driver_bundle, placement.first_client_bundle, *_shape(cfg))


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
            namespace=NAMESPACE,
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
    if ws.sid:  # kept across runs: to the registry
        ws.renewing.set()
        reg = registry()
        with contextlib.suppress(Exception):
            ray.get(reg.rest.remote(ws.sid) if ok else reg.end.remote(ws.sid), timeout=30)
        return True
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


# --- across runs --------------------------------------------------------------------------

REGISTRY = "fedrs-warm-registry"
LEASE_S = 60.0  # a lent set whose run stopped renewing this long ago is ended
_REAP_EVERY_S = 0.5


def _name(sid: str, role: str) -> str:
    return f"fedrs-warm-{sid}-{role}"


def _code_identity() -> str:
    """The fedrs files this process runs (paths, sizes, modification times), hashed: a set
    started by other code is never taken over."""
    from importlib.util import find_spec

    files: set[Path] = set()
    for sub in ("", ".actors", ".datasets", ".methods", ".models", ".orchestrator"):
        spec = find_spec(f"fedrs{sub}")
        for where in (spec.submodule_search_locations or []) if spec else []:
            files.update(p.resolve() for p in Path(where).rglob("*.py"))
    h = hashlib.sha256()
    for f in sorted(files):
        st = f.stat()
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def shared_key(cfg: RunConfig) -> tuple[Any, ...]:
    """What must be equal for a run to take over a set another run kept: the actor shape and
    backbone, the placement strategy, the code and the job's runtime environment."""
    env = ray.get_runtime_context().runtime_env
    code = _code_identity()
    runtime = json.dumps(dict(env), sort_keys=True, default=str)
    return (*_shape(cfg), cfg.resources.placement_strategy, code, runtime)


class WarmRegistry:
    """Sets of actors kept between runs of any job (a detached actor, one per cluster):
    resting ones, ended ``keep_s`` after their run, and lent ones, ended when their run stops
    renewing its lease. Records are plain dicts: ``sid``, ``key``, ``roles`` (actor role
    names), ``pg``, ``driver_bundle``, ``first_client_bundle``, ``runs``, ``keep_s``,
    ``actors`` and ``arch`` (to list them), ``until`` (when it is ended), ``lent``."""

    def __init__(self) -> None:
        self.sets: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.ended = 0
        threading.Thread(target=self._reap, daemon=True).start()

    def take(self, key: tuple[Any, ...]) -> dict[str, Any] | None:
        """A resting set of ``key``, now lent (the most used first), or None."""
        with self.lock:
            found = [s for s in self.sets.values() if not s["lent"] and s["key"] == key]
            if not found:
                return None
            rec = max(found, key=lambda s: s["runs"])
            rec["lent"], rec["until"] = True, time.time() + LEASE_S
            return dict(rec)

    def lend(self, rec: dict[str, Any]) -> None:
        """A new set, lent to the run that starts it."""
        with self.lock:
            self.sets[rec["sid"]] = {**rec, "lent": True, "until": time.time() + LEASE_S}

    def renew(self, sid: str) -> bool:
        """The run holding ``sid`` is alive; False when the set was ended meanwhile."""
        with self.lock:
            rec = self.sets.get(sid)
            if rec is None:
                return False
            rec["until"] = time.time() + LEASE_S
            return True

    def rest(self, sid: str) -> None:
        """Its run ended cleanly: kept ``keep_s`` for the next."""
        with self.lock:
            rec = self.sets.get(sid)
            if rec is not None:
                rec["lent"], rec["runs"] = False, rec["runs"] + 1
                rec["until"] = time.time() + rec["keep_s"]

    def end(self, sid: str) -> None:
        with self.lock:
            rec = self.sets.pop(sid, None)
        if rec is not None:
            _end(rec)

    def evict(self, key: tuple[Any, ...] | None = None) -> int:
        """End the resting sets of keys other than ``key`` (their resources are wanted; all
        of them without a key: ``fedrs warm --end``); how many."""
        with self.lock:
            out = [s for s in self.sets.values() if not s["lent"] and s["key"] != key]
            for s in out:
                del self.sets[s["sid"]]
        for s in out:
            _end(s)
        return len(out)

    def list(self) -> list[dict[str, Any]]:
        now = time.time()
        with self.lock:
            return [
                {
                    "sid": s["sid"],
                    "state": "lent" if s["lent"] else "resting",
                    "actors": s["actors"],
                    "arch": s["arch"],
                    "runs": s["runs"],
                    "ends_in_s": round(s["until"] - now, 1),
                }
                for s in self.sets.values()
            ]

    def _reap(self) -> None:
        while True:
            time.sleep(_REAP_EVERY_S)
            now = time.time()
            with self.lock:
                due = [s for s in self.sets.values() if s["until"] <= now]
                for s in due:
                    del self.sets[s["sid"]]
            for s in due:
                log.info("warm set %s ended (%s)", s["sid"], "lease" if s["lent"] else "idle")
                _end(s)


def _end(rec: dict[str, Any]) -> None:
    """Kill a set's actors by name and remove its placement group."""
    from ray.util.placement_group import remove_placement_group

    for role in rec["roles"]:
        with contextlib.suppress(Exception):
            ray.kill(ray.get_actor(_name(rec["sid"], role), namespace=NAMESPACE), no_restart=True)
    with contextlib.suppress(Exception):
        remove_placement_group(rec["pg"])


def registry(create: bool = True) -> Any:
    """The cluster's ``WarmRegistry`` actor (started on first use; None when ``create`` is
    False and there is none)."""
    if not create:
        try:
            return ray.get_actor(REGISTRY, namespace=NAMESPACE)
        except ValueError:
            return None
    return (
        ray.remote(WarmRegistry)
        .options(
            name=REGISTRY,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_concurrency=4,
        )
        .remote()
    )


def _renew(ws: WarmSet) -> None:
    reg = registry()
    while not ws.renewing.wait(LEASE_S / 4):
        with contextlib.suppress(Exception):
            if not ray.get(reg.renew.remote(ws.sid), timeout=30):
                return


def take_shared(cfg: RunConfig) -> tuple[WarmSet, bool]:
    """A set kept by an earlier run of the same key (``reused`` True), else a new one: its
    detached placement group reserved (resting sets of other keys are ended when they stand in
    the way) and its board started; the caller starts its actors with ``WarmSet.options``."""
    from ray.util.placement_group import placement_group, remove_placement_group

    from fedrs.actors.client import SetupBoard

    reg = registry()
    key = shared_key(cfg)
    res = cfg.resources
    rec = ray.get(reg.take.remote(key))
    if rec is not None:
        sid = rec["sid"]
        try:
            actor = [ray.get_actor(_name(sid, r), namespace=NAMESPACE) for r in rec["roles"]]
        except ValueError:  # one of them is gone: end the rest, start afresh
            ray.get(reg.end.remote(sid))
            return take_shared(cfg)
        board, driver, *clients = actor
        ws = WarmSet(
            key,
            board,
            _name(sid, "board"),
            driver=driver,
            actors=tuple(clients),
            runs=rec["runs"],
            sid=sid,
            placement=Placement(rec["pg"], rec["driver_bundle"], rec["first_client_bundle"]),
        )
        threading.Thread(target=_renew, args=(ws,), daemon=True).start()
        return ws, True
    sid = uuid.uuid4().hex[:12]
    bundles, first = trial_bundles(cfg)
    pg = placement_group(bundles, strategy=res.placement_strategy, lifetime="detached")
    roles = ["board", "driver", *(f"client-{i}" for i in range(res.num_actors))]
    ray.get(
        reg.lend.remote(
            {
                "sid": sid,
                "key": key,
                "roles": roles,
                "pg": pg,
                "driver_bundle": 0,
                "first_client_bundle": first,
                "runs": 0,
                "keep_s": res.keep_warm_s,
                "actors": res.num_actors,
                "arch": cfg.model.arch,
            }
        )
    )
    ws = WarmSet(key, None, _name(sid, "board"), sid=sid, placement=Placement(pg, 0, first))
    threading.Thread(target=_renew, args=(ws,), daemon=True).start()
    placed = pg.wait(timeout_seconds=min(5.0, res.placement_timeout_s))
    if not placed and ray.get(reg.evict.remote(key)):
        log.info("warm actors of another shape, backbone or code ended to make room")
        placed = pg.wait(timeout_seconds=res.placement_timeout_s)
    elif not placed:
        placed = pg.wait(timeout_seconds=max(0.0, res.placement_timeout_s - 5.0))
    if not placed:
        ws.end()
        with contextlib.suppress(Exception):
            remove_placement_group(pg)
        raise SchedulingError(
            f"cannot place {res.num_actors} client actors of {bundles[first]} with "
            f"{res.placement_strategy} on this cluster (resources: {ray.available_resources()})"
        )
    ws.board = (
        ray.remote(SetupBoard)
        .options(num_cpus=0, scheduling_strategy=ws.placement.strategy(0), **ws.options("board"))
        .remote()
    )
    return ws, False
