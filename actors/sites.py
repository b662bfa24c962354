"""Client sites on Flower's deployment runtime: the client-pool interface of ``ClientPool`` over
a Flower ``Grid``, and the site side that answers it with the same ``ClientWorker`` the Ray
actors run.

A site is one SuperNode: an organisation's machine holding its own ``fedrs data build`` (its
path given only in the SuperNode's ``--node-config``; the server never sees it) and the private
state of the clients it serves. The driver calls ``SitePool.map("fit", ...)`` exactly as it
calls ``ClientPool.map``; each task becomes one Flower ``Message`` to the site serving the
task's client, carrying the global tensors (``ArrayRecord``) and the task (``ConfigRecord``);
the reply carries the client's update the same way. Nothing is pickled across the boundary:
``pack`` / ``unpack`` write JSON plus named arrays, and rebuild only the task classes listed
in ``_CLASSES``, so a site cannot make the server run code by what it sends, and a reply whose
tensors are malformed is rejected by the driver's own checks as in the simulation. Under
``secagg.enabled`` a site checks its clients' replies itself with the same rule and sends
only its verdicts; its tensors reach the server summed with the other sites' by SecAgg+
(``actors/secagg.py``, ``SitePool.sum_sealed``).

Node config keys a site sets (``flower-supernode --node-config``)::

    data-path = "/data/build"     # the site's own data build (required)
    site = 0                      # its place in the federation's client numbering
    clients = "0,1"               # partitions of its build it serves (default: all)
    test-split = true             # it also evaluates the global model on its build's test split
    state-dir = "/var/fedrs"      # where its clients' private state lives (default: beside data)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrs.actors import secagg
from fedrs.actors.client import Download, EvalTask, FitTask
from fedrs.actors.site_worker import state_dir_of
from fedrs.core.config import from_dict
from fedrs.errors import FedrsError, RunStopped
from fedrs.io import contiguous
from fedrs.methods.base import FitOptions

log = logging.getLogger(__name__)

# what the client side may be asked to do, by Flower message type
CALLS = {"describe": "query", "init_global": "query", "fit": "train", "share": "train"}
CALLS |= {"evaluate": "evaluate", "predict": "evaluate", "discard": "evaluate"}
_CLASSES = {c.__name__: c for c in (FitTask, EvalTask, FitOptions)}
POLL_S = 0.2  # how often the server asks the SuperLink for replies
FAILED = "__failed__"  # a task of a site's batch that raised, with why
# keys of a data record that name files on the site's disk: never sent to the server
_LOCAL_KEYS = ("shard", "sha256", "bytes", "sources", "skipped", "path")


class SiteError(FedrsError):
    """A site is missing, misconfigured, or disagrees with the others."""


# ---------------------------------------------------------------------------- the codec
def pack(obj: Any) -> Any:
    """``obj`` as a Flower ``RecordDict``: every ndarray in an ``ArrayRecord`` (dtype and shape
    kept), the rest as one JSON text; tuples, non-string dict keys, numpy scalars and the task
    dataclasses survive ``unpack`` exactly."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

    arrays: dict[str, Array] = {}

    def enc(x: Any) -> Any:
        if isinstance(x, np.ndarray):
            key = str(len(arrays))
            arrays[key] = Array(contiguous(x))
            return {"__nd__": key}
        if isinstance(x, np.generic):
            return {"__np__": x.dtype.str, "v": x.item()}
        if dataclasses.is_dataclass(x) and type(x).__name__ in _CLASSES:
            fields = {f.name: enc(getattr(x, f.name)) for f in dataclasses.fields(x)}
            return {"__dc__": type(x).__name__, "f": fields}
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x) and not any(k.startswith("__") for k in x):
                return {k: enc(v) for k, v in x.items()}
            return {"__map__": [[enc(k), enc(v)] for k, v in x.items()]}
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v) for v in x]}
        if isinstance(x, list):
            return [enc(v) for v in x]
        if x is None or isinstance(x, bool | int | float | str):
            return x
        raise TypeError(f"cannot send a {type(x).__name__} to or from a site")

    text = json.dumps(enc(obj))
    return RecordDict({"arrays": ArrayRecord(arrays), "body": ConfigRecord({"json": text})})


def unpack(content: Any) -> Any:
    """The object ``pack`` wrote (a ``ValueError`` for anything else)."""
    try:
        text = content["body"]["json"]
        arrays = content["arrays"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a fedrs message: missing {exc}") from None

    def dec(x: Any) -> Any:
        if isinstance(x, list):
            return [dec(v) for v in x]
        if not isinstance(x, dict):
            return x
        if "__nd__" in x:
            return arrays[x["__nd__"]].numpy()
        if "__np__" in x:
            return np.dtype(x["__np__"]).type(x["v"])
        if "__dc__" in x:
            cls = _CLASSES.get(x["__dc__"])
            if cls is None:
                raise ValueError(f"unknown class {x['__dc__']!r} in a fedrs message")
            return cls(**{k: dec(v) for k, v in x["f"].items()})
        if "__map__" in x:
            return {dec(k): dec(v) for k, v in x["__map__"]}
        if "__tuple__" in x:
            return tuple(dec(v) for v in x["__tuple__"])
        return {k: dec(v) for k, v in x.items()}

    return dec(json.loads(text))


# ---------------------------------------------------------------------------- the server side
@dataclass(frozen=True)
class Site:
    """One SuperNode as the server knows it: its node id, place, and what it serves."""

    node_id: int
    site: int
    partitions: tuple[int, ...]  # of its own build, in the federation's order
    first_client: int  # the federation's id of its first partition
    test_split: bool
    describe: dict[str, Any]


def flower_message(content: Any, node_id: int, message_type: str, ttl: float) -> Any:
    """A Flower ``Message`` to ``node_id`` (inside a Flower run: it carries the run's id) that
    expires after ``ttl`` seconds: a site that comes back later does not run stale work."""
    from flwr.app import Message

    return Message(content, dst_node_id=node_id, message_type=message_type, ttl=ttl)


def _flat(params: Any) -> Any:
    """A ``Download`` as one dict of tensors (its moving and resting parts)."""
    if isinstance(params, Download):
        return {**(params.resting or {}), **params.moving}
    return params


def _task_client(task: Any) -> int:
    return task.client_id if isinstance(task, FitTask | EvalTask) else -1


class SitePool:
    """The client pool of a deployment: ``map`` sends each task to the site serving its client
    (a global-split evaluation to a site that holds the test split) and collects the replies;
    a site that does not answer within the round's timeout, or answers with an error, is a
    failure of that task, with its reason, as an actor failure is on Ray."""

    steals = 0  # no work stealing between sites: a client's data is on one site only

    def __init__(
        self,
        grid: Any,
        sites: list[Site],
        cfg: dict[str, Any],
        run_key: str,
        message: Callable[[Any, int, str, float], Any] = flower_message,
    ) -> None:
        self.grid, self.sites, self.cfg, self.run_key = grid, sites, cfg, run_key
        self.message = message
        self.ttl = float(cfg.get("federation", {}).get("round_timeout_s", 600.0))
        self.sites = list(sites)
        self._index()
        self.wire = {"sent": 0, "received": 0}  # bytes of message content, both ways
        # secure aggregation: sites keep their clients' tensors back (``actors/secagg.py``)
        self.sealing = bool(cfg.get("secagg", {}).get("enabled", False))

    @staticmethod
    def put(obj: Any) -> Any:
        """No object store between sites: what is sent is the object itself."""
        return obj

    def __len__(self) -> int:
        return len(self.evaluators)  # the global test split is chunked over these

    def describe(self) -> list[dict[str, Any]]:
        return [{"site": s.site, "node_id": s.node_id, **s.describe} for s in self.sites]

    def shutdown(self) -> None:
        """Sites are the organisations' own processes: nothing to stop here."""

    def _route(self, i: int, task: Any) -> tuple[Site, int]:
        cid = _task_client(task)
        if cid >= 0:
            return self.by_client[cid]
        return self.evaluators[i % len(self.evaluators)], -1

    def map(
        self,
        method: str,
        shared: Any,
        tasks: list[Any],
        timeout_s: float,
        costs: list[float] | None = None,
        depth: int = 2,
        affinity: list[Any] | None = None,
        stop: threading.Event | None = None,
    ) -> tuple[dict[int, Any], dict[int, str]]:
        """``ClientPool.map`` over the sites (``costs``, ``depth`` and ``affinity`` do not
        apply: each task has exactly one site that can run it). Each site gets one message
        with all its tasks (Flower starts a process per message: the site's backbone loads
        once per call, not once per client), each distinct tensor set in it once."""
        from fedrs.actors.dispatch import PerTask

        per = list(shared) if isinstance(shared, PerTask) else [shared] * len(tasks)
        batches: dict[int, list[int]] = {}  # site number -> indices into tasks
        routes = [self._route(i, t) for i, t in enumerate(tasks)]
        for i, (site, _) in enumerate(routes):
            batches.setdefault(site.site, []).append(i)
        msgs, sites = [], []
        for members in batches.values():
            distinct: dict[int, int] = {}  # id of a tensor set -> its place in the message
            for i in members:
                distinct.setdefault(id(per[i]), len(distinct))
            params = {id(per[i]): per[i] for i in members}
            body = {
                "call": method,
                "config": self.cfg,
                "run": self.run_key,
                "params": [_flat(params[k]) for k in distinct],
                "tasks": [tasks[i] for i in members],
                "uses": [distinct[id(per[i])] for i in members],
                "partitions": [routes[i][1] for i in members],
                "seal": method == "fit" and self.sealing,
            }
            site = routes[members[0]][0]
            msgs.append(self.message(pack(body), site.node_id, CALLS[method], self.ttl))
            sites.append(site)
        replies, lost = self._exchange(msgs, sites, timeout_s, stop)
        results: dict[int, Any] = {}
        failures: dict[int, str] = {}
        for b, members in enumerate(batches.values()):
            if b in lost:
                failures |= {i: lost[b] for i in members}
                continue
            answers = replies[b].get("results") if isinstance(replies[b], dict) else None
            if not isinstance(answers, list) or len(answers) != len(members):
                failures |= {i: f"site {sites[b].site} sent a malformed reply" for i in members}
                continue
            for i, answer in zip(members, answers, strict=True):
                if isinstance(answer, dict) and FAILED in answer:
                    failures[i] = f"site {sites[b].site}: {answer[FAILED]}"
                else:
                    results[i] = answer
        return results, failures

    def _exchange(
        self, msgs: list[Any], sites: list[Site], timeout_s: float, stop: threading.Event | None
    ) -> tuple[dict[int, Any], dict[int, str]]:
        self._rejoin(sites)
        for m, site in zip(msgs, sites, strict=True):
            m.metadata.dst_node_id = site.node_id  # where the site is now
        self.wire["sent"] += sum(secagg.record_bytes(m.content) for m in msgs)
        ids = list(self.grid.push_messages(msgs))
        if len(ids) != len(msgs):
            raise SiteError(f"the SuperLink accepted {len(ids)} of {len(msgs)} messages")
        index = {mid: i for i, mid in enumerate(ids)}
        results: dict[int, Any] = {}
        failures: dict[int, str] = {}
        deadline = time.monotonic() + timeout_s
        waiting = set(ids)
        while waiting and time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                raise RunStopped("stopped while sites were training")
            for reply in self.grid.pull_messages(list(waiting)):
                mid = reply.metadata.reply_to_message_id
                if mid not in waiting:
                    continue
                waiting.discard(mid)
                i = index[mid]
                if reply.has_error():
                    failures[i] = f"site {sites[i].site}: {reply.error.reason}"
                    continue
                try:
                    self.wire["received"] += secagg.record_bytes(reply.content)
                    results[i] = unpack(reply.content)
                except (ValueError, KeyError, TypeError) as exc:
                    failures[i] = f"site {sites[i].site} sent a malformed reply: {exc}"
            if waiting:
                time.sleep(POLL_S)
        for mid in waiting:
            i = index[mid]
            failures[i] = f"site {sites[i].site} did not answer within {timeout_s:.0f} s"
        return results, failures

    def _rejoin(self, sites: list[Site]) -> None:
        """A site whose SuperNode restarted under a new node id (no registered key keeps its
        id) is found again by its site number; with registered keys the id stays."""
        online = set(self.grid.get_node_ids())
        gone = [s for s in self.sites if s.node_id not in online]
        if not gone:
            return
        known = {s.node_id for s in self.sites}
        new = sorted(online - known)
        if not new:
            return
        body = {"call": "describe", "config": self.cfg, "run": self.run_key}
        msgs = [self.message(pack(body), n, "query", self.ttl) for n in new]
        stand_in = [Site(n, -1, (), 0, False, {}) for n in new]
        ids = list(self.grid.push_messages(msgs))
        replies = _wait(self.grid, ids, 30.0)
        by_site = {}
        for mid, n in zip(ids, new, strict=True):
            reply = replies.get(mid)
            if reply is not None and not reply.has_error():
                by_site[int(unpack(reply.content)["site"])] = n
        for i, s in enumerate(self.sites):
            if s in gone and s.site in by_site:
                self.sites[i] = dataclasses.replace(s, node_id=by_site[s.site])
                log.info("site %d rejoined as node %d", s.site, by_site[s.site])
        del stand_in
        self._index()
        for j, site in enumerate(sites):  # the caller's list: its sites where they are now
            sites[j] = next((s for s in self.sites if s.site == site.site), site)

    def _index(self) -> None:
        self.by_client = {
            s.first_client + i: (s, p) for s in self.sites for i, p in enumerate(s.partitions)
        }
        self.evaluators = [s for s in self.sites if s.test_split] or self.sites[:1]

    def discard(self, client_ids: list[int], rnd: int) -> None:
        """The private state these clients' sites saved in round ``rnd`` does not count (they
        dropped out or were rejected): each site is told to drop it."""
        by_site: dict[int, list[int]] = {}
        for cid in client_ids:
            if cid in self.by_client:
                by_site.setdefault(self.by_client[cid][0].site, []).append(cid)
        msgs = []
        for number, cids in by_site.items():
            site = next(s for s in self.sites if s.site == number)
            body = {"call": "discard", "config": self.cfg, "run": self.run_key}
            body["tasks"] = [EvalTask("discard", rnd, client_id=c) for c in cids]
            msgs.append(self.message(pack(body), site.node_id, "evaluate", self.ttl))
        if msgs:  # no wait: a site that is down has nothing to drop, its message expires
            self.wire["sent"] += sum(secagg.record_bytes(m.content) for m in msgs)
            self.grid.push_messages(msgs)

    def sum_sealed(
        self, rnd: int, examples: dict[int, int], keys: list[str], timeout_s: float
    ) -> tuple[dict[str, np.ndarray] | None, dict[int, str]]:
        """The example-weighted mean of what the sites sealed for ``rnd`` (``update - global``
        by tensor, float64), by secure aggregation; ``examples``: the sealed clients' example
        counts. Also, by client, why a client's contribution is not in it."""
        from fedrs.actors.secagg import secure_mean
        from fedrs.core.config import SecAggConfig

        by_node: dict[int, list[int]] = {}
        for cid in examples:
            by_node.setdefault(self.by_client[cid][0].node_id, []).append(cid)
        weights = {n: sum(examples[c] for c in cids) for n, cids in by_node.items()}
        fed = self.cfg.get("federation", {})
        config = {"fedrs.run": self.run_key, "fedrs.round": rnd, "fedrs.keys": ",".join(keys)}
        config["fedrs.seed"] = int(fed.get("seed", 0))
        opts = SecAggConfig(**self.cfg.get("secagg", {}))
        mean, nodes, why = secure_mean(self.grid, weights, config, opts, timeout_s, self.wire)
        site = {s.node_id: s.site for s in self.sites}
        missing = [(n, cids) for n, cids in by_node.items() if n not in nodes]
        lost = {c: f"site {site[n]}: {why}" for n, cids in missing for c in cids}
        return (None if mean is None else dict(zip(keys, mean, strict=True))), lost

    def call_one(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """``method(*args)`` on the first evaluating site (e.g. ``init_global``)."""
        site = self.evaluators[0]
        body = {"call": method, "config": self.cfg, "run": self.run_key, "args": list(args)}
        msg = self.message(pack(body), site.node_id, CALLS[method], self.ttl)
        results, failures = self._exchange([msg], [site], timeout or 600.0, None)
        if failures:
            raise SiteError(f"{method} failed: {failures[0]}")
        return results[0]


def _wait(grid: Any, ids: list[str], timeout_s: float) -> dict[str, Any]:
    """The replies to ``ids`` that arrive within ``timeout_s``, by message id."""
    out: dict[str, Any] = {}
    end = time.monotonic() + timeout_s
    while len(out) < len(ids) and time.monotonic() < end:
        for reply in grid.pull_messages([i for i in ids if i not in out]):
            out[reply.metadata.reply_to_message_id] = reply
        if len(out) < len(ids):
            time.sleep(POLL_S)
    return out


def gather_sites(
    grid: Any,
    expected: int,
    wait_s: float,
    cfg: dict[str, Any],
    run_key: str,
    message: Callable[[Any, int, str, float], Any] = flower_message,
) -> SitePool:
    """Wait for ``expected`` SuperNodes, ask each what it serves, number their clients in the
    order of their ``site`` (then partition), and check they agree on the classes."""
    deadline = time.monotonic() + wait_s
    nodes: list[int] = []
    while time.monotonic() < deadline:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= expected:
            break
        time.sleep(1.0)
    if len(nodes) < expected:
        raise SiteError(f"{len(nodes)} of {expected} sites connected within {wait_s:.0f} s")
    body = {"call": "describe", "config": cfg, "run": run_key}
    msgs = [message(pack(body), n, "query", wait_s) for n in nodes]
    probe = SitePool(grid, [], cfg, run_key, message)
    stand_in = [Site(n, n, (), 0, False, {}) for n in nodes]
    results, failures = probe._exchange(msgs, stand_in, wait_s, None)
    if failures:
        raise SiteError("a site could not describe itself: " + next(iter(failures.values())))
    described = sorted(
        ((results[i], n) for i, n in enumerate(nodes)), key=lambda r: (r[0]["site"], r[1])
    )
    seen = [d["site"] for d, _ in described]
    if len(set(seen)) != len(seen):
        raise SiteError(f"two SuperNodes give the same site number: {seen}")
    sites, first = [], 0
    for d, node in described:
        parts = tuple(int(c["partition"]) for c in d["clients"])
        sites.append(Site(node, int(d["site"]), parts, first, bool(d["test"]), d))
        first += len(parts)
    classes = {json.dumps(d["classes"]) for d, _ in described}
    if len(classes) != 1:
        raise SiteError("the sites' data builds name different classes; build them alike")
    versions = {d["fedrs"] for d, _ in described}
    if len(versions) != 1:
        raise SiteError(f"the sites run different fedrs versions: {sorted(versions)}")
    return SitePool(grid, sites, cfg, run_key, message)


def federation_manifest(pool: SitePool) -> dict[str, Any]:
    """The federation's manifest as the server may know it: each site's client records (counts
    and class histograms, never a path) in the federation's order, and the test split's
    record from the first evaluating site (none: an empty split)."""
    first = pool.sites[0].describe
    clients = []
    for s in pool.sites:
        for i, rec in enumerate(s.describe["clients"]):
            clients.append({**rec, "id": s.first_client + i, "site": s.site})
    ev = pool.evaluators[0].describe
    test = ev["test"] or {"num_examples": 0, "class_counts": []}
    manifest = {**first["meta"], "classes": first["classes"], "clients": clients}
    manifest["test"] = _placeholder(test, "test")
    for c in manifest["clients"]:
        c |= _placeholder(c, f"client {c['id']}")
        c["local_test"] = _placeholder(c["local_test"], f"client {c['id']} local test")
    return manifest


def _placeholder(rec: dict[str, Any], name: str) -> dict[str, Any]:
    """A shard record without its file: the server opens no shard."""
    return {**rec, "shard": f"<at the site: {name}>", "bytes": 0, "sha256": ""}


# ---------------------------------------------------------------------------- the site side
def _strip(rec: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in rec.items() if k not in _LOCAL_KEYS}
    if isinstance(out.get("local_test"), dict):
        out["local_test"] = _strip(out["local_test"])
    return out


class SiteConfig:
    """What a SuperNode's ``--node-config`` says about this site (``SiteError`` if unusable)."""

    def __init__(self, node_config: dict[str, Any]) -> None:
        from fedrs.datasets.manifest import FedDataset

        path = node_config.get("data-path")
        if not path:
            raise SiteError("the SuperNode needs --node-config 'data-path=\"/its/data/build\"'")
        self.data_path = str(Path(str(path)).resolve())
        self.data = FedDataset(self.data_path, verify=False)
        self.site = int(node_config.get("site", 0))
        given = str(node_config.get("clients", "")).strip()
        n = self.data.num_clients
        self.partitions = [int(c) for c in given.split(",")] if given else list(range(n))
        bad = [p for p in self.partitions if not 0 <= p < n]
        if bad:
            raise SiteError(f"clients {bad} are not partitions of {path} (it has {n})")
        self.test_split = bool(node_config.get("test-split", False))
        self.state_dir = state_dir_of(node_config)

    def describe(self) -> dict[str, Any]:
        from fedrs import __version__

        m = self.data.manifest
        clients = [{**_strip(m["clients"][p]), "partition": p, "id": p} for p in self.partitions]
        meta = {
            k: v
            for k, v in m.items()
            if k not in ("clients", "test", "classes", *_LOCAL_KEYS, "scene", "partners")
        }
        return {
            "fedrs": __version__,
            "site": self.site,
            "classes": list(self.data.classes),
            "clients": clients,
            "test": _strip(m["test"]) if self.test_split else None,
            "meta": meta,
        }


_WORKERS: dict[tuple[str, str, str], Any] = {}  # one per (config, data, state) and process


def serve(node_config: dict[str, Any], body: dict[str, Any]) -> Any:
    """Answer one message on a site: the ``ClientWorker`` call it names, on this site's data
    and private state (a worker built once per process, with the backbone resident)."""
    from fedrs.actors.client import ClientWorker
    from fedrs.methods import method_class

    site = SiteConfig(node_config)
    call = body.get("call")
    if call == "describe":
        return site.describe()
    if call not in (*CALLS, "sealed"):
        raise SiteError(f"unknown call {call!r}")
    run_key = str(body["run"])
    if not run_key.isalnum():
        raise SiteError(f"bad run key {run_key!r}")
    state = str(site.state_dir / run_key)
    if call == "sealed":  # asked by this site's SecAgg+ stage for what the fit sealed
        return secagg.sealed(state, run_key, int(body["round"]), list(body["keys"]))
    cfg = body["config"]
    if call == "discard":  # dropped or rejected clients' state of that round
        from fedrs.core.state_store import FileStateStore

        store = FileStateStore(state)
        for task in body["tasks"]:
            store.discard(task.client_id, task.round)
        return {}
    key = (json.dumps(cfg, sort_keys=True), site.data_path, state)
    worker = _WORKERS.get(key)
    if worker is None:
        method_cls = method_class(from_dict(cfg).method.name)
        _WORKERS.clear()  # one run's worker at a time
        worker = _WORKERS[key] = ClientWorker(cfg, method_cls, site.data_path, state)
    if call == "init_global":
        return worker.init_global(*body["args"])
    results = []
    for task, use, local in zip(body["tasks"], body["uses"], body["partitions"], strict=True):
        try:
            cid = _task_client(task)
            if cid >= 0:
                if local not in site.partitions:
                    raise SiteError(f"this site does not serve partition {local}")
                worker.partitions[cid] = local
            results.append(getattr(worker, call)(body["params"][use], task))
        except Exception as exc:  # this client fails; the site's other clients go on
            log.warning("client task failed: %s", exc, exc_info=True)
            why = str(exc) if isinstance(exc, SiteError) else f"{type(exc).__name__}: {exc}"
            results.append({FAILED: why})
    if body.get("seal"):  # secure aggregation: tensors stay here, sealed for the secure sum
        ok = [i for i, r in enumerate(results) if FAILED not in r]
        tasks = [body["tasks"][i] for i in ok]
        sent = [_flat(body["params"][body["uses"][i]]) for i in ok]
        keys = sorted(tasks[0].options.upload_keys) if tasks else []
        rnd = body["tasks"][0].options.round
        sealed = secagg.seal(
            type(worker.method),
            from_dict(cfg),
            state,
            run_key,
            rnd,
            tasks,
            sent,
            [results[i] for i in ok],
            keys,
        )
        for i, reply in zip(ok, sealed, strict=True):
            results[i] = reply
    return {"results": results}
