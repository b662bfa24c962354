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
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from fedrs.actors.client import Download, FitTask, startup_record
from fedrs.actors.dispatch import PerTask
from fedrs.actors.placement import Placement
from fedrs.actors.pool import ClientPool
from fedrs.core import privacy
from fedrs.core.config import ASYNC_POLICIES, RunConfig, with_data_path
from fedrs.core.metrics import collapse, global_change
from fedrs.core.sampling import registered_clients, sample_cohort
from fedrs.core.state_store import FileStateStore
from fedrs.core.strategies import make_strategy
from fedrs.core.system import Task, stale_update, time_to_target
from fedrs.core.validation import spec_of
from fedrs.datasets.manifest import FedDataset
from fedrs.errors import FedrsError, RunStopped
from fedrs.faults import inject
from fedrs.io import process_memory, write_json
from fedrs.methods.base import Method
from fedrs.orchestrator import checkpoint, partners, records
from fedrs.orchestrator.aggregate import check_quorum, combine
from fedrs.orchestrator.broadcast import Broadcast
from fedrs.orchestrator.clock import AsyncRounds, Clock
from fedrs.orchestrator.evaluation import Evaluator, train_class_counts
from fedrs.orchestrator.exchange import (
    Exchange,
    accept_all,
    client_record,
    declared_extras,
    exchange_for,
    fit_options,
    reply_bytes,
    uploadable,
)
from fedrs.orchestrator.holdings import PREFIX as HOLDINGS_STATE
from fedrs.orchestrator.holdings import Holdings, unchanged
from fedrs.orchestrator.plots import plot_classes, plot_curve

log = logging.getLogger(__name__)
STATE_DIR = "client_state"


@dataclass
class Gathered:
    """A round's replies before the server takes them, by index into ``sampled``."""

    sampled: list[int]
    exchanges: list[Exchange]
    results: dict[int, Any]
    failures: dict[int, str]
    shared: dict[str, Any]  # what partner organisations sent each other
    bytes_down: int
    sent: list[Any] | None = None  # asynchronous: the tensors each trained from
    staleness: list[int] = field(default_factory=list)  # asynchronous: versions behind
    rounds: list[int] | None = None  # asynchronous: the round each client's state is saved under
    clock: dict[str, Any] = field(default_factory=dict)  # the virtual clock's record fields
    unavailable: int = 0  # sampled clients the virtual clock dropped (not faults: no quorum)


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
        self.started_at = getattr(self, "started_at", time.time())  # a warm process: its first
        setup_at = time.time()
        try:
            self._start(cfg, run_dir, data_path, method_cls, resume, excluded, placement, pool)
            self.startup = startup_record(self.started_at, setup_at, **self._first_params)
        except BaseException:  # a failed start must not leave actors or reserved resources
            if getattr(self, "pool", None) is not None:
                self.pool.shutdown()
            elif pool is not None:
                pool.shutdown()
            raise

    def reinit(self, *args: Any) -> None:
        """Start afresh for another run in this warm process (a sweep's next trial,
        ``orchestrator/warm.py``): the constructor again, every attribute replaced."""
        self.__init__(*args)  # type: ignore[misc]

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
        self._first_params: dict[str, float] = {}
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
        # partner organisations by region (a 'hsi|lidar' build): sampled and trained together
        self.groups = partners.partner_groups(self.data.manifest)
        # clients expected per round (q x usable registered): central DP's fixed denominator
        self.cohort = privacy.expected_cohort(
            cfg, self.num_registered, self.data.num_clients, self.excluded
        )
        state = checkpoint.load(self.run_dir) if resume else None
        if state is None:  # a fresh start: nothing an earlier run left in this directory counts
            for stale in (STATE_DIR, checkpoint.DIR):
                shutil.rmtree(self.run_dir / stale, ignore_errors=True)
            (self.run_dir / records.METRICS).unlink(missing_ok=True)
        self.store = FileStateStore(self.run_dir / STATE_DIR)
        cfg = self.cfg = with_data_path(cfg, data_path)  # what the method's server reads
        if pool is None:
            pool = ClientPool(cfg, method_cls, data_path, str(self.store.root), placement=placement)
        self.pool = pool
        gpus = ray.get_gpu_ids() if ray.is_initialized() else []
        self.server = method_cls.Server(cfg, self.data.classes, "cuda:0" if gpus else "cpu")
        if state is None:
            self.round = 0
            t = time.perf_counter()  # the first call to the client actors: waits for them
            self.params = self.pool.call_one("init_global", cfg.federation.seed)
            self._first_params = {"first_params_s": time.perf_counter() - t}
        else:
            self.round, self.params, _ = state
            records.truncate(self.run_dir, self.round)
            log.info("resuming after round %d", self.round)
        # What the server holds and broadcasts: the method's global tensors.
        self.global_keys = tuple(self.params)
        self.strategy = make_strategy(
            cfg.strategy.name,
            options=cfg.strategy,
            global_keys=uploadable(method_cls, self.global_keys),
            prompt_keys=method_cls.prompt_keys,
        )
        self.spec = spec_of(self.params, self.strategy.upload_keys)
        # which tensors each client holds (bytes_down) and the resting objects handed out
        self.holdings = Holdings(self.global_keys, [v.nbytes for v in self.params.values()])
        if state is not None:  # the server's, the strategy's (moments) and the holdings
            checkpoint.restore_round(state[2], self.round, self._servers(), HOLDINGS_STATE)
        self.broadcast = Broadcast(self.pool.put)
        self.extra_shapes = declared_extras(cfg, method_cls, len(self.data.classes))
        self.partners = partners.Partners(
            cfg, method_cls, self.data.manifest, self.pool, self.strategy
        )
        self.evaluator = Evaluator(
            cfg, method_cls, self.data, self.pool, self.num_registered, self.excluded
        )
        self.clock = None  # system heterogeneity on a virtual clock
        self.rounds: AsyncRounds | None = None  # asynchronous rounds (FedBuff, FedAsync)
        self.stream: Any = None  # their tasks on the pool (``ClientPool.stream``)
        if cfg.clocked:
            keys, resumed = self.strategy.upload_keys, state is not None
            self.clock = Clock(cfg, self.pool, self.params, keys, self.run_dir, resumed)
        if cfg.federation.policy in ASYNC_POLICIES:
            self.rounds = self._async_rounds()
            if state is not None:  # what was waiting to arrive, and the schedule replayed
                self.rounds.load_state_dict(state[2], self.round)

    def _async_rounds(self) -> AsyncRounds:
        """The schedule of an asynchronous run (``clock.AsyncRounds``)."""
        policy = self.cfg.federation.policy
        if self.groups:
            raise FedrsError(
                f"federation.policy={policy}: partner organisations train together; "
                "their exchange needs synchronous rounds"
            )
        parts, clock = self.data.num_clients, self.clock
        assert clock is not None
        usable = [c for c in range(self.num_registered) if c % parts not in self.excluded]
        epochs = self.cfg.client.local_epochs

        def task_of(c: int) -> Task:
            ex = self.exchange(c, 1)
            n = self.data.clients[c % parts].train.num_examples
            down = sum(self.params[k].nbytes for k in ex.down)
            up = sum(self.params[k].nbytes for k in ex.up)
            return Task(c, clock.example_flops * n * epochs, down, up)

        return AsyncRounds(self.cfg, clock, usable, task_of)

    def exchange(self, client_id: int, rnd: int) -> Exchange:
        """What this client receives and uploads in ``rnd`` (``exchange.exchange_for``)."""
        record = client_record(self.data.manifest["clients"], client_id)
        return exchange_for(
            self.method_cls, self.cfg, record, rnd, self.global_keys, self.strategy.upload_keys
        )

    # ------------------------------------------------------------------ the round loop
    def run(self, stop_after: int | None = None) -> Iterator[dict[str, Any]]:
        """Run the remaining rounds, yielding each round's metrics as it completes."""
        fed = self.cfg.federation
        if not self.method_cls.trains:
            record = records.untrained(self.evaluate(0))
            records.append(self.run_dir, record)
            yield record
            return
        try:
            for rnd in range(self.round + 1, fed.rounds + 1):
                if self._stop.is_set():
                    return
                try:
                    record = self.run_round(rnd)
                except RunStopped:  # the round in flight is abandoned: its private states too
                    for cid in self._sampled:
                        self.store.discard(cid, rnd)
                    self.pool.discard(self._sampled, rnd)
                    log.info("round %d abandoned: the run was asked to stop", rnd)
                    return
                yield record
                if stop_after is not None and rnd >= stop_after:
                    return
        finally:
            self._end_stream()  # asynchronous tasks still training: abandoned

    def request_stop(self) -> int:
        """Stop the run soon (runs beside ``run``: the driver actor has two threads): a round
        still training is abandoned (nothing of it is kept), a round already aggregated is
        evaluated and checkpointed; ``run`` then ends. Returns the last complete round."""
        self._stop.set()
        return self.round

    def run_round(self, rnd: int) -> dict[str, Any]:
        """One round: sample, send, fit, accept, aggregate + server step, evaluate, record."""
        fed = self.cfg.federation
        t0 = time.perf_counter()
        steals = self.pool.steals
        got = self._gather_async(rnd) if self.rounds is not None else self._gather(rnd)
        sampled, exchanges, results = got.sampled, got.exchanges, got.results
        failures = got.failures
        self._sampled = sampled  # whose private state an abandoned round discards
        steals = self.pool.steals - steals  # tasks idle actors took from a straggler's queue
        updates, rejected = accept_all(
            self.method_cls,
            self.cfg,
            sampled,
            exchanges,
            results,
            self.params,
            self.spec,
            self.extra_shapes,
            sealed=self.cfg.secagg.enabled,
            sent=got.sent,
        )
        if got.sent is not None:  # stale updates, as steps from today's tensors
            updates = [
                stale_update(u, self.params, got.sent[i], got.staleness[i])
                for i, u in ((sampled.index(u.client_id), u) for u in updates)
            ]
        dropped = {sampled[ti]: why for ti, why in failures.items()}
        mean, secure = self._sum_sealed(rnd, updates)
        dropped |= secure.pop("lost", {})
        updates = [u for u in updates if u.client_id not in dropped]
        self._discard(rnd, dropped, rejected, got.rounds)
        check_quorum(
            self.cfg,
            self.strategy,
            rnd,
            len(sampled),
            len(updates),
            {**dropped, **rejected},
            got.unavailable,
        )
        fit_s = time.perf_counter() - t0
        inject(fed.faults, "aggregate", rnd)  # chaos runs only
        t_server = time.perf_counter()
        liars = {sampled[ti] for ti, r in results.items() if r.get("attack")}
        params, updates = combine(
            self.cfg,
            self.strategy,
            self.server,
            self.params,
            updates,
            liars,
            rnd,
            self.cohort,
            mean,
        )
        change = self._advance(rnd, params)
        server_s = time.perf_counter() - t_server  # on the server's own device
        record: dict[str, Any] = {
            "round": rnd,
            **records.train_means(updates),
            **change,  # does the global model move at all? (per round, every method)
            **privacy.spent(self.cfg, rnd, self.num_registered),
            **{f"server_{k}": v for k, v in self.server.metrics.items()},
            **{f"strategy_{k}": v for k, v in self.strategy.metrics.items()},
            **records.worker_counters(results, steals, self.cfg.attack.kind != "none"),
            **got.shared,  # what partner organisations sent each other (none: nothing)
            **secure,  # what secure aggregation moved (none: nothing)
            **got.clock,  # the virtual clock's view of the round (none: nothing)
        }
        if rnd % fed.eval_every == 0 or rnd == fed.rounds:
            t_eval = time.perf_counter()
            record |= self.evaluate(rnd, sampled)
            if why := collapse(record):  # said in the round line and the summary
                record["collapsed"] = why
            record["eval_s"] = time.perf_counter() - t_eval  # spread over the actors
        record |= records.tally(sampled, updates, dropped, rejected, results) | {
            "bytes_up": sum(reply_bytes(r) for r in results.values()),
            "bytes_down": got.bytes_down,
            "fit_s": fit_s,
            "server_s": server_s,
            "wall_s": time.perf_counter() - t0,
            "driver_rss_mb": process_memory().get("rss_mb"),
        }
        records.append(self.run_dir, record)
        self._checkpoint(rnd)
        return record

    # ------------------------------------------------------------------ the round's steps
    def _fit_tasks(
        self, rnd: int, sampled: list[int], exchanges: list[Exchange]
    ) -> tuple[list[int], list[Any], list[FitTask], dict[int, str], dict[str, Any]]:
        """The round's fit tasks: each client's group of tensors (one object per distinct
        group; what the last round left unchanged in one that actors keep resident), its
        options and what its partners shared with it (``partners.Partners``). Returns the
        indices into ``sampled`` that train, their downloads and tasks, the clients that lose
        the round with why, and the partner traffic."""
        downs = [ex.down for ex in exchanges]
        groups = list(dict.fromkeys(downs))  # one object per distinct group
        downloads = self.broadcast.downloads(groups, self.params, self.holdings, self.round)
        inbox, lost, shared = self.partners.share(
            rnd, sampled, [downloads[d] for d in downs], self._stop
        )
        active = [i for i, cid in enumerate(sampled) if cid not in lost]
        tasks = [
            FitTask(
                sampled[i],
                dataclasses.replace(
                    fit_options(self.cfg, rnd, sampled[i], self.strategy, exchanges[i]),
                    partners=inbox.get(sampled[i], {}),
                ),
            )
            for i in active
        ]
        failures = {i: lost[cid] for i, cid in enumerate(sampled) if cid in lost}
        return active, [downloads[downs[i]] for i in active], tasks, failures, shared

    def _fit(
        self, rnd: int, sampled: list[int], exchanges: list[Exchange]
    ) -> tuple[dict[int, Any], dict[int, str], dict[str, Any]]:
        """Train the round's tasks (``_fit_tasks``) on the pool (a client stays on its
        actor, so per-actor caches hit). Results and failures by index into ``sampled``; the
        partner traffic."""
        active, downloads, tasks, lost, shared = self._fit_tasks(rnd, sampled, exchanges)
        parts = self.data.num_clients  # registered client c trains on partition c % parts
        results, failures = self.pool.map(
            "fit",
            PerTask(downloads),
            tasks,
            self.cfg.federation.round_timeout_s,
            [self.data.clients[sampled[i] % parts].train.num_examples for i in active],
            affinity=[sampled[i] for i in active],
            stop=self._stop,  # a stop abandons the round while it trains (RunStopped)
        )
        results = {active[ti]: r for ti, r in results.items()}
        failures = {active[ti]: why for ti, why in failures.items()} | lost
        for i in results:  # delivered (a task that failed may not have received its tensors)
            self.holdings.deliver(sampled[i], exchanges[i].down)
        return results, failures, shared

    def _gather(self, rnd: int) -> Gathered:
        """A synchronous round's replies: sample (over-selection samples more), let the
        virtual clock's policy drop the clients it would not wait for (they never run),
        train the others."""
        # fixed-size, or Poisson under privacy.mode (what the accountant assumes; may be empty)
        sampled = sample_cohort(  # partner organisations of a region join together
            self.clock.sampling() if self.clock else self.cfg,
            self.num_registered,
            self.data.num_clients,
            self.excluded,
            rnd,
            self.groups,
        )
        self._sampled = sampled
        exchanges = [self.exchange(cid, rnd) for cid in sampled]
        # a client is charged for the tensors it does not hold yet
        costs = [self.holdings.cost(c, ex.down) for c, ex in zip(sampled, exchanges, strict=True)]
        plan = self._plan(sampled, exchanges, costs)  # the virtual clock's verdict, if any
        run = plan.kept if plan else list(range(len(sampled)))  # the others never run
        results, failures, shared = self._fit(
            rnd, [sampled[i] for i in run], [exchanges[i] for i in run]
        )
        results = {run[ti]: r for ti, r in results.items()}  # by index into sampled
        failures = {run[ti]: why for ti, why in failures.items()} | (plan.dropped if plan else {})
        clock = self.clock.advance(sampled, plan) if self.clock and plan else {}
        bytes_down = sum(costs[i] for i in run)
        return Gathered(
            sampled,
            exchanges,
            results,
            failures,
            shared,
            bytes_down,
            clock=clock,
            unavailable=len(plan.dropped) if plan else 0,
        )

    def _gather_async(self, rnd: int) -> Gathered:
        """Aggregation ``rnd`` of an asynchronous run (``clock.AsyncRounds``): the tasks that
        start on today's tensors (version rnd - 1) are handed to the pool's stream, where
        they train while the driver goes on; the arrivals the schedule gives this
        aggregation are waited for and taken with the tensors each trained from."""
        assert self.rounds is not None and self.clock is not None
        if self.stream is None:
            self.stream = self.pool.stream("fit", self.cfg.federation.round_timeout_s)
        self._restart_async()  # what a resumed run had in training
        version = rnd - 1
        wave = [t for t in self.rounds.wave(version) if not t.lost]  # lost ones never run
        exchanges = [self.exchange(t.client_id, rnd) for t in wave]
        costs = [
            self.holdings.cost(t.client_id, ex.down) for t, ex in zip(wave, exchanges, strict=True)
        ]
        clients = [t.client_id for t in wave]
        active, downloads, tasks, lost, shared = self._fit_tasks(rnd, clients, exchanges)
        at = self.holdings.snapshot()
        # earliest virtual arrival first: what the next aggregations wait for trains first
        ids = self.stream.extend(
            downloads, tasks, [-wave[i].finish for i in active], [clients[i] for i in active]
        )
        for i, ti in zip(active, ids, strict=True):
            self.rounds.start(wave[i], ti, self.params, exchanges[i].down, at)
        for i, why in lost.items():
            self.rounds.hold(wave[i], None, why)
        due = self.rounds.due(rnd)
        if due:
            self.stream.run(2, self._stop, until={ti for _, ti, _, _ in due})
        for task, ti, down, at in due:
            reply, why = self.stream.results.pop(ti, None), self.stream.failures.pop(ti, "")
            if reply is not None:  # delivered as they were when it was handed out
                self.holdings.deliver(task.client_id, down, at)
            self.rounds.hold(task, reply, why)
        training = len(self.stream.owner) + len(self.stream.pending)
        agg, taken = self.rounds.take(rnd)
        sampled = [t.client_id for t, *_ in taken]
        out = Gathered(
            sampled,
            [self.exchange(t.client_id, t.base + 1) for t, *_ in taken],
            {i: r for i, (_, r, _, _) in enumerate(taken) if r is not None},
            {i: why or "no reply" for i, (_, r, why, _) in enumerate(taken) if r is None},
            shared,
            sum(costs),
            sent=[base for *_, base in taken],
            staleness=[agg.version - 1 - t.base for t, *_ in taken],
            rounds=[t.base + 1 for t, *_ in taken],
            unavailable=len(agg.lost),
        )
        start, self.clock.now = self.clock.now, agg.time
        stale = [s for i, s in enumerate(out.staleness) if i in out.results]
        out.clock = {
            "virtual_round_s": agg.time - start,
            "virtual_time_s": agg.time,
            "clients_late": len(agg.lost),
            "staleness_mean": float(np.mean(stale)) if stale else 0.0,
            "staleness_max": max(stale, default=0),
            "virtual_task_s": {str(t.client_id): t.finish - t.start for t, *_ in taken},
            "tasks_training": training,  # in wall time, while this aggregation was made
        }
        return out

    def _restart_async(self) -> None:
        """Hand out again the tasks a checkpoint found training (a resumed run): each with
        the whole of its base version (not today's resident objects), as its round's task."""
        assert self.rounds is not None and self.stream is not None
        restarts, self.rounds.restarts = self.rounds.restarts, []
        for task, down, at in restarts:
            rnd, params = task.base + 1, self.rounds.versions[task.base]
            ex = self.exchange(task.client_id, rnd)
            download = Download(self.pool.put({k: params[k] for k in down}), None)
            fit = FitTask(
                task.client_id, fit_options(self.cfg, rnd, task.client_id, self.strategy, ex)
            )
            (ti,) = self.stream.extend([download], [fit], [-task.finish], [task.client_id])
            self.rounds.start(task, ti, params, down, at)

    def _end_stream(self) -> None:
        """Abandon the asynchronous tasks still training when the run ends or stops."""
        if self.stream is not None:
            self.stream.drain(self.cfg.federation.round_timeout_s)
            self.stream = None

    def _plan(self, sampled: list[int], exchanges: list[Exchange], costs: list[int]) -> Any:
        """The round's schedule on the virtual clock (``orchestrator/clock.py``), or None."""
        if self.clock is None:
            return None
        parts = self.data.num_clients
        examples = [self.data.clients[c % parts].train.num_examples for c in sampled]
        up = [sum(self.params[k].nbytes for k in ex.up) for ex in exchanges]
        return self.clock.plan(sampled, examples, costs, up)

    def _sum_sealed(
        self, rnd: int, updates: list[Any]
    ) -> tuple[dict[str, np.ndarray] | None, dict[str, Any]]:
        """Under ``secagg.enabled`` the round's mean of the sealed updates, summed securely
        by the sites (``actors/secagg.py``), and for the record the bytes it moved and, under
        ``lost``, the clients whose contribution it lacks; else nothing."""
        if not self.cfg.secagg.enabled or not updates:
            return None, {}
        keys = sorted(self.strategy.upload_keys)
        before = sum(self.pool.wire.values())
        examples = {u.client_id: u.num_examples for u in updates}
        delta, lost = self.pool.sum_sealed(rnd, examples, keys, self.cfg.federation.round_timeout_s)
        info: dict[str, Any] = {"secagg_bytes": sum(self.pool.wire.values()) - before}
        info["lost"] = lost
        if delta is None:
            return None, info
        mean = {k: (self.params[k] + d).astype(self.params[k].dtype) for k, d in delta.items()}
        return mean, info

    def _discard(
        self,
        rnd: int,
        dropped: dict[int, str],
        rejected: dict[int, str],
        rounds: list[int] | None = None,
    ) -> None:
        """Log each client that dropped out or was rejected; its private state of this round
        does not count (``rounds``: per sampled client, the round its task saved under)."""
        saved = dict(zip(self._sampled, rounds, strict=True)) if rounds else {}
        for cid, why in {**dropped, **rejected}.items():
            verb = "rejected" if cid in rejected else "dropped out"
            log.warning("round %d: client %d %s: %s", rnd, cid, verb, why)
            self.store.discard(cid, saved.get(cid, rnd))
        self.pool.discard(list({**dropped, **rejected}), rnd)  # where the clients keep state

    def _advance(self, rnd: int, params: dict[str, np.ndarray]) -> dict[str, float]:
        """Make ``params`` the global tensors of round ``rnd``; how far the clients' tensors
        moved (not what only the server writes)."""
        trained = self.method_cls.download_only
        change = global_change(
            *({k: v for k, v in d.items() if k not in trained} for d in (self.params, params))
        )
        self.holdings.changed(
            [k for k in self.global_keys if not unchanged(self.params[k], params[k])], rnd
        )
        self.params = params
        self.round = rnd
        return change

    def _servers(self) -> tuple[Any, Any, Any]:
        return self.server, self.strategy, self.holdings

    def _checkpoint(self, rnd: int) -> None:
        """The global tensors and every server-side state, atomically (CheckpointError)."""
        faults = self.cfg.federation.faults
        checkpoint.save_round(  # chaos runs inject a fault first
            self.run_dir,
            rnd,
            self.params,
            self._servers(),
            lambda: inject(faults, "checkpoint", rnd),
            self.rounds.state_dict() if self.rounds is not None else None,
        )

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, rnd: int, sampled: list[int] | None = None) -> dict[str, Any]:
        """The global tensors on the held-out split and each client's on its local split."""
        return self.evaluator.evaluate({k: self.params[k] for k in self.global_keys}, rnd, sampled)

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

    def describe_startup(self) -> dict[str, Any]:
        """How this driver started (``actors.client.startup_record``)."""
        return self.startup

    def node_id(self) -> str:
        """The Ray node this driver actor runs on."""
        return ray.get_runtime_context().get_node_id()

    def placement_group_id(self) -> str | None:
        """The placement group this driver actor runs in (a sweep trial's), else None."""
        return ray.get_runtime_context().get_placement_group_id()

    def finish(self) -> dict[str, Any]:
        """Write summary.json and the headline's curve (``accuracy.png``, PE-RSITR's
        ``mR.png``: named by the metric it plots); release the actors."""
        recs = records.read(self.run_dir)
        head, fed = self.method_cls.headline, self.cfg.federation
        summary = records.summarize(
            recs,
            head,
            method=self.cfg.method.name,
            strategy=self.cfg.strategy.name,
            strategy_in_effect=self.strategy.describe(),
            rounds_completed=self.round,
            registered_clients=self.num_registered,
            excluded_clients={str(p): why for p, why in self.excluded.items()},
            trainable_params_sent=int(
                sum(v.size for k, v in self.params.items() if k in self.strategy.upload_keys)
            ),
        )
        if self.clock is not None:  # virtual time, and when the target was first reached
            summary["virtual_time_s"] = self.clock.now
            target = self.cfg.system.target_accuracy
            if target:
                summary["time_to_target_s"] = time_to_target(recs, head, target)
        counts = train_class_counts(self.data)
        tail = records.long_tail(recs, counts, fed.many_shot_above, fed.few_shot_below)
        if tail:  # long-tail view: per-class accuracy by training frequency
            summary["long_tail"] = tail
            plot_classes(tail, self.data.classes, self.run_dir / "per_class.png")
        if self.data.manifest.get("scene") and self.round:
            summary["map"] = self.evaluator.scene_map(
                self.params, self.round, self.run_dir / "map.png"
            )
        write_json(self.run_dir / "summary.json", summary)
        plot_curve(recs, self.run_dir / f"{head}.png", head)
        self.pool.shutdown()
        return summary
