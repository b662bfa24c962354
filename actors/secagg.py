"""Secure aggregation between deployed sites (``secagg.enabled``), on Flower's SecAgg+.

A round under secure aggregation, after the sites have trained::

    site:   each client's reply checked with the server's own rule (``exchange.accept``), and
            ``|update - global| <= secagg.clip``; a failing client is rejected (counted)
            the accepted clients sealed into one contribution: the example-weighted mean of
            their ``update - global`` (float64), with weight W = their examples; the server
            is told per client only its example count and training metrics
    server: Flower's ``SecAggPlusWorkflow`` with the sites that sealed something (two or more):
            setup, share keys, collect masked vectors (each site quantizes its contribution
            and masks it), unmask; it learns sum_s W_s v_s / sum_s W_s and nothing per site
    driver: global + that mean is the round's mean, handed to the strategy as central DP's
            is (``aggregate.combine``); the method's server step sees no individual update

A site that leaves after sealing is recovered by the protocol when enough of its neighbours
remain (``secagg.threshold``), and its clients count as dropped; fewer than two sealing sites
(nothing to hide among) or a halted protocol drop the round's clients, and the quorum rule
fails the round as for any dropout.

Exactness: every value a site sends is stochastically rounded to a step of
``2 clip / quantization`` (seeded from the run's seed, round and site, so a run is
reproducible), and the weights to steps of ``1 / quantization`` of the largest site's; so the
secure mean differs from the plain one by at most ``sites * (2 + W_max / W_min) * clip /
quantization`` per value (``tolerance``), then the cast to the tensors' dtype.

Trust: the server cannot check what a site sends; an honest site runs the same check the
server runs in the simulation, and a dishonest one moves each value of the mean by at most
``clip * W_s / sum W``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
STAGES = "secaggplus_configs"  # the config record Flower's SecAgg+ messages carry
_SEALED: dict[tuple[str, str], dict[str, Any]] = {}  # (site state, run) -> its last seal


# ---------------------------------------------------------------------------- the site side
def seal(
    method_cls: Any,
    cfg: Any,
    where: str,
    run_key: str,
    rnd: int,
    tasks: list[Any],
    sent: list[dict[str, np.ndarray]],
    replies: list[dict[str, Any]],
    keys: list[str],
) -> list[dict[str, Any]]:
    """The replies a site sends under secure aggregation for its clients that trained: per
    client ``{"sealed": True,
    "num_examples", "metrics"}`` or ``{"rejected": why}``, tensors kept back; the accepted
    clients' weighted mean ``update - global`` kept for ``sealed`` (under ``where``, the
    site's state directory). ``sent[i]``: the tensors task i's client received; ``keys``:
    the tensors every client must send."""
    from fedrs.core.validation import accept, spec_of

    clip = cfg.secagg.clip
    total = {k: np.zeros(sent[0][k].shape, np.float64) for k in keys} if sent else {}
    weight = 0
    out: list[dict[str, Any]] = []
    for task, down, reply in zip(tasks, sent, replies, strict=True):
        why = None
        if set(task.options.upload_keys) != set(keys):
            why = f"secure aggregation needs every client to send {keys}"
        elif reply.get("extras"):
            why = "extra payloads cannot be aggregated securely"
        update = None
        if why is None:
            spec = spec_of(down, tuple(keys))
            update, why = accept(method_cls, cfg, task.client_id, reply, down, spec, None)
        if update is not None:
            delta = {k: np.asarray(update.params[k], np.float64) - down[k] for k in keys}
            worst = max((float(np.abs(d).max()) for d in delta.values() if d.size), default=0)
            if worst > clip:
                why = f"an update moves a value by {worst:.3g} > secagg.clip={clip:g}"
            else:
                n = update.num_examples
                for k in keys:
                    total[k] += n * delta[k]
                weight += n
        if why is not None:
            out.append({"rejected": why, "metrics": reply.get("metrics", {})})
            continue
        kept = {k: v for k, v in reply.items() if k not in ("params", "extras")}
        out.append({**kept, "sealed": True})
    _SEALED[(where, run_key)] = {
        "round": rnd,
        "keys": list(keys),
        "weight": weight,
        "mean": [total[k] / weight for k in keys] if weight else [],
    }
    return out


def sealed(where: str, run_key: str, rnd: int, keys: list[str]) -> dict[str, Any]:
    """The contribution ``seal`` kept for round ``rnd`` (a ``ValueError`` when there is none:
    the worker restarted, or the server asks for another round or other tensors)."""
    got = _SEALED.get((where, run_key))
    if got is None or got["round"] != rnd or not got["weight"]:
        raise ValueError(f"this site sealed nothing for round {rnd}")
    if got["keys"] != list(keys):
        raise ValueError(f"the server asks for {keys}; this site sealed {got['keys']}")
    return {"weight": got["weight"], "mean": got["mean"]}


def stage_seed(seed: int, rnd: int, node_id: int) -> int:
    """The seed of a site's stochastic rounding in a round (reproducible, distinct per site)."""
    text = f"secagg:{seed}:{rnd}:{node_id}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little")


def client_stage(
    msg: Any,
    context: Any,
    fetch: Callable[[dict[str, Any]], tuple[list[np.ndarray], int]],
    site: int,
) -> Any:
    """Answer one SecAgg+ message on a site (Flower's ``secaggplus_mod``, which keeps its
    keys in ``context.state``); when asked for the masked vector, ``fetch(config)`` gives the
    site's sealed mean and weight for the config the server sent (run, round, tensors);
    ``site``: the site's number (its rounding seed)."""
    from flwr.app import Message
    from flwr.client.mod import secaggplus_mod
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    def trained(m: Any, ctx: Any) -> Any:
        config = dict(compat.recorddict_to_fitins(m.content, keep_input=True).config)
        arrays, weight = fetch(config)
        # Flower rounds stochastically with numpy's global RNG, right after this returns
        seed = stage_seed(int(config["fedrs.seed"]), int(config["fedrs.round"]), site)
        np.random.seed(seed)
        res = FitRes(Status(Code.OK, "sealed"), ndarrays_to_parameters(arrays), weight, {})
        return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=m)

    state = np.random.get_state()
    try:
        return secaggplus_mod(msg, context, trained)
    finally:
        np.random.set_state(state)


# ---------------------------------------------------------------------------- the server side
class _Proxy:
    """What Flower's workflow needs of a client proxy: its node id."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id


def _adapter(config: dict[str, Any], nodes: list[int], out: dict[str, Any]) -> Any:
    """A legacy Flower strategy that asks exactly ``nodes`` for their sealed contributions
    (``config``: run, round, tensors) and keeps what the protocol hands ``aggregate_fit``."""
    from flwr.common import FitIns, Parameters
    from flwr.server.strategy import Strategy as FlowerStrategy

    class Sealed(FlowerStrategy):
        def initialize_parameters(self, client_manager: Any) -> None:
            return None

        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            ins = FitIns(Parameters([], "numpy.ndarray"), dict(config))
            return [(_Proxy(n), ins) for n in nodes]

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            out["nodes"] = {proxy.node_id for proxy, _ in results}
            out["mean"] = results[0][1].parameters if results else None
            out["failures"] = [str(f) for f in failures]
            return None, {}

        def configure_evaluate(self, *a: Any) -> list:
            return []

        def aggregate_evaluate(self, *a: Any) -> Any:
            return None, {}

        def evaluate(self, *a: Any) -> None:
            return None

    return Sealed()


class CountingGrid:
    """The SecAgg+ workflow's view of the grid: messages pass through, their bytes counted in
    ``wire`` (both ways), and ``send_and_receive`` waits at most ``timeout``."""

    def __init__(self, grid: Any, wire: dict[str, int], poll_s: float = 0.2) -> None:
        self.grid, self.wire, self.poll_s = grid, wire, poll_s

    def get_node_ids(self) -> list[int]:
        return list(self.grid.get_node_ids())

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        msgs = list(messages)
        self.wire["sent"] += sum(record_bytes(m.content) for m in msgs)
        waiting = set(self.grid.push_messages(msgs))
        replies: list[Any] = []
        end = time.monotonic() + (timeout if timeout is not None else 600.0)
        while waiting and time.monotonic() < end:
            for reply in self.grid.pull_messages(list(waiting)):
                waiting.discard(reply.metadata.reply_to_message_id)
                if not reply.has_error():
                    self.wire["received"] += record_bytes(reply.content)
                replies.append(reply)
            if waiting:
                time.sleep(self.poll_s)
        return replies


def record_bytes(content: Any) -> int:
    """Bytes of a ``RecordDict``'s payload: array data, text and bytes in config records (8
    per number)."""
    n = 0
    for rec in content.array_records.values():
        n += sum(len(rec[k].data) for k in rec)
    for rec in content.config_records.values():
        for v in rec.values():
            for item in v if isinstance(v, list) else [v]:
                n += len(item) if isinstance(item, bytes | str) else 8
    return n


def secure_mean(
    grid: Any,
    weights: dict[int, int],
    config: dict[str, Any],
    opts: Any,
    timeout_s: float,
    wire: dict[str, int],
) -> tuple[list[np.ndarray] | None, set[int], str]:
    """Run SecAgg+ with the sites ``weights`` names (node id -> its sealed examples) and
    return the example-weighted mean of their contributions (float64 arrays, None when the
    protocol could not finish), the nodes whose contributions it holds, and why the others
    are missing. ``config`` reaches each site's ``fetch``; ``opts``: ``secagg.*``."""
    from flwr.app import ConfigRecord, Context, RecordDict
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server import ServerConfig
    from flwr.server.compat import LegacyContext
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

    nodes = sorted(weights)
    if len(nodes) < 2:
        why = f"secure aggregation needs 2 or more sites with an update; {len(nodes)} had"
        return None, set(), why
    out: dict[str, Any] = {}
    base = Context(0, 0, {}, RecordDict(), {})
    ctx = LegacyContext(base, ServerConfig(num_rounds=1), _adapter(config, nodes, out))
    ctx.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {Key.CURRENT_ROUND: int(config["fedrs.round"])}
    )
    ctx.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters([]), keep_input=True
    )
    workflow = SecAggPlusWorkflow(
        num_shares=float(opts.shares),
        reconstruction_threshold=float(opts.threshold),
        max_weight=float(max(weights.values())),
        clipping_range=float(opts.clip),
        quantization_range=int(opts.quantization),
        timeout=timeout_s,
    )
    workflow(CountingGrid(grid, wire), ctx)
    if out.get("mean") is None:
        why = "; ".join(out.get("failures", [])) or "too few sites answered"
        return None, set(), f"secure aggregation halted: {why}"
    return parameters_to_ndarrays(out["mean"]), out["nodes"], "left during secure aggregation"


def tolerance(opts: Any, weights: list[int]) -> float:
    """The most a value of the secure mean can differ from the plain weighted mean (module
    docstring), before the cast to the tensors' dtype."""
    return len(weights) * (2 + max(weights) / min(weights)) * opts.clip / opts.quantization
