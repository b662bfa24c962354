"""vs-flower: fedrs against Flower's simulation engine, same client work, same resources.

    fedrs bench vs-flower --json vs_flower.json [--rounds 4] [--set clients=10 --set arch=...]

Both sides run the *same client code* (``fedrs.methods``: ``Method.fit`` on the same Arrow
partitions, same ``FitOptions``) on the same number of Ray workers with 1 CPU each and, where
CUDA is there, the same GPU share each (``gpus_per_client``: 1/workers of GPU 0 by default):

* **fedrs**: ``fedrs.orchestrator.runner.run``: actors built once with the frozen backbone
  resident, the frozen-feature cache on (it applies to PromptFL; FedRSCLIP's visual prompts
  change the image features, so it is compute-bound and uncached), private state in the
  client-state store. The cache starts cold: round 1 pays for embedding every shard.
* **flower**: a ``ClientApp`` / ``ServerApp`` under ``flwr.simulation.run_simulation`` (Ray
  backend, ``client_resources={"num_cpus": 1}``), written as Flower's guides write a client:
  every message loads the node's partition and builds the model (``flower``); FedRSCLIP's
  private prompts live in ``context.state``; Flower's ``FedAvg`` aggregates. A second Flower
  variant keeps the backbone in a module-level cache of each Ray worker across messages
  (``flower-warm``: the best a careful Flower user can do without a feature cache).

Each side runs in its own fresh process, whose Ray is started with the same arguments (Flower's
backend finds it up). Round times: Flower's from one aggregated result to the next; fedrs's from
one round's console line to the next, round 1 from the line printed once its actors are up.
Client updates per second, fedrs over ``flower``, on four bases (``BASIS_MEANING``):

* ``per_round``: rounds 2..R, both sides warm: the headline ``ratio`` (of PromptFL, the
  text-prompt workload; ``ratios`` has every method, baseline and basis);
* ``rounds``: rounds 1..R: counts fedrs's cache fill and Flower's worker warm-up (its workers
  import torch and build on their first message, inside round 1) but not fedrs's actor start;
* ``from_ray_up``: from Ray up to round R done: both sides' worker start and warm-up;
* ``end_to_end``: the whole child process's run.

``ceilings`` bounds each per-round ratio from above: the same baseline against an orchestrator
that costs nothing but the client code (fedrs's ``Method.fit`` seconds of rounds 2..R spread
evenly over the workers). Where it is near the measured ratio, what is left is arithmetic both
systems share; no scheduling can win it back.

Both sides train R + 1 rounds (fedrs's last round also evaluates; Flower's is untimed), and
``same_work_max_abs_diff`` compares their final global tensors: the same client work gives the
same model up to float rounding (``trained_max_abs``: how far training moved it).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "arch": "fedrs-small",
    "image_size": 128,
    "per_class": 24,  # synthetic images per class of the largest sensor
    "clients": 10,  # partitions = clients per round (every client trains every round)
    "rounds": 8,
    "epochs": 1,
    "batch_size": 32,  # CoOp's and the prompt-FL repos' batch size
    "workers": 2,
    "methods": ["promptfl", "fedrsclip"],
    "systems": ["fedrs", "flower", "flower-warm"],
    # GPU share of each worker on both sides; None: 1/workers when CUDA is there, else 0
    "gpus_per_client": None,
}
TARGETS = {"promptfl": 10.0, "fedrsclip": 2.0}
STRATEGY = {"promptfl": "fedavg", "fedrsclip": "prompt_avg", "fullft": "fedavg"}


def _run_config(opts: dict[str, Any], method: str, data: str) -> dict[str, Any]:
    from fedrs.orchestrator.config import RunConfig

    cfg = RunConfig().replace(
        **{
            "model.arch": opts["arch"],
            "method.name": method,
            "strategy.name": STRATEGY.get(method, "fedavg"),
            "data.path": data,
            "client.local_epochs": opts["epochs"],
            "client.batch_size": opts["batch_size"],
            "client.lr": 0.002,
            "federation.clients_per_round": opts["clients"],
            # one extra round that evaluates; only rounds 1..R are timed (Flower does not eval)
            "federation.rounds": opts["rounds"] + 1,
            "federation.eval_every": opts["rounds"] + 1,
            "resources.num_actors": opts["workers"],
            "resources.num_cpus_per_client": 1,
            "resources.num_gpus_per_client": opts["gpus_per_client"],
        }
    )
    return cfg.to_dict()


def _gpus_per_client(opts: dict[str, Any]) -> float:
    """The option as given, else one equal share of GPU 0 per worker when CUDA is there."""
    import torch

    from fedrs.errors import ConfigError

    given = opts["gpus_per_client"]
    if given is None:
        return 1.0 / opts["workers"] if torch.cuda.is_available() else 0.0
    share = float(given)
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"vs-flower: gpus_per_client={given} must be a share in [0, 1]")
    if share > 0 and not torch.cuda.is_available():
        raise ConfigError(f"vs-flower: gpus_per_client={given} but this machine has no CUDA GPU")
    return share


# ---------------------------------------------------------------------------------- fedrs side
def _start_ray(cfg_dict: dict[str, Any]) -> float:
    """Start this child's Ray exactly as Flower's backend would (same arguments on both sides)
    and return the time it was up: "from Ray up" spans count from there."""
    import ray

    ray.init(**_backend_config(cfg_dict)["init_args"])
    return time.perf_counter()


def _fedrs(cfg_dict: dict[str, Any], out: str) -> dict[str, Any]:
    """``runner.run`` as ``fedrs run`` calls it, timed from its console lines: round periods
    from one round's line to the next (round 1 from the line printed once the actors are up)."""
    import ray

    from fedrs.benchmarks.harness import run_fedrs
    from fedrs.orchestrator.config import from_dict

    t0 = time.perf_counter()
    cfg = from_dict(cfg_dict)
    ray_up = _start_ray(cfg_dict)
    res = run_fedrs(cfg, Path(out))
    ray.shutdown()  # as run_simulation shuts its Ray down inside Flower's total
    total = time.perf_counter() - t0
    rounds = cfg.federation.rounds - 1  # the extra last round (it also evaluates) is untimed
    timed = res["records"][:rounds]
    round_s = res["periods"][:rounds]
    return {
        "params": res["params"],  # global tensors after all R + 1 rounds
        "round_s": round_s,
        "client_fit_s": [c["fit_s"] for r in timed for c in r["clients"].values()],
        # Method.fit alone (no data open, no state load / save) per client, per round
        "round_train_s": [[c["phases"]["train_s"] for c in r["clients"].values()] for r in timed],
        "updates": sum(r["clients_ok"] for r in timed),
        "round_updates": [r["clients_ok"] for r in timed],
        "total_s": total,
        "startup_s": total - sum(round_s),  # as Flower's: all but the timed rounds
        # Ray up -> last training round done: driver and actors start, every timed round
        "from_ray_s": res["spawn_s"] + sum(round_s),
        "ray_s": ray_up - t0,
        "bytes_up": sum(r["bytes_up"] for r in timed),
        "workers": cfg.resources.num_actors,
    }


# --------------------------------------------------------------------------------- Flower side
def _flower_apps(cfg_dict: dict[str, Any], data: str, warm: bool, rounds: int) -> tuple[Any, Any]:
    """A ClientApp and a ServerApp running fedrs's client code the way Flower's guides do."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    from fedrs.orchestrator.config import from_dict

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        import torch

        from fedrs.datasets.manifest import FedDataset
        from fedrs.methods import method_class
        from fedrs.methods.base import FitOptions
        from fedrs.models import backbone

        t0 = time.perf_counter()
        cfg = from_dict(cfg_dict)
        pid = int(context.node_config["partition-id"])
        if not warm:
            backbone.clear_cache()  # the model is built inside the ClientApp, per message
        dataset = FedDataset(data)  # ... and the node's partition loaded per message
        # Ray sets CUDA_VISIBLE_DEVICES to the worker's GPU share, as in fedrs's actors
        gpu = cfg.resources.num_gpus_per_client > 0 and torch.cuda.is_available()
        method = method_class(cfg.method.name)(cfg, dataset.classes, "cuda:0" if gpu else "cpu")
        arrays = msg.content["arrays"]
        params = {k: arrays[k].numpy() for k in arrays}
        if "private" in context.state:
            private = {k: v.numpy() for k, v in context.state["private"].items()}
        else:
            private = method.init_private(pid, cfg.federation.seed)
        rnd = int(msg.content["config"]["server-round"])
        out = method.fit(
            params, private, dataset.client(pid), FitOptions.from_config(cfg, rnd, pid)
        )
        if out.private:
            context.state["private"] = ArrayRecord(
                {k: Array(np.ascontiguousarray(v)) for k, v in out.private.items()}
            )
        metrics = {
            "num-examples": out.num_examples,
            "fit_s": time.perf_counter() - t0,
            "threads": torch.get_num_threads(),
        }
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in out.params.items()}),
                "metrics": MetricRecord(metrics),
            }
        )
        return Message(content=content, reply_to=msg)

    server_app = ServerApp()

    class TimedFedAvg(FedAvg):
        """FedAvg that timestamps the end of each round's aggregation."""

        marks: ClassVar[list[float]] = []
        fit_s: ClassVar[list[list[float]]] = []  # per round, successful replies
        final: ClassVar[dict[str, np.ndarray]] = {}
        initial: ClassVar[dict[str, np.ndarray]] = {}

        def aggregate_train(self, server_round: int, replies: Any) -> Any:
            replies = list(replies)
            self.fit_s.append(
                [float(r.content["metrics"]["fit_s"]) for r in replies if not r.has_error()]
            )
            out = super().aggregate_train(server_round, replies)
            self.marks.append(time.perf_counter())
            return out

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        from fedrs.datasets.manifest import FedDataset
        from fedrs.methods import method_class

        cfg = from_dict(cfg_dict)
        n = cfg.federation.clients_per_round
        method = method_class(cfg.method.name)(cfg, FedDataset(data).classes)
        seed = cfg.federation.seed
        TimedFedAvg.initial.update(method.init_global(seed))
        initial = ArrayRecord({k: Array(v) for k, v in TimedFedAvg.initial.items()})
        strategy = TimedFedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=n,
            min_available_nodes=n,
        )
        TimedFedAvg.marks.append(time.perf_counter())
        # one round more than timed, as fedrs runs one more (its evaluation round): both sides
        # then train R + 1 rounds, and their final global tensors can be compared
        result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds + 1)
        TimedFedAvg.final.update({k: result.arrays[k].numpy() for k in result.arrays})

    return client_app, server_app, TimedFedAvg


def _flower(cfg_dict: dict[str, Any], data: str, warm: bool, rounds: int) -> dict[str, Any]:
    from flwr.simulation import run_simulation

    from fedrs.benchmarks.harness import max_abs_diff

    client_app, server_app, timed = _flower_apps(cfg_dict, data, warm, rounds)
    t0 = time.perf_counter()
    ray_up = _start_ray(cfg_dict)  # Flower's backend finds it up and skips its own ray.init
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=int(cfg_dict["federation"]["clients_per_round"]),
        backend_config=_backend_config(cfg_dict),
    )
    total = time.perf_counter() - t0
    marks = timed.marks
    if len(marks) != rounds + 2:
        raise RuntimeError(f"Flower completed {len(marks) - 1} of {rounds + 1} rounds")
    round_s = [b - a for a, b in itertools.pairwise(marks[: rounds + 1])]
    per_round = timed.fit_s[:rounds]
    return {
        "params": dict(timed.final),
        # how far training moved the global tensors (scale for the fedrs-vs-Flower difference)
        "trained_max_abs": max_abs_diff(timed.final, timed.initial),
        "round_s": round_s,
        "client_fit_s": [f for r in per_round for f in r],
        "updates": sum(len(r) for r in per_round),
        "round_updates": [len(r) for r in per_round],
        "total_s": total,
        "startup_s": total - sum(round_s),
        # Ray up -> last round aggregated: backend and workers start (Flower's workers import
        # torch and build on their first message, inside round 1), every round
        "from_ray_s": marks[rounds] - ray_up,
        "ray_s": ray_up - t0,
    }


def _backend_config(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """Flower's Ray backend with fedrs's resources: as many 1-CPU workers as fedrs has actors,
    each with fedrs's GPU share."""
    res = cfg_dict["resources"]
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": float(res["num_gpus_per_client"])},
        "init_args": {
            "address": "local",
            "num_cpus": int(res["num_actors"]),
            "_node_ip_address": "127.0.0.1",
            "include_dashboard": False,
        },
    }


# ------------------------------------------------------------------------------------- driver
def _child(spec_path: str) -> None:
    """Run one measurement in this (fresh) process and write its JSON."""
    spec = json.loads(Path(spec_path).read_text())
    if spec["system"] == "fedrs":
        result = _fedrs(spec["cfg"], spec["out"])
    else:
        result = _flower(spec["cfg"], spec["data"], spec["system"] == "flower-warm", spec["rounds"])
    from fedrs.io import write_bytes, write_json

    params = result.pop("params")
    write_bytes(spec["params"], _npz(params))
    write_json(spec["result"], result)


def _npz(arrays: dict[str, Any]) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def _measure(system: str, cfg: dict[str, Any], data: str, rounds: int, work: Path) -> dict:
    name = f"{system}-{cfg['method']['name']}"
    spec = {
        "system": system,
        "cfg": cfg,
        "data": data,
        "rounds": rounds,
        "out": str(work / name),
        "result": str(work / f"{name}.json"),
        "params": str(work / f"{name}.npz"),
    }
    spec_path = work / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    if system == "fedrs":  # the cache starts cold: its cost is part of the measured rounds
        for stale in Path(data).glob("shards-*/features-*"):
            shutil.rmtree(stale)
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "fedrs.benchmarks.vs_flower", str(spec_path)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-15:])
        raise RuntimeError(f"{name} failed:\n{tail}")
    import numpy as np

    result = json.loads(Path(spec["result"]).read_text())
    with np.load(spec["params"]) as saved:
        result["params"] = {k: saved[k] for k in saved.files}
    return result


def main(json_path: str | None = None, data: str | None = None, **options: Any) -> dict:
    from fedrs.benchmarks.common import machine_info, plot_path, print_table, write_result
    from fedrs.benchmarks.harness import max_abs_diff, transpose_rows
    from fedrs.errors import ConfigError
    from fedrs.io import new_figure, save_figure

    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unexpected keyword argument {sorted(unknown)[0]!r}")
    opts = {**DEFAULTS, **options}
    opts["gpus_per_client"] = _gpus_per_client(opts)
    for key in ("methods", "systems"):
        if isinstance(opts[key], str):
            opts[key] = [opts[key]]
    known = {"systems": DEFAULTS["systems"], "methods": list(STRATEGY)}
    for key, allowed in known.items():
        bad = [x for x in opts[key] if x not in allowed]
        if bad:
            raise ConfigError(
                f"vs-flower: unknown {key[:-1]} {bad[0]!r} (one of {', '.join(allowed)}; "
                f"several as --set {key}=a,b)"
            )
    work = Path(tempfile.mkdtemp(prefix="fedrs-vs-flower-"))
    try:
        if data is None:
            data = str(_synthetic(work / "data", opts))
        rows: list[dict[str, Any]] = []
        raw: dict[str, dict[str, Any]] = {}
        for method in opts["methods"]:
            cfg = _run_config(opts, method, data)
            for system in opts["systems"]:
                log.info("vs-flower: %s / %s", system, method)
                res = _measure(system, cfg, data, opts["rounds"], work)
                raw[f"{system}/{method}"] = res
                res["updates_per_s"] = {k: f(res) for k, f in BASES.items()}
                rows.append(
                    {
                        "method": method,
                        "system": system,
                        "updates": res["updates"],
                        "round1 s": res["round_s"][0],
                        "round s": statistics.median(res["round_s"][1:] or res["round_s"]),
                        "fit s": sum(res["client_fit_s"]) / max(len(res["client_fit_s"]), 1),
                        "upd/s": res["updates_per_s"]["per_round"],
                        "upd/s R rounds": res["updates_per_s"]["rounds"],
                        "from Ray s": res["from_ray_s"],
                        "total s": res["total_s"],
                    }
                )
        ratios: dict[str, dict[str, dict[str, float]]] = {}
        ceilings: dict[str, dict[str, float]] = {}
        same_work: dict[str, dict[str, float]] = {}
        for method in opts["methods"]:
            mine = raw.get(f"fedrs/{method}")
            if mine is None:
                continue
            same_work[method] = {
                f"vs {sys_}": max_abs_diff(mine["params"], raw[f"{sys_}/{method}"]["params"])
                for sys_ in opts["systems"]
                if sys_ != "fedrs" and f"{sys_}/{method}" in raw
            }
            ratios[method] = {
                f"vs {sys_}": {
                    k: mine["updates_per_s"][k] / raw[f"{sys_}/{method}"]["updates_per_s"][k]
                    for k in BASES
                }
                for sys_ in opts["systems"]
                if sys_ != "fedrs" and f"{sys_}/{method}" in raw
            }
            ceilings[method] = {
                vs: _compute_rate(mine) / raw[f"{vs[3:]}/{method}"]["updates_per_s"]["per_round"]
                for vs in ratios[method]
            }
        for method in opts["methods"]:
            print_table(
                f"{method}: fedrs vs Flower simulation, one column per system",
                transpose_rows([r for r in rows if r["method"] == method], "system", ("method",)),
            )
        print_table(
            "ratio: fedrs updates/s over the baseline's (headline: per_round vs flower)",
            [
                {"method": m, "baseline": b[3:], **v, "ceiling": ceilings[m][b]}
                for m, vs in ratios.items()
                for b, v in vs.items()
            ],
        )
        for method, diffs in same_work.items():
            for vs, diff in diffs.items():
                log.info(
                    "vs-flower: %s, final global tensors fedrs %s: max |diff| %.3g",
                    method,
                    vs,
                    diff,
                )
        for res in raw.values():
            res.pop("params")
        head = opts["methods"][0]
        result = {
            "benchmark": "vs-flower",
            "ratio": ratios.get(head, {}).get("vs flower", {}).get("per_round"),
            "ratio_method": head,
            "ratio_basis": BASIS_MEANING["per_round"],
            "bases": BASIS_MEANING,
            "target": TARGETS.get(head),
            "ratios": ratios,
            # the per-round ratio of an orchestrator with no cost but the client code itself:
            # fedrs's Method.fit seconds of rounds 2..R spread evenly over the workers
            "ceilings": ceilings,
            # same client work: the largest difference between the final global tensors of fedrs
            # and of each baseline after R + 1 rounds (float rounding only; inf: not comparable)
            "same_work_max_abs_diff": same_work,
            "targets": TARGETS,
            "options": opts,
            "rows": rows,
            "raw": raw,
            "machine": machine_info(),
        }
        write_result(result, json_path)
        fig, ax = new_figure(7, 3.5)
        labels = [f"{r['method']}\n{r['system']}" for r in rows]
        ax.bar(labels, [r["upd/s"] for r in rows], color=["C0", "C1", "C2"] * len(rows))
        ax.set_ylabel("client updates / s (rounds 2..R)")
        ax.set_title("fedrs vs Flower simulation, same client work")
        save_figure(fig, plot_path(json_path, "vs_flower"))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _per_round(res: dict[str, Any]) -> float:
    """Client updates per second over rounds 2..R: after the warm-up of either side (Flower's
    workers importing and building on their first message; fedrs's feature-cache fill)."""
    first = 1 if len(res["round_s"]) > 1 else 0
    return sum(res["round_updates"][first:]) / sum(res["round_s"][first:])


def _compute_rate(res: dict[str, Any]) -> float:
    """Updates per second over rounds 2..R if a round took only its clients' ``Method.fit``
    time, spread evenly over the workers: what no orchestrator running this client code on
    these workers can beat (fedrs's own ``per_round`` rate is at most this)."""
    first = 1 if len(res["round_train_s"]) > 1 else 0
    train_s = sum(sum(r) for r in res["round_train_s"][first:])
    return sum(res["round_updates"][first:]) / (train_s / res["workers"])


BASES: dict[str, Any] = {
    "per_round": _per_round,
    "rounds": lambda res: res["updates"] / sum(res["round_s"]),
    "from_ray_up": lambda res: res["updates"] / res["from_ray_s"],
    "end_to_end": lambda res: res["updates"] / res["total_s"],
}
BASIS_MEANING = {
    "per_round": "updates/s over rounds 2..R: steady throughput, both sides warm (headline)",
    "rounds": "updates/s over rounds 1..R: counts fedrs's cache fill and Flower's worker "
    "warm-up (its workers import and build on their first message), not fedrs's actor start",
    "from_ray_up": "updates/s from Ray up to round R done: both sides' worker start and warm-up, "
    "fedrs's cache fill, every round",
    "end_to_end": "updates/s over the whole child process's run: Ray start and shutdown too",
}


def _synthetic(out: Path, opts: dict[str, Any]) -> Path:
    from fedrs.datasets.partition import PartitionSpec
    from fedrs.datasets.synth import build_synthetic

    build_synthetic(
        out,
        per_class=opts["per_class"],
        image_size=opts["image_size"],
        partition=PartitionSpec(scheme="iid", num_clients=opts["clients"], seed=0),
    )
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    _child(sys.argv[1])
