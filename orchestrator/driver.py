"""The driver: global state and the round loop, in one place. Runs as a Ray actor.

Each round::

    sample clients from (seed, round) ─> broadcast global tensors (one object-store copy)
    ─> clients train on the actor pool ─> validate every update (names, shapes, dtypes,
    finite values) ─> strategy.aggregate ─> method's Server.update ─> evaluate (global test split
    and each client's local test split) ─> append metrics.jsonl ─> checkpoint

A client that raises, times out or whose actor dies is a dropout for that round (counted, reason
logged); a malformed update is rejected (counted). The run fails with RoundFailedError only when
fewer than ``federation.min_clients`` updates are accepted (under ``privacy.mode``, where
clients are Poisson-sampled and a round may be empty, fewer than min(that, clients sampled)).

Registered clients: ``federation.num_clients`` (0: one per data partition) virtual clients are
sampled from; client c trains on partition c mod P and keeps its own private state in the
client-state store. The driver holds nothing per registered client (sampling is O(clients per
round)), so 100,000 registered clients cost it no more memory than 100.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray

from fedrs.actors.client import Download, EvalTask, FitTask
from fedrs.actors.pool import ClientPool, PerTask, Placement
from fedrs.core.attacks import OMNISCIENT, omniscient
from fedrs.core.config import RunConfig, with_data_path
from fedrs.core.metrics import collapse, shot_accuracy, shot_groups
from fedrs.core.privacy import central_estimate, epsilon
from fedrs.core.sampling import inclusion_rate, sample_round, usable_count
from fedrs.core.state_store import FileStateStore
from fedrs.core.strategies import ClientUpdate, make_strategy
from fedrs.core.validation import spec_of, validate_extras, validate_update
from fedrs.datasets.manifest import FedDataset
from fedrs.errors import ConfigError, FedrsError, RunStopped
from fedrs.faults import inject
from fedrs.io import dumps, json_safe, process_memory, write_json
from fedrs.methods.base import FitOptions, Method
from fedrs.orchestrator import checkpoint
from fedrs.orchestrator.holdings import PREFIX as HOLDINGS_STATE
from fedrs.orchestrator.holdings import Holdings, unchanged

log = logging.getLogger(__name__)
METRICS = "metrics.jsonl"
STATE_DIR = "client_state"
PERSONALIZED_EVAL_MAX = 64  # evaluate every client's local split up to this many clients


class CheckpointError(FedrsError):
    """A round's checkpoint could not be written (a full disk, a lost mount)."""


class RoundFailedError(FedrsError):
    """Too few clients reported in a round."""


def registered_clients(cfg: RunConfig, partitions: int) -> int:
    """How many clients are registered: ``federation.num_clients``, or one per data partition
    when it is 0. Fewer than the partitions would leave data no client ever trains on."""
    n = cfg.federation.num_clients or partitions
    if n < partitions:
        raise ConfigError(
            f"federation.num_clients={n} is below the dataset's {partitions} partitions: use 0 "
            f"(one client per partition) or at least {partitions}"
        )
    return n


def uploadable(method_cls: type[Method], global_keys: tuple[str, ...]) -> tuple[str, ...]:
    """The global tensors clients may upload: all but the method's ``download_only``."""
    return tuple(k for k in global_keys if k not in method_cls.download_only)


def global_change(old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> dict[str, float]:
    """How far a round moved the global tensors: ``global_change`` = ||new - old|| over all of
    them, and ``global_change_rel`` = that / ||old|| (0 when nothing travels)."""
    keys = [k for k in new if k in old and np.shape(old[k]) == np.shape(new[k])]
    diff = sum(float(np.sum((new[k].astype(np.float64) - old[k]) ** 2)) for k in keys)
    norm = sum(float(np.sum(old[k].astype(np.float64) ** 2)) for k in keys)
    return {
        "global_change": diff**0.5,
        "global_change_rel": (diff / norm) ** 0.5 if norm > 0 else 0.0,
    }


def declared_extras(
    cfg: RunConfig, method_cls: type[Method], num_classes: int
) -> dict[str, tuple[int, ...]] | None:
    """The extra payloads' shapes the method declares (``tensor_shapes``' ``"extras"``), by
    name; None when it declares none (names and values are still checked)."""
    from fedrs.models.backbone import model_config

    try:
        shapes = method_cls.tensor_shapes(cfg, model_config(cfg.model.arch), num_classes)
    except NotImplementedError:
        return None
    return shapes.get("extras") or None


STRATEGY_STATE = "strategy/"  # checkpointed beside the method server's state


def payload_bytes(payload: Any) -> int:
    """Bytes of the arrays in an uploaded payload (0 for anything malformed)."""
    if not isinstance(payload, dict):
        return 0
    return int(sum(v.nbytes for v in payload.values() if isinstance(v, np.ndarray)))


class Driver:
    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str,
        data_path: str,
        method_cls: type[Method],
        resume: bool = False,
        excluded: dict[int, str] | None = None,
        placement: Placement | None = None,
        pool: ClientPool | None = None,
    ) -> None:
        """``pool``: client actors already started by the caller (``runner.spawn_driver``
        starts them while this actor starts, so the two start-ups overlap); else made here."""
        try:
            self._start(cfg, run_dir, data_path, method_cls, resume, excluded, placement, pool)
        except BaseException:  # a failed start must not leave actors or reserved resources
            if getattr(self, "pool", None) is not None:
                self.pool.shutdown()
            elif pool is not None:
                pool.shutdown()
            raise

    def _start(
        self,
        cfg: RunConfig,
        run_dir: str,
        data_path: str,
        method_cls: type[Method],
        resume: bool,
        excluded: dict[int, str] | None,
        placement: Placement | None,
        pool: ClientPool | None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.method_cls = method_cls
        self._stop = threading.Event()  # request_stop: Ctrl-C / SIGTERM in the caller
        self._sampled: list[int] = []
        self.data = FedDataset(data_path, verify=False)
        if cfg.data.num_clients != self.data.num_clients and cfg.data.path:
            log.info(
                "dataset has %d clients (data.num_clients=%d ignored)",
                self.data.num_clients,
                cfg.data.num_clients,
            )
        # Registered clients: client c trains on partition c % P (ClientWorker.partition).
        self.num_registered = registered_clients(cfg, self.data.num_clients)
        # partitions left out by preflight (data.bad_shards=exclude): never sampled or evaluated
        self.excluded = {int(p): why for p, why in (excluded or {}).items()}
        state = checkpoint.load(self.run_dir) if resume else None
        if state is None:  # a fresh start: nothing an earlier run left in this directory counts
            for stale in (STATE_DIR, checkpoint.DIR):
                shutil.rmtree(self.run_dir / stale, ignore_errors=True)
            (self.run_dir / METRICS).unlink(missing_ok=True)
        self.store = FileStateStore(self.run_dir / STATE_DIR)
        cfg = self.cfg = with_data_path(cfg, data_path)  # what the method's server reads
        if pool is None:
            pool = ClientPool(cfg, method_cls, data_path, str(self.store.root), placement=placement)
        self.pool = pool
        gpus = ray.get_gpu_ids() if ray.is_initialized() else []
        self.server = method_cls.Server(cfg, self.data.classes, "cuda:0" if gpus else "cpu")
        if state is None:
            self.round = 0
            self.params = self.pool.call_one("init_global", cfg.federation.seed)
        else:
            self.round, self.params, saved = state
            self.server.load_state_dict(
                {
                    k: v
                    for k, v in saved.items()
                    if not k.startswith((STRATEGY_STATE, HOLDINGS_STATE))
                }
            )
            self._truncate_metrics(self.round)
            log.info("resuming after round %d", self.round)
        # What the server holds and broadcasts: the method's global tensors.
        self.global_keys = tuple(self.params)
        self.strategy = make_strategy(
            cfg.strategy.name,
            options=cfg.strategy,
            global_keys=uploadable(method_cls, self.global_keys),
            prompt_keys=method_cls.prompt_keys,
        )
        if state is not None:  # a server optimiser's moments, as they were
            self.strategy.load_state_dict(
                {
                    k[len(STRATEGY_STATE) :]: v
                    for k, v in state[2].items()
                    if k.startswith(STRATEGY_STATE)
                }
            )
        self.spec = spec_of(self.params, self.strategy.upload_keys)
        # which tensors each client holds (bytes_down) and the resting objects handed out
        self.holdings = Holdings(self.global_keys, [v.nbytes for v in self.params.values()])
        if state is not None:
            self.holdings.load_state_dict(state[2], self.round)
        self._resting: dict[tuple[str, ...], tuple[tuple[int, ...], Any]] = {}
        self.extra_shapes = declared_extras(cfg, method_cls, len(self.data.classes))

    def _record(self, client_id: int) -> dict[str, Any]:
        return self.data.manifest["clients"][client_id % self.data.num_clients]

    def upload_keys(self, client_id: int, rnd: int) -> tuple[str, ...]:
        """What this client uploads in ``rnd``: the strategy's keys, narrowed by its group."""
        group = self.method_cls.upload_keys_for(self.cfg, self._record(client_id), rnd)
        keys = self.strategy.upload_keys
        return keys if group is None else tuple(k for k in keys if k in group)

    def _downloads(self, groups: list[tuple[str, ...]]) -> dict[tuple[str, ...], Download]:
        """One ``Download`` per group: the tensors the last round changed in a new object, the
        rest in an object handed out again for as long as they stay unchanged."""
        out, kept = {}, {}
        for names in groups:
            moving = tuple(k for k in names if self.holdings.version(k) == self.round)
            resting = tuple(k for k in names if self.holdings.version(k) != self.round)
            ref = None
            if resting:
                versions = tuple(self.holdings.version(k) for k in resting)
                old = self._resting.get(resting)
                if old is None or old[0] != versions:
                    old = (versions, ray.put({k: self.params[k] for k in resting}))
                kept[resting] = old
                ref = old[1]
            out[names] = Download(ray.put({k: self.params[k] for k in moving}), ref)
        self._resting = kept  # objects of groups no longer asked for are released
        return out

    def download_keys(self, client_id: int, rnd: int) -> tuple[str, ...]:
        """The global tensors this client receives in ``rnd``."""
        group = self.method_cls.download_keys_for(self.cfg, self._record(client_id), rnd)
        return (
            self.global_keys if group is None else tuple(k for k in self.global_keys if k in group)
        )

    # ------------------------------------------------------------------ the round loop
    def run(self, stop_after: int | None = None) -> Iterator[dict[str, Any]]:
        """Run the remaining rounds, yielding each round's metrics as it completes."""
        fed = self.cfg.federation
        if not self.method_cls.trains:
            record = {
                "round": 0,
                **self.evaluate(0),
                "clients_ok": 0,
                "clients_failed": 0,
                "clients_rejected": 0,
                "bytes_up": 0,
                "bytes_down": 0,
                "wall_s": 0.0,
            }
            self._append(record)
            yield record
            return
        for rnd in range(self.round + 1, fed.rounds + 1):
            if self._stop.is_set():
                return
            try:
                record = self.run_round(rnd)
            except RunStopped:  # the round in flight is abandoned: its private states too
                for cid in self._sampled:
                    self.store.discard(cid, rnd)
                log.info("round %d abandoned: the run was asked to stop", rnd)
                return
            yield record
            if stop_after is not None and rnd >= stop_after:
                return

    def request_stop(self) -> int:
        """Stop the run soon (runs beside ``run``: the driver actor has two threads): a round
        still training is abandoned (nothing of it is kept), a round already aggregated is
        evaluated and checkpointed; ``run`` then ends. Returns the last complete round."""
        self._stop.set()
        return self.round

    def run_round(self, rnd: int) -> dict[str, Any]:
        fed = self.cfg.federation
        t0 = time.perf_counter()
        # fixed-size, or Poisson under privacy.mode (what the accountant assumes; may be empty)
        sampled = sample_round(
            self.cfg, self.num_registered, self.data.num_clients, self.excluded, rnd
        )
        self._sampled = sampled  # whose private state an abandoned round discards
        # each client receives its group's tensors: objects per distinct group, what the last
        # round left unchanged in one that actors keep resident; a client is charged for what
        # it does not hold yet
        keys = [self.download_keys(cid, rnd) for cid in sampled]
        downloads = self._downloads(list(dict.fromkeys(keys)))
        params_ref = PerTask(downloads[k] for k in keys)
        bytes_down = sum(self.holdings.cost(cid, k) for cid, k in zip(sampled, keys, strict=True))
        tasks = [
            FitTask(
                cid,
                dataclasses.replace(
                    FitOptions.from_config(self.cfg, rnd, cid, self.strategy),
                    upload_keys=self.upload_keys(cid, rnd),
                ),
            )
            for cid in sampled
        ]
        parts = self.data.num_clients  # registered client c trains on partition c % parts
        costs = [self.data.clients[c % parts].train.num_examples for c in sampled]
        steals = self.pool.steals
        results, failures = self.pool.map(  # a client stays on its actor: per-actor caches hit
            "fit",
            params_ref,
            tasks,
            fed.round_timeout_s,
            costs,
            affinity=list(sampled),
            stop=self._stop,  # a stop abandons the round while it trains (RunStopped)
        )
        steals = self.pool.steals - steals  # tasks idle actors took from a straggler's queue
        for ti in results:  # delivered (a task that failed may not have received its tensors)
            self.holdings.deliver(sampled[ti], keys[ti])
        updates: list[ClientUpdate] = []
        rejected: dict[int, str] = {}
        bytes_up = 0
        for ti, reply in sorted(results.items()):
            cid = sampled[ti]
            bytes_up += payload_bytes(reply.get("params")) + payload_bytes(reply.get("extras"))
            spec = {k: self.spec[k] for k in self.upload_keys(cid, rnd)}
            params, extras = reply.get("params"), reply.get("extras")
            reason = validate_extras(extras, self.method_cls.extra_allowed, self.extra_shapes)
            if reason is None and isinstance(params, dict):
                try:  # compressed tensors (low-rank factors) restored, then validated
                    sent = {k: self.params[k] for k in keys[ti]}
                    params, extras = self.method_cls.decode_upload(self.cfg, sent, params, extras)
                except (KeyError, ValueError) as exc:
                    reason = f"cannot decode the upload: {exc}"
            reason = reason or validate_update(params, reply.get("num_examples"), spec)
            if reason is not None:
                rejected[cid] = reason
                continue
            updates.append(
                ClientUpdate(
                    cid, params, int(reply["num_examples"]), reply.get("metrics", {}), extras or {}
                )
            )
        dropped = {sampled[ti]: why for ti, why in failures.items()}
        for cid, why in {**dropped, **rejected}.items():
            log.warning(
                "round %d: client %d %s: %s",
                rnd,
                cid,
                "rejected" if cid in rejected else "dropped out",
                why,
            )
            self.store.discard(cid, rnd)  # its private state of this round does not count
        need = max(fed.min_clients, self.strategy.min_clients())
        if self.cfg.privacy.mode != "none":  # Poisson cohorts vary: only faults fail a round
            need = min(need, len(sampled))
        if len(updates) < need:
            first = next(iter({**dropped, **rejected}.items()), (None, "no client sampled"))
            raise RoundFailedError(
                f"round {rnd}: {len(updates)} of {len(sampled)} clients reported, fewer than "
                f"federation.min_clients={fed.min_clients} or the "
                f"{self.strategy.min_clients()} {self.strategy.name} needs (client {first[0]}: "
                f"{first[1]})"
            )
        fit_s = time.perf_counter() - t0
        inject(self.cfg.federation.faults, "aggregate", rnd)  # chaos runs only
        t_server = time.perf_counter()
        if self.cfg.attack.kind in OMNISCIENT:  # alie / ipm: crafted from the honest updates
            liars = {sampled[ti] for ti, r in results.items() if r.get("attack")}
            updates = omniscient(self.cfg.attack.kind, self.params, updates, liars, self.cfg.attack)
        if self.cfg.privacy.mode == "central":  # DP-FedAvg's noised mean, as the round's mean
            mean = central_estimate(
                self.params,
                updates,
                self.strategy.upload_keys,
                self.cfg.privacy,
                self.expected_cohort(),
                fed.seed,
                rnd,
            )
            params = self.strategy.aggregate(self.params, [ClientUpdate(-1, mean, 1)])
            params = self.server.update(rnd, params, [])  # no individual update leaves here
        elif updates:
            params = self.strategy.aggregate(self.params, updates)
            params = self.server.update(rnd, params, updates)
        else:  # an empty Poisson cohort (local DP): nothing to combine, nothing moves
            params = dict(self.params)
        server_s = time.perf_counter() - t_server  # on the server's own device
        change = global_change(  # what clients train, not what only the server writes
            *(
                {k: v for k, v in d.items() if k not in self.method_cls.download_only}
                for d in (self.params, params)
            )
        )
        self.holdings.changed(
            [k for k in self.global_keys if not unchanged(self.params[k], params[k])], rnd
        )
        self.params = params
        self.round = rnd
        weights = np.array([u.num_examples for u in updates], dtype=float)
        record: dict[str, Any] = {
            "round": rnd,
            **{
                key: float(
                    np.average([u.metrics.get(name, np.nan) for u in updates], weights=weights)
                )
                if updates
                else float("nan")  # an empty round (Poisson sampling under DP)
                for key, name in (("loss", "train_loss"), ("train_accuracy", "train_accuracy"))
            },
        }
        record |= change  # does the global model move at all? (per round, every method)
        record |= self.privacy_spent(rnd)
        record |= {f"server_{k}": v for k, v in self.server.metrics.items()}
        resets = sum(bool(r.get("state_reset")) for r in results.values())
        if resets:  # corrupt private-state files: those clients fell back (logged on the actor)
            record["state_resets"] = resets
        if steals:
            record["tasks_stolen"] = steals
        resting = [r.get("resting") for r in results.values() if r.get("resting")]
        if resting:  # tensors unchanged for rounds: fetched by an actor, or already resident
            record |= {f"resting_{w}": resting.count(w) for w in ("fetched", "resident")}
        attacks = [r.get("attack") for r in results.values() if r.get("attack")]
        if self.cfg.attack.kind != "none":  # simulated Byzantine clients among the sampled
            record["attackers"] = len(attacks)
        cache = [r.get("cache") for r in results.values() if r.get("cache") is not None]
        if cache:  # the method's per-shard cache (teacher outputs, frozen embeddings)
            record |= {"cache_hits": cache.count("hit"), "cache_misses": cache.count("miss")}
        if rnd % fed.eval_every == 0 or rnd == fed.rounds:
            t_eval = time.perf_counter()
            record |= self.evaluate(rnd, sampled)
            if why := collapse(record):  # said in the round line and the summary
                record["collapsed"] = why
            record["eval_s"] = time.perf_counter() - t_eval  # spread over the actors
        record |= {
            "clients_sampled": len(sampled),
            "clients_ok": len(updates),
            "clients_failed": len(dropped),
            "clients_rejected": len(rejected),
            "failures": {str(k): v for k, v in {**dropped, **rejected}.items()},
            "clients": {
                str(sampled[ti]): {
                    "worker": r.get("worker"),
                    "cache": r.get("cache"),
                    "num_examples": r.get("num_examples"),
                    "fit_s": r.get("fit_s"),
                    "phases": r.get("phases"),
                    **(r.get("metrics") or {}),
                }
                for ti, r in sorted(results.items())
            },
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "fit_s": fit_s,
            "server_s": server_s,
            "wall_s": time.perf_counter() - t0,
            "driver_rss_mb": process_memory().get("rss_mb"),
        }
        self._append(record)
        try:
            inject(self.cfg.federation.faults, "checkpoint", rnd)  # chaos runs only
            checkpoint.save(
                self.run_dir,
                rnd,
                self.params,
                {
                    **self.server.state_dict(),
                    **{STRATEGY_STATE + k: v for k, v in self.strategy.state_dict().items()},
                    **self.holdings.state_dict(),
                },
            )
        except OSError as exc:  # the last complete checkpoint is untouched (atomic writes)
            done = checkpoint.latest_round(self.run_dir)
            raise CheckpointError(
                f"round {rnd}: cannot write its checkpoint ({exc.strerror or exc}); the run can "
                f"be resumed after round {done} with --resume once that is fixed"
            ) from None
        return record

    def privacy_spent(self, rnd: int) -> dict[str, Any]:
        """(epsilon, delta) after ``rnd`` rounds (``privacy.mode`` central or local)."""
        p = self.cfg.privacy
        if p.mode == "none":
            return {}
        rate = inclusion_rate(self.cfg.federation.clients_per_round, self.num_registered)
        eps = epsilon(p, rnd, rate if p.mode == "central" else 1.0)
        return {"epsilon": eps, "delta": p.delta}

    def expected_cohort(self) -> float:
        """q x the usable registered clients: central DP's fixed denominator (DP-FedAvg)."""
        usable = usable_count(self.num_registered, self.data.num_clients, frozenset(self.excluded))
        return inclusion_rate(self.cfg.federation.clients_per_round, self.num_registered) * usable

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, rnd: int, sampled: list[int] | None = None) -> dict[str, Any]:
        """Global accuracy on the held-out split (spread over the actors) and personalised
        accuracy: the mean of each client's accuracy on its own local split."""
        fed = self.cfg.federation
        ref = ray.put({k: self.params[k] for k in self.global_keys})
        n_test = self.data.test.num_examples
        step = -(-n_test // len(self.pool))
        chunks = [
            EvalTask("test", rnd, start=s, stop=min(s + step, n_test))
            for s in range(0, n_test, step)
            if self.method_cls.global_model
        ]
        n = self.num_registered
        clients = list(range(n)) if n <= PERSONALIZED_EVAL_MAX else (sampled or [])
        parts = self.data.num_clients  # registered client c evaluates on partition c % parts
        per_client = [
            EvalTask("client", rnd, client_id=c)
            for c in clients
            if self.data.clients[c % parts].local_test.num_examples > 0
            and c % parts not in self.excluded
        ]
        # each client's personalised model on the whole global split (federation.
        # eval_personal_global): what a newcomer gets from one of them, not only the shared part
        on_global = [
            EvalTask("client_global", rnd, client_id=c)
            for c in clients
            if fed.eval_personal_global and c % parts not in self.excluded
        ]
        costs = (
            [t.stop - t.start for t in chunks]
            + [self.data.clients[t.client_id % parts].local_test.num_examples for t in per_client]
            + [n_test for _ in on_global]
        )
        results, failures = self.pool.map(
            "evaluate", ref, chunks + per_client + on_global, fed.round_timeout_s, costs
        )
        reduce, head = self.method_cls.reduce_eval, self.method_cls.headline
        glob = [results[i] for i in range(len(chunks)) if i in results]
        out: dict[str, Any] = {
            **(reduce(glob) if len(glob) == len(chunks) else {head: None}),
            "eval_failed": len(failures),
        }
        if out.get("per_class_accuracy"):
            out |= shot_accuracy(
                out["per_class_accuracy"],
                self.train_class_counts(),
                fed.many_shot_above,
                fed.few_shot_below,
            )
        first_global = len(chunks) + len(per_client)
        pers = [
            reduce([r])[head] for i, r in sorted(results.items()) if len(chunks) <= i < first_global
        ]
        pers = [v for v in pers if v is not None]
        out[f"personalized_{head}"] = float(np.mean(pers)) if pers else None
        if on_global:
            vals = [reduce([r])[head] for i, r in sorted(results.items()) if i >= first_global]
            vals = [v for v in vals if v is not None]
            out[f"personalized_global_{head}"] = float(np.mean(vals)) if vals else None
        why: dict[str, str] = {}
        if out.get(head) is None:
            failed = next(iter(failures.values()), "no test example")
            missing = len(chunks) - len(glob)
            why[head] = (
                f"the global test split was not fully evaluated ({missing} of {len(chunks)} "
                f"chunks failed: {failed})"
                if missing
                else "the global test split has no example"
                if self.method_cls.global_model
                else f"{self.method_cls.name} trains no global model (local training only)"
            )
        if not pers:
            why[f"personalized_{head}"] = (
                "no client local split was evaluated"
                if per_client
                else "no client has a local split"
            )
        if why:
            out["null_reasons"] = why
        return out

    def train_class_counts(self) -> list[int]:
        """Training examples per class, summed over the data partitions."""
        counts = np.zeros(len(self.data.classes), dtype=int)
        for client in self.data.clients:
            c = np.asarray(client.train.class_counts, dtype=int)
            counts[: len(c)] += c
        return counts.tolist()

    # ------------------------------------------------------------------ files
    def _append(self, record: dict[str, Any]) -> None:
        """One strict-JSON line: a value that is not finite is null, with its reason."""
        reasons = dict(record.get("null_reasons", {}))
        safe = json_safe({k: v for k, v in record.items() if k != "null_reasons"}, reasons)
        for key, why in reasons.items():
            if why == "not finite":
                reasons[key] = "not finite (no client reported it, or it diverged)"
        if reasons:
            safe["null_reasons"] = reasons
        record.clear()
        record.update(safe)
        with open(self.run_dir / METRICS, "a") as fh:
            fh.write(dumps(record) + "\n")
            fh.flush()

    def _truncate_metrics(self, last_round: int) -> None:
        path = self.run_dir / METRICS
        if not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the interruption
            if rec.get("round", 0) <= last_round:
                keep.append(line)
        from fedrs.io import write_bytes

        write_bytes(path, ("\n".join(keep) + "\n").encode() if keep else b"")

    def params_snapshot(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.params.items()}

    def memory(self) -> dict[str, float]:
        """The driver process's resident memory (MiB): ``rss_mb`` now, ``peak_rss_mb`` so far."""
        return process_memory()

    def shutdown(self) -> None:
        """Release the client actors and their placement group (idempotent)."""
        self.pool.shutdown()

    def describe_actors(self) -> list[dict[str, Any]]:
        return self.pool.describe()

    def node_id(self) -> str:
        """The Ray node this driver actor runs on."""
        return ray.get_runtime_context().get_node_id()

    def placement_group_id(self) -> str | None:
        """The placement group this driver actor runs in (a sweep trial's), else None."""
        return ray.get_runtime_context().get_placement_group_id()

    def finish(self) -> dict[str, Any]:
        """Write summary.json and the headline's curve (``accuracy.png``, PE-RSITR's
        ``mR.png``: named by the metric it plots); release the actors."""
        records = [json.loads(x) for x in (self.run_dir / METRICS).read_text().splitlines() if x]
        head = self.method_cls.headline
        accs = [r[head] for r in records if r.get(head) is not None]
        summary = {
            "method": self.cfg.method.name,
            "strategy": self.cfg.strategy.name,
            "strategy_in_effect": self.strategy.describe(),
            "rounds_completed": self.round,
            "final": records[-1] if records else {},
            "collapsed": (records[-1].get("collapsed") if records else None),
            "headline": head,
            f"best_{head}": max(accs) if accs else None,
            "totals": {
                key: float(sum(r.get(key, 0) for r in records))
                for key in (
                    "bytes_up",
                    "bytes_down",
                    "wall_s",
                    "clients_failed",
                    "clients_rejected",
                    "clients_ok",
                )
            },
            "registered_clients": self.num_registered,
            "excluded_clients": {str(p): why for p, why in self.excluded.items()},
            "driver_memory": process_memory(),
            "trainable_params_sent": int(
                sum(v.size for k, v in self.params.items() if k in self.strategy.upload_keys)
            ),
        }
        final_classes = next(
            (r["per_class_accuracy"] for r in reversed(records) if r.get("per_class_accuracy")),
            None,
        )
        if final_classes:  # long-tail view: per-class accuracy by training frequency
            fed = self.cfg.federation
            counts = self.train_class_counts()
            summary["long_tail"] = {
                "train_counts": counts,
                "groups": shot_groups(counts, fed.many_shot_above, fed.few_shot_below),
                "many_shot_above": fed.many_shot_above,
                "few_shot_below": fed.few_shot_below,
                "per_class_accuracy": final_classes,
            }
            _plot_classes(summary["long_tail"], self.data.classes, self.run_dir / "per_class.png")
        if self.data.manifest.get("scene") and self.round:
            summary["map"] = self._scene_map()
        write_json(self.run_dir / "summary.json", summary)
        _plot(records, self.run_dir / f"{head}.png", head)
        self.pool.shutdown()
        return summary

    def _scene_map(self) -> str | None:
        """``map.png``: the final model's predictions on a scene's test pixels beside their
        ground truth (methods that predict rows); the file name, or None."""
        from fedrs.orchestrator.maps import plot_scene_map

        n = self.data.test.num_examples
        step = -(-n // len(self.pool))
        tasks = [
            EvalTask("test", self.round, start=s, stop=min(s + step, n)) for s in range(0, n, step)
        ]
        results, failures = self.pool.map(
            "predict", ray.put(self.params), tasks, self.cfg.federation.round_timeout_s
        )
        if failures or len(results) != len(tasks):
            log.info("no map.png: %s", next(iter(failures.values()), "no prediction"))
            return None
        test = self.data.test_shard()
        plot_scene_map(
            self.data.manifest["scene"],
            test.arrays["coords"],
            test.labels,
            np.concatenate([results[i] for i in range(len(tasks))]),
            self.data.classes,
            self.run_dir / "map.png",
        )
        return "map.png"


def _plot(records: list[dict[str, Any]], path: Path, head: str = "accuracy") -> None:
    """The headline metric per round: on the global test split and averaged over clients."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedrs.io import write_bytes

    fig, ax = plt.subplots(figsize=(6, 3.5))
    evaluated = [r for r in records if head in r]
    rounds = [r["round"] for r in evaluated]
    for key, label in (
        (head, "global (held-out split)"),
        (f"personalized_{head}", "personalised (local splits)"),
    ):
        ax.plot(
            rounds,
            [np.nan if r.get(key) is None else r[key] for r in evaluated],
            marker="o",
            label=label,
        )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(head)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def _plot_classes(long_tail: dict[str, Any], classes: list[str], path: Path) -> None:
    """Final per-class accuracy on the global split, classes by training examples (most
    first), coloured by long-tail group."""
    from fedrs.io import new_figure, save_figure

    order = np.argsort(long_tail["train_counts"], kind="stable")[::-1]
    colours = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}
    fig, ax = new_figure(max(6.0, 0.3 * len(classes)), 3.5)
    accs = long_tail["per_class_accuracy"]
    ax.bar(
        range(len(order)),
        [np.nan if accs[i] is None else accs[i] for i in order],
        color=[colours[long_tail["groups"][i]] for i in order],
    )
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(
        [f"{classes[i]} ({long_tail['train_counts'][i]})" for i in order], rotation=90, fontsize=7
    )
    ax.set_ylabel("accuracy (global split)")
    ax.set_ylim(0, 1)
    from matplotlib.patches import Patch

    present = [g for g in colours if g in long_tail["groups"]]
    ax.legend(handles=[Patch(color=colours[g], label=f"{g}-shot") for g in present], fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
