"""Evaluation spread over the client actors: the global model on the held-out split (in
chunks), each client's personalised model on its own local split (and, with
``federation.eval_personal_global``, on the whole global split), and a scene's final map."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrs.actors.client import EvalTask
from fedrs.actors.pool import ClientPool
from fedrs.core.config import RunConfig
from fedrs.core.metrics import shot_accuracy
from fedrs.datasets.manifest import FedDataset
from fedrs.methods.base import Method
from fedrs.orchestrator.plots import plot_scene_map

log = logging.getLogger(__name__)
PERSONALIZED_EVAL_MAX = 64  # evaluate every client's local split up to this many clients


def train_class_counts(data: FedDataset) -> list[int]:
    """Training examples per class, summed over the data partitions."""
    counts = np.zeros(len(data.classes), dtype=int)
    for client in data.clients:
        c = np.asarray(client.train.class_counts, dtype=int)
        counts[: len(c)] += c
    return counts.tolist()


def _mean(values: list[Any]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


@dataclass
class Evaluator:
    """What a run evaluates, on whose actors. ``excluded``: partitions left out by preflight."""

    cfg: RunConfig
    method_cls: type[Method]
    data: FedDataset
    pool: ClientPool
    num_registered: int
    excluded: dict[int, str]

    def _test_chunks(self, rnd: int, kind: str = "test") -> list[EvalTask]:
        """The global split in one chunk per actor."""
        n = self.data.test.num_examples
        if n == 0:
            return []
        step = -(-n // len(self.pool))
        return [EvalTask(kind, rnd, start=s, stop=min(s + step, n)) for s in range(0, n, step)]

    def _client_tasks(
        self, rnd: int, sampled: list[int] | None
    ) -> tuple[list[EvalTask], list[EvalTask]]:
        """Each client's model on its local split, and on the global split when asked: every
        registered client up to ``PERSONALIZED_EVAL_MAX``, else the round's sampled ones."""
        n, parts = self.num_registered, self.data.num_clients
        clients = list(range(n)) if n <= PERSONALIZED_EVAL_MAX else (sampled or [])
        usable = [c for c in clients if c % parts not in self.excluded]
        local = [
            EvalTask("client", rnd, client_id=c)
            for c in usable
            if self.data.clients[c % parts].local_test.num_examples > 0
        ]
        # what a newcomer gets from one client's personalised model, not only the shared part
        on_global = [
            EvalTask("client_global", rnd, client_id=c)
            for c in usable
            if self.cfg.federation.eval_personal_global
        ]
        return local, on_global

    def evaluate(
        self, params: dict[str, np.ndarray], rnd: int, sampled: list[int] | None = None
    ) -> dict[str, Any]:
        """Global accuracy on the held-out split and personalised accuracy: the mean of each
        client's accuracy on its own local split (the headline metric of the method)."""
        fed, parts = self.cfg.federation, self.data.num_clients
        chunks = self._test_chunks(rnd) if self.method_cls.global_model else []
        local, on_global = self._client_tasks(rnd, sampled)
        n_test = self.data.test.num_examples
        costs = (
            [t.stop - t.start for t in chunks]
            + [self.data.clients[t.client_id % parts].local_test.num_examples for t in local]
            + [n_test for _ in on_global]
        )
        results, failures = self.pool.map(
            "evaluate",
            self.pool.put(params),
            chunks + local + on_global,
            fed.round_timeout_s,
            costs,
        )
        reduce, head = self.method_cls.reduce_eval, self.method_cls.headline
        glob = [results[i] for i in range(len(chunks)) if i in results]
        out: dict[str, Any] = {
            **(reduce(glob) if len(glob) == len(chunks) else {head: None}),
            "eval_failed": len(failures),
        }
        if out.get("per_class_accuracy"):
            counts = train_class_counts(self.data)
            out |= shot_accuracy(
                out["per_class_accuracy"], counts, fed.many_shot_above, fed.few_shot_below
            )
        first_global = len(chunks) + len(local)
        each = {i: reduce([r])[head] for i, r in sorted(results.items()) if i >= len(chunks)}
        pers = [v for i, v in each.items() if i < first_global and v is not None]
        out[f"personalized_{head}"] = _mean(pers)
        if on_global:
            out[f"personalized_global_{head}"] = _mean(
                [v for i, v in each.items() if i >= first_global]
            )
        why = self._null_reasons(out, failures, len(chunks) - len(glob), len(chunks), local, pers)
        if why:
            out["null_reasons"] = why
        return out

    def _null_reasons(
        self,
        out: dict[str, Any],
        failures: dict[int, str],
        missing: int,
        chunks: int,
        local: list[EvalTask],
        pers: list[float],
    ) -> dict[str, str]:
        """Why the headline or its personalised mean is null, in words."""
        head, why = self.method_cls.headline, {}
        if out.get(head) is None:
            failed = next(iter(failures.values()), "no test example")
            why[head] = (
                f"the global test split was not fully evaluated ({missing} of {chunks} "
                f"chunks failed: {failed})"
                if missing
                else "the global test split has no example"
                if self.method_cls.global_model
                else f"{self.method_cls.name} trains no global model (local training only)"
            )
        if not pers:
            why[f"personalized_{head}"] = (
                "no client local split was evaluated" if local else "no client has a local split"
            )
        return why

    def scene_map(self, params: dict[str, np.ndarray], rnd: int, path: Path) -> str | None:
        """``map.png``: the model's predictions on a scene's test pixels beside their ground
        truth (methods that predict rows); the file name, or None."""
        tasks = self._test_chunks(rnd)
        results, failures = self.pool.map(
            "predict", self.pool.put(params), tasks, self.cfg.federation.round_timeout_s
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
            path,
        )
        return path.name
