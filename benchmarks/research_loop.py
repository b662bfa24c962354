"""The baseline of ``fedrs bench vs-sequential``: the loop of prompt-FL research code (PromptFL,
FedOTP, FedPGP: one process, one torch thread, the method built once, each round's clients
trained one after another, then the strategy), its in-process evaluation, the loop interleaved
round by round with fedrs, and the ``ceiling`` control (the same clients split statically over
plain processes, no Ray, no orchestrator).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from fedrs.benchmarks.harness import (
    actor_pids,
    build_local,
    client_exchange,
    cpu_between,
    cpu_snapshot,
    machine_cpu,
    merge_cpu,
    steady_index,
    threads,
)
from fedrs.orchestrator.exchange import fit_options


class SequentialLoop:
    """The research-code loop: one process, one torch thread, the method built once; each round
    trains the sampled clients one after another, then aggregates. Private client state stays
    in a dict in memory. ``round`` runs one round, so rounds can alternate with fedrs's."""

    def __init__(self, cfg: Any, data_path: str) -> None:
        from fedrs.datasets.manifest import FedDataset

        with threads():
            t0 = time.perf_counter()
            self.cfg, fed = cfg, cfg.federation
            self.data = FedDataset(data_path)
            self.method_cls, self.method, self.params, self.strategy = build_local(cfg, self.data)
            self.global_keys = tuple(self.params)
            self.registered = fed.num_clients or self.data.num_clients
            self.private: dict[int, dict[str, np.ndarray]] = {}
            self.server = self.method_cls.Server(cfg, self.data.classes)
            self.shard_of = shard_source(cfg, self.data, self.method)
            self.build_s = time.perf_counter() - t0
        self.rounds: list[dict[str, Any]] = []

    def round(self, rnd: int) -> dict[str, Any]:
        from fedrs.core.sampling import sample_clients
        from fedrs.core.validation import accept, spec_of

        fed, method = self.cfg.federation, self.method
        with threads():
            t, cpu, busy = time.perf_counter(), time.process_time(), machine_cpu().get("busy", 0)
            sampled = sample_clients(self.registered, fed.clients_per_round, fed.seed, rnd)
            download = {k: self.params[k] for k in self.global_keys}
            updates, client_s = [], {}
            for cid in sampled:
                tc = time.perf_counter()
                state = self.private.get(cid) or method.init_private(cid, fed.seed)
                ex = client_exchange(self.cfg, self.data, self.strategy, download, rnd, cid)
                sent = {k: download[k] for k in ex.down}
                out = method.fit(
                    sent,
                    state,
                    self.shard_of(cid % self.data.num_clients),
                    fit_options(self.cfg, rnd, cid, self.strategy, ex),
                )
                if out.private:
                    self.private[cid] = out.private
                reply = {
                    "params": out.params,
                    "extras": out.extras,
                    "num_examples": out.num_examples,
                    "metrics": out.metrics,
                }  # what an actor returns, accepted by the driver's rule
                spec = spec_of(self.params, ex.up)
                update, why = accept(self.method_cls, self.cfg, cid, reply, sent, spec, None)
                if update is None:
                    raise RuntimeError(f"round {rnd}: client {cid} rejected: {why}")
                updates.append(update)
                client_s[str(cid)] = time.perf_counter() - tc
            fit_s = time.perf_counter() - t
            params = self.strategy.aggregate(self.params, updates)
            self.params = self.server.update(rnd, params, updates)
            train_s = time.perf_counter() - t
            rec = {"round": rnd, "fit_s": fit_s, "train_s": train_s, "clients": client_s}
            if rnd % fed.eval_every == 0 or rnd == fed.rounds:
                te = time.perf_counter()
                glob = {k: self.params[k] for k in self.global_keys}
                rec |= evaluate_in_process(method, self.data, glob, self.private)
                rec["eval_s"] = time.perf_counter() - te
            rec["round_s"] = time.perf_counter() - t
            rec["cpu_s"] = time.process_time() - cpu  # < round_s: the machine was busy
            # cores used meanwhile by every other process on the machine
            rec["other_cores"] = (
                max(0.0, machine_cpu().get("busy", 0) - busy - rec["cpu_s"]) / rec["round_s"]
            )
        if "eval_s" in rec:  # the fair one-process reference: the same evaluation on all the
            # cores fedrs's actors get (torch threads = workers), outside the timed round
            te = time.perf_counter()
            with threads(self.cfg.resources.num_actors):
                evaluate_in_process(method, self.data, glob, self.private)
            rec["eval_s_all_threads"] = time.perf_counter() - te
        self.rounds.append(rec)
        return rec

    def result(self) -> dict[str, Any]:
        return {"build_s": self.build_s, "rounds": self.rounds, "params": self.params, "threads": 1}


def run_sequential(cfg: Any, data_path: str) -> dict[str, Any]:
    """All rounds of the sequential loop, back to back."""
    loop = SequentialLoop(cfg, data_path)
    for rnd in range(1, cfg.federation.rounds + 1):
        loop.round(rnd)
    return loop.result()


def run_interleaved(cfg: Any, data_path: str, run_dir: Path) -> tuple[dict, dict[str, Any]]:
    """Sequential round r, then fedrs round r (the driver actor's ``run_round``), for every r;
    fedrs's actors sit idle while the loop runs. (sequential result, fedrs result)."""
    import ray

    from fedrs.methods import method_class
    from fedrs.orchestrator.spawn import shutdown_pool, spawn_driver

    t0 = time.perf_counter()
    driver, pool = spawn_driver(cfg, run_dir, method_class(cfg.method.name))
    try:
        ray.get(driver.describe_actors.remote())  # the client actors are up
        spawn_s = time.perf_counter() - t0
        seq = SequentialLoop(cfg, data_path)
        periods, records, snaps = [], [], []
        for rnd in range(1, cfg.federation.rounds + 1):
            seq.round(rnd)
            a = cpu_snapshot()
            t = time.perf_counter()  # after the /proc scan: only the round is timed
            records.append(ray.get(driver.run_round.remote(rnd)))
            periods.append(time.perf_counter() - t)
            snaps.append((a, cpu_snapshot()))
        t = time.perf_counter()
        summary = ray.get(driver.finish.remote())
        finish_s = time.perf_counter() - t
        params = ray.get(driver.params_snapshot.remote())
    finally:
        ray.kill(driver)
        shutdown_pool(pool)
    actors = actor_pids(records)
    steady = [cpu_between(*snaps[i], actors) for i in steady_index(len(records))]
    fedrs = {
        "cpu_steady": merge_cpu([c for c in steady if c]),
        "spawn_s": spawn_s,
        "finish_s": finish_s,
        "periods": periods,
        "records": records,
        "summary": summary,
        "params": params,
    }
    return seq.result(), fedrs


def shard_source(cfg: Any, data: Any, method: Any) -> Any:
    """What ``method.fit`` trains on, as the worker builds it: pixels, or the frozen-feature
    cache (``data.feature_cache``, methods whose image encoder never changes)."""
    spec = method.input_cache() if cfg.data.feature_cache else None
    if spec is not None:
        from fedrs.datasets.features import FeatureCache, feature_key

        cache = FeatureCache(data, feature_key(spec.identity), spec.compute)
        return lambda p: cache.view(data.clients[p].train, replace_inputs=spec.replaces_inputs)
    return data.client


def evaluate_in_process(method: Any, data: Any, params: dict, private: dict) -> dict[str, Any]:
    """The driver's evaluation, in one process: the global test split with the global tensors
    alone, and every client's local split with its private state; the method's own metrics
    (``evaluate_rows`` over the whole split, ``reduce_eval``)."""
    from fedrs.orchestrator.evaluation import PERSONALIZED_EVAL_MAX

    head = method.headline
    test = data.test_shard()
    out = dict(method.reduce_eval([method.evaluate_rows(params, {}, test, 0, len(test))]))
    pers = []
    if data.num_clients <= PERSONALIZED_EVAL_MAX:
        for c in range(data.num_clients):
            if data.clients[c].local_test.num_examples == 0:
                continue
            shard = data.client_test(c)
            state = private.get(c) or method.init_private(c, method.cfg.federation.seed)
            value = method.reduce_eval([method.evaluate_rows(params, state, shard, 0, len(shard))])
            if value.get(head) is not None:
                pers.append(value[head])
    out[f"personalized_{head}"] = float(np.mean(pers)) if pers else None
    return out


def _ceiling_worker(
    cfg_dict: dict[str, Any],
    data_path: str,
    plan: list[list[int]],
    barrier: Any,
    queue: Any,
    rank: int,
    retain_freed: bool,
) -> None:
    import torch

    from fedrs.actors.allocator import retain_freed_memory
    from fedrs.core.config import from_dict
    from fedrs.datasets.manifest import FedDataset

    if retain_freed:
        retain_freed_memory()
    torch.set_num_threads(1)
    cfg = from_dict(cfg_dict)
    data = FedDataset(data_path)
    _, method, params, strategy = build_local(cfg, data)
    shard_of = shard_source(cfg, data, method)
    warm = next((c for _, cs in plan for c in cs), 0)  # first-call costs, as round 1 pays them
    method.fit(
        params,
        method.init_private(warm, cfg.federation.seed),
        shard_of(warm % data.num_clients),
        fit_options(cfg, 0, warm, strategy),
    )
    times = []
    for rnd, clients in plan:
        barrier.wait()
        t = time.perf_counter()
        for cid in clients:
            ex = client_exchange(cfg, data, strategy, params, rnd, cid)
            method.fit(
                {k: params[k] for k in ex.down},
                method.init_private(cid, cfg.federation.seed),
                shard_of(cid % data.num_clients),
                fit_options(cfg, rnd, cid, strategy, ex),
            )
        times.append(time.perf_counter() - t)
    queue.put((rank, times, time.process_time()))


def run_ceiling(
    cfg: Any, data_path: str, rounds: list[int], workers: int, retain_freed: bool = False
) -> dict[str, Any]:
    """The steady-state rounds' clients split statically over ``workers`` plain processes (one
    torch thread each, started together at a barrier every round): what this machine gives for
    ``workers`` concurrent trainers with no orchestration at all. ``retain_freed``: the
    processes tune their allocator as fedrs's actors do (``actors/allocator.py``)."""
    import multiprocessing as mp

    from fedrs.core.sampling import sample_clients
    from fedrs.datasets.manifest import FedDataset

    fed = cfg.federation
    registered = fed.num_clients or FedDataset(data_path, verify=False).num_clients
    sampled = {r: sample_clients(registered, fed.clients_per_round, fed.seed, r) for r in rounds}
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(workers), ctx.Queue()
    procs = [
        ctx.Process(
            target=_ceiling_worker,
            args=(
                cfg.to_dict(),
                data_path,
                [(r, sampled[r][k::workers]) for r in rounds],
                barrier,
                queue,
                k,
                retain_freed,
            ),
        )
        for k in range(workers)
    ]
    t0, busy0, own0 = time.perf_counter(), machine_cpu().get("busy", 0.0), time.process_time()
    for proc in procs:
        proc.start()
    replies = [queue.get(timeout=3600) for _ in procs]
    for proc in procs:
        proc.join()
    wall = time.perf_counter() - t0
    ours = sum(r[2] for r in replies) + time.process_time() - own0
    got = {r[0]: r[1] for r in replies}
    per_round = [max(got[k][i] for k in got) for i in range(len(rounds))]
    return {
        "rounds": rounds,
        "round_s": per_round,
        "per_process_s": [got[k] for k in sorted(got)],
        # cores other users' processes took during the whole phase (start-up included)
        "other_cores": max(0.0, machine_cpu().get("busy", 0.0) - busy0 - ours) / wall,
    }
