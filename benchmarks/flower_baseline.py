"""The baseline of ``fedrs bench vs-flower``: Flower's simulation engine running fedrs's client
code as Flower's guides write a client (every message loads the node's partition and builds
the model; ``warm``: the backbone stays cached in each Ray worker), on a Ray started with the
same arguments as fedrs's side, timed from one aggregated result to the next.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, ClassVar

from fedrs.benchmarks.harness import max_abs_diff
from fedrs.benchmarks.harness_proc import local_ray_args
from fedrs.io import contiguous


def backend_config(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """Flower's Ray backend with fedrs's resources: as many 1-CPU workers as fedrs has actors,
    each with fedrs's GPU share."""
    res = cfg_dict["resources"]
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": float(res["num_gpus_per_client"])},
        "init_args": local_ray_args(int(res["num_actors"])),
    }


def start_ray(cfg_dict: dict[str, Any]) -> float:
    """Start this child's Ray exactly as Flower's backend would (same arguments on both sides)
    and return the time it was up: "from Ray up" spans count from there."""
    import ray

    ray.init(**backend_config(cfg_dict)["init_args"])
    return time.perf_counter()


def flower_apps(
    cfg_dict: dict[str, Any], data: str, warm: bool, rounds: int
) -> tuple[Any, Any, Any]:
    """A ClientApp and a ServerApp running fedrs's client code the way Flower's guides do, and
    the strategy class that records round ends, client times and the final tensors."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    from fedrs.core.config import from_dict

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
                {k: Array(contiguous(v)) for k, v in out.private.items()}
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


def run_flower(cfg_dict: dict[str, Any], data: str, warm: bool, rounds: int) -> dict[str, Any]:
    from flwr.simulation import run_simulation

    client_app, server_app, timed = flower_apps(cfg_dict, data, warm, rounds)
    t0 = time.perf_counter()
    ray_up = start_ray(cfg_dict)  # Flower's backend finds it up and skips its own ray.init
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=int(cfg_dict["federation"]["clients_per_round"]),
        backend_config=backend_config(cfg_dict),
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
