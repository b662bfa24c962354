"""The run's virtual clock (``[system]``, ``federation.policy``; the model is
``fedrs/core/system.py``): what each sampled client's task costs in virtual seconds, which
tasks the round's policy keeps (the others are never run), and where the clock stands. The
clock's position is each round's ``virtual_time_s`` in ``metrics.jsonl``, so ``--resume``
finds it there."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from fedrs.core.config import RunConfig
from fedrs.core.system import Profiles, Schedule, Task, cohort_size, schedule
from fedrs.orchestrator import records

log = logging.getLogger(__name__)


class Clock:
    """Virtual time for a run: ``sampling`` (the cohort the policy samples), ``plan`` (the
    round's schedule), ``advance`` (the round's record fields)."""

    def __init__(
        self,
        cfg: RunConfig,
        pool: Any,
        params: dict[str, np.ndarray],
        upload_keys: tuple[str, ...],
        run_dir: Path,
        resumed: bool,
    ) -> None:
        self.cfg = cfg
        self.profiles = Profiles(cfg.system, cfg.federation.seed)
        # FLOPs of one training example for one epoch: the clock's unit of work
        self.example_flops = float(pool.call_one("example_flops", params, tuple(upload_keys)))
        done = records.read(run_dir) if resumed and (run_dir / records.METRICS).is_file() else []
        self.now = float(done[-1].get("virtual_time_s", 0.0)) if done else 0.0
        log.info(
            "virtual clock: %.3g FLOPs per training example, policy %s, from t=%.1f s",
            self.example_flops,
            cfg.federation.policy,
            self.now,
        )

    def sampling(self) -> RunConfig:
        """The config the round's sampler reads (over-selection samples more)."""
        fed = self.cfg.federation
        n = cohort_size(fed.policy, fed.clients_per_round, fed.overselect)
        return dataclasses.replace(
            self.cfg, federation=dataclasses.replace(fed, clients_per_round=n)
        )

    def plan(
        self, sampled: list[int], examples: list[int], down: list[int], up: list[int]
    ) -> Schedule:
        """The round's schedule for the sampled clients (by index), from their examples and
        the bytes each receives and sends."""
        fed, epochs = self.cfg.federation, self.cfg.client.local_epochs
        tasks = [
            Task(c, self.example_flops * n * epochs, d, u)
            for c, n, d, u in zip(sampled, examples, down, up, strict=True)
        ]
        return schedule(
            fed.policy, self.now, tasks, self.profiles, fed.clients_per_round, fed.deadline_s
        )

    def advance(self, sampled: list[int], plan: Schedule) -> dict[str, Any]:
        """Move the clock to the round's end; the round's record fields."""
        start, self.now = self.now, plan.end
        return {
            "virtual_round_s": plan.end - start,
            "virtual_time_s": plan.end,
            "clients_late": len(plan.dropped),
            "virtual_task_s": {str(sampled[i]): t - start for i, t in plan.finish.items()},
        }
