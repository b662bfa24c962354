"""The client worker: a plain class, made a Ray actor at spawn time by ``ClientPool``.

One worker serves many virtual clients in turn. It builds the method (and so loads the frozen
backbone) once, memory-maps shards lazily, and reads / writes each client's private state in
the client-state store, so any worker can train any client.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch

from fedrs.actors.allocator import retain_freed_memory
from fedrs.actors.placement import WARM_NAMESPACE
from fedrs.core.attacks import LabelFlipped, attackers, tamper
from fedrs.core.config import from_dict, with_data_path
from fedrs.core.privacy import privatize_local
from fedrs.core.registry import known
from fedrs.core.state_store import FileStateStore
from fedrs.datasets.features import CachedShard, FeatureCache, FeatureShard, feature_key
from fedrs.datasets.manifest import FedDataset, ShardEntry
from fedrs.datasets.shards import Shard
from fedrs.faults import inject
from fedrs.methods.base import FitOptions, InputCache, Method

Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class FitTask:
    client_id: int
    options: FitOptions


@dataclass(frozen=True)
class EvalTask:
    """Evaluate rows ``start:stop`` of the global test shard (``kind="test"``) or a client's
    local test shard with its private state as of the end of ``round`` (``kind="client"``)."""

    kind: str
    round: int
    client_id: int = -1
    start: int = 0
    stop: int | None = None


@dataclass(frozen=True)
class Download:
    """A client's global tensors as two Ray objects: ``moving``, the tensors the last round
    changed (a new object every round), and ``resting``, the ones unchanged since an earlier
    round (e.g. a frozen stage's networks): the driver hands out the same object round after
    round while they stay unchanged, and an actor fetches it once and keeps it resident."""

    moving: Any  # ObjectRef of a Params dict
    resting: Any = None  # ObjectRef of a Params dict, or None


class ResidentTensors:
    """The ``resting`` objects an actor holds, by object id, least recently used dropped first
    (a handful: one per download group, e.g. per modality, and stage)."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self.held: OrderedDict[str, Params] = OrderedDict()
        self.fetched = self.reused = 0

    def params(self, download: Download) -> Params:
        import ray

        out = dict(ray.get(download.moving))
        if download.resting is not None:
            key = download.resting.hex()
            if key in self.held:
                self.held.move_to_end(key)
                self.reused += 1
            else:
                self.held[key] = ray.get(download.resting)
                self.fetched += 1
                while len(self.held) > self.capacity:
                    self.held.popitem(last=False)
            out |= self.held[key]
        return out


HEAVY_MODULES = ("torch", "torchvision", "open_clip", "flwr")


def startup_record(started_at: float, setup_at: float, **parts: float) -> dict[str, Any]:
    """How an actor started, for ``summary.json``'s ``startup``: when its instance began
    (``started_at``: process up and imports done; a warm actor keeps its first), when this
    run's setup began and how long it took (``setup_s``), ``parts`` of it, and which heavy
    modules the process holds."""
    import sys

    return {
        "started_at": started_at,
        "setup_at": setup_at,
        "setup_s": time.time() - setup_at,
        **parts,
        "heavy_modules": [m for m in HEAVY_MODULES if m in sys.modules],
    }


def _assigned_gpus() -> list[str]:
    try:
        import ray

        return [str(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else []
    except Exception:  # outside a Ray worker
        return []


class _Head:
    """The first ``n`` examples of a shard."""

    def __init__(self, shard: Any, n: int) -> None:
        self.shard, self.n = shard, n
        self.labels = shard.labels[:n]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["shard"], name)

    def __len__(self) -> int:
        return self.n


class SetupBoard:
    """What the warm client actors of a placement group run now (``orchestrator/warm.py``):
    ``(config dict, method class, data path, state root)``. A worker reads it when it is
    re-initialised for a sweep's next trial and when Ray restarts it (Ray replays the
    constructor's arguments, which name the board, not the first trial's setup)."""

    def __init__(self) -> None:
        self.setup: tuple[dict[str, Any], type[Method], str, str] | None = None

    def put(self, setup: tuple[dict[str, Any], type[Method], str, str]) -> None:
        self.setup = setup

    def get(self) -> tuple[dict[str, Any], type[Method], str, str]:
        if self.setup is None:
            raise RuntimeError("the setup board holds no run yet")
        return self.setup


def _board(name: str) -> Any:
    """A ``SetupBoard`` by name (boards live in the warm actors' namespace)."""
    return ray.get_actor(name, namespace=WARM_NAMESPACE)


class ClientWorker:
    def __init__(
        self,
        cfg: dict[str, Any] | None,
        method_cls: type[Method] | None,
        data_path: str,
        state_root: str,
        index: int = 0,
        board: str | None = None,
    ) -> None:
        """A worker for one run; with ``board`` (the name of a ``SetupBoard`` actor: a name,
        so that Ray keeps no object alive for a restart) instead of the setup, for whatever
        run the board names (warm actors: ``reinit``)."""
        self.started_at = time.time()  # this instance's start: the process is up, imports done
        self.board = board
        if board is not None:
            cfg, method_cls, data_path, state_root = ray.get(_board(board).get.remote())
        assert cfg is not None and method_cls is not None
        self._setup(cfg, method_cls, data_path, state_root, index)

    def reinit(self) -> None:
        """Re-initialise in place for the run the board names now (a sweep's next trial):
        every attribute of the last run is replaced; the process keeps its imports and the
        frozen backbones it built (``models.backbone``'s cache, keyed by arch, weights and
        device)."""
        cfg, method_cls, data_path, state_root = ray.get(_board(self.board).get.remote())
        self._setup(cfg, method_cls, data_path, state_root, self.index)

    def _setup(
        self,
        cfg: dict[str, Any],
        method_cls: type[Method],
        data_path: str,
        state_root: str,
        index: int,
    ) -> None:
        setup_at = time.time()
        known(method_cls)  # the class this actor runs, by the name its config gives
        self.cfg = with_data_path(from_dict(cfg), data_path)
        self.index = index
        self.allocator_tuned = self.cfg.resources.retain_freed_memory and retain_freed_memory()
        threads = max(1, round(self.cfg.resources.num_cpus_per_client))
        torch.set_num_threads(threads)
        self.gpu_ids = _assigned_gpus()
        # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPU(s): the first visible one is ours.
        self.device = "cuda:0" if self.gpu_ids and torch.cuda.is_available() else "cpu"
        if self.device != "cpu":  # runs replay exactly (--resume) on GPUs too: no autotuned,
            torch.backends.cudnn.deterministic = True  # non-deterministic convolutions
            torch.backends.cudnn.benchmark = False
        self.data = FedDataset(data_path)
        t_method = time.perf_counter()
        self.method = method_cls(self.cfg, self.data.classes, self.device)  # builds a backbone
        method_s = time.perf_counter() - t_method
        self.store = FileStateStore(state_root)
        self.seed = self.cfg.federation.seed
        # what the method computes once per shard (frozen embeddings, teacher outputs, ...):
        # asked for on first use
        self.cache_spec: InputCache | None = None
        self.cache_checked = not self.cfg.data.feature_cache
        self.features: FeatureCache | None = None  # opened on first use
        self._personal: tuple[Any, Params] = (None, {})  # last (client, round) personalised
        self.resident = ResidentTensors()  # global tensors unchanged for rounds (Download)
        # registered client -> partition of this worker's data, where it is not c mod P (a
        # deployment site numbers its partitions its own way: actors/sites.py)
        self.partitions: dict[int, int] = {}
        a = self.cfg.attack  # simulated Byzantine clients (fedrs/core/attacks.py)
        registered = self.cfg.federation.num_clients or self.data.num_clients
        self.attackers = (
            attackers(registered, a.fraction, a.seed) if a.kind != "none" else frozenset()
        )
        self.startup = startup_record(self.started_at, setup_at, method_s=method_s)

    def _view(self, entry: ShardEntry) -> Shard | FeatureShard | CachedShard:
        """A shard as the method sees it: pixels, with the method's cached array in their place
        or beside them (``Method.input_cache``)."""
        if not self.cache_checked:
            self.cache_spec, self.cache_checked = self.method.input_cache(), True
        spec = self.cache_spec
        if spec is None:
            return self.data.open_shard(entry)
        if self.features is None:
            self.features = FeatureCache(self.data, feature_key(spec.identity), spec.compute)
        return self.features.view(entry, replace_inputs=spec.replaces_inputs)

    def describe(self) -> dict[str, Any]:
        node_id = pg_id = None
        try:
            import ray

            ctx = ray.get_runtime_context()
            node_id, pg_id = ctx.get_node_id(), ctx.get_placement_group_id()
        except Exception:
            pass
        return {
            "index": self.index,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node_id": node_id,
            "placement_group_id": pg_id,
            "gpu_ids": self.gpu_ids,
            "device": self.device,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "torch_threads": torch.get_num_threads(),
            "allocator_tuned": self.allocator_tuned,
            "startup": self.startup,
        }

    def init_global(self, seed: int) -> Params:
        return self.method.init_global(seed)

    def example_flops(self, params: Params, upload_keys: tuple[str, ...]) -> float:
        """FLOPs of training one example for one epoch (forward and backward), as torch's FLOP
        counter counts the method's ``fit`` on the first batch of partition 0 (counted on a
        second pass: what a shard computes once, e.g. frozen embeddings, is not training).
        The virtual clock's unit of work (``fedrs/core/system.py``); nothing is saved."""
        from fedrs.models.flops import count_flops

        params, _ = self._received(params)
        shard = self._view(self.data.clients[0].train)
        head = _Head(shard, min(len(shard), self.cfg.client.batch_size))
        options = dataclasses.replace(
            FitOptions.from_config(self.cfg, 1, 0), epochs=1, upload_keys=tuple(upload_keys)
        )
        private = self.method.init_private(0, self.seed)
        self.method.fit(params, private, head, options)
        with count_flops() as count:
            self.method.fit(params, private, head, options)
        return count.total / len(head)

    def partition(self, client_id: int) -> int:
        """The data partition a registered client trains on (``federation.num_clients`` may
        register more clients than the data has partitions: client c uses c mod P)."""
        return self.partitions.get(client_id, client_id % self.data.num_clients)

    def _private(self, client_id: int, before_round: int) -> Params:
        state = self.store.load(client_id, before_round)
        return state if state is not None else self.method.init_private(client_id, self.seed)

    def fit(self, params: Params, task: FitTask) -> dict[str, Any]:
        """Train one client; the reply carries where the actor's time went (``phases``)."""
        t0 = time.perf_counter()
        cid, rnd = task.client_id, task.options.round
        inject(self.cfg.federation.faults, "fit", rnd, cid)  # chaos runs only
        params, resting = self._received(params)
        computed = self.features.computed if self.features is not None else 0
        shard = self._view(self.data.clients[self.partition(cid)].train)
        cache = None
        if self.features is not None:  # the method's per-shard cache: read, or computed now
            cache = "miss" if self.features.computed > computed else "hit"
        t1 = time.perf_counter()
        unreadable = self.store.unreadable
        private = self._private(cid, rnd)
        t2 = time.perf_counter()
        attack = self.cfg.attack.kind if cid in self.attackers else None
        if attack == "labelflip":
            shard = LabelFlipped(shard, len(self.data.classes))
        options = task.options
        if options.partners:  # what partner organisations shared, relayed by the driver
            got = {
                p: ray.get(v) if isinstance(v, ray.ObjectRef) else v
                for p, v in options.partners.items()
            }
            options = dataclasses.replace(options, partners=got)
        out = self.method.fit(params, private, shard, options)
        if self.cfg.privacy.mode == "local" and attack is None:  # clipped and noised here
            out.params = privatize_local(out.params, params, self.cfg.privacy, self.seed, rnd, cid)
        if attack is not None:
            out.params = tamper(attack, out.params, params, self.cfg.attack, rnd, cid)
            if attack != "collude":
                out.extras = tamper(attack, out.extras, {}, self.cfg.attack, rnd, cid)
        t3 = time.perf_counter()
        self.store.save(cid, rnd, out.private)
        t4 = time.perf_counter()
        return {
            "client_id": cid,
            "params": out.params,
            "num_examples": out.num_examples,
            "metrics": out.metrics,
            "extras": out.extras,
            "worker": f"{self.index}:{os.getpid()}",
            "cache": cache,
            "attack": attack,
            # its private state could not be read: an older version or a fresh start
            "state_reset": self.store.unreadable > unreadable,
            # unchanged tensors: fetched from the object store, or resident on this actor
            "resting": resting,
            "fit_s": t4 - t0,
            # data: open the shard / its cached features (embedding it on a cache miss)
            "phases": {
                "data_s": t1 - t0,
                "state_load_s": t2 - t1,
                "train_s": t3 - t2,
                "state_save_s": t4 - t3,
            },
        }

    def _received(self, params: Params | Download) -> tuple[Params, str | None]:
        """The global tensors of a fit or share, and where their unchanged part came from
        (a ``Download``'s resting tensors: ``"resident"`` on this actor, or ``"fetched"``)."""
        if not isinstance(params, Download):
            return params, None
        fetched = self.resident.fetched
        resting = "resident" if params.resting is not None else None
        params = self.resident.params(params)
        if self.resident.fetched > fetched:
            resting = "fetched"
        return params, resting

    def share(self, params: Params | Download, task: FitTask) -> dict[str, Any]:
        """What the client shares with its partner organisations this round (``Method.share``
        on its training shard with the received tensors); checked by the driver."""
        t0 = time.perf_counter()
        cid, rnd = task.client_id, task.options.round
        inject(self.cfg.federation.faults, "share", rnd, cid)  # chaos runs only
        params, _ = self._received(params)
        shard = self._view(self.data.clients[self.partition(cid)].train)
        payload = self.method.share(params, self._private(cid, rnd), shard, task.options)
        return {"client_id": cid, "payload": payload, "share_s": time.perf_counter() - t0}

    def predict(self, params: Params, task: EvalTask) -> np.ndarray:
        """Predicted classes of rows ``start:stop`` of the global test shard (a scene's map)."""
        shard = self._view(self.data.test)
        stop = len(shard) if task.stop is None else task.stop
        return self.method.predict_rows(params, shard, task.start, stop)

    def evaluate(self, params: Params, task: EvalTask) -> dict[str, Any]:
        if task.kind == "test":
            shard, private = self._view(self.data.test), {}
        else:  # a client's own model, on its local split or on the global one
            part = self.data.clients[self.partition(task.client_id)]
            shard = self._view(self.data.test if task.kind == "client_global" else part.local_test)
            private = self._private(task.client_id, task.round + 1)
            if self.method.personalizes:  # once per client and round (local + global split)
                key = (task.client_id, task.round)
                if self._personal[0] != key:
                    options = FitOptions.from_config(self.cfg, task.round, task.client_id)
                    tuned = self.method.personalize(
                        params, private, self._view(part.train), options
                    )
                    self._personal = (key, tuned)
                private = self._personal[1]
        stop = len(shard) if task.stop is None else task.stop
        out = self.method.evaluate_rows(params, private, shard, task.start, stop)
        return {"client_id": task.client_id, **out}
