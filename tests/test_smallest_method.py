"""The smallest complete method, as README's "Writing a method" shows it: the code block is
read from the README and run through the orchestrator, so the page cannot drift from a method
that works with every other hook left at its default."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from conftest import small_run

README = Path(__file__).parents[1] / "README.md"


def readme_method() -> type:
    """The ``LinearProbe`` class of the README's first code block that defines one."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    code = next(b for b in blocks if "class LinearProbe(" in b)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # defined here: Ray ships it by value
    return namespace["LinearProbe"]


@pytest.mark.usefixtures("ray_cluster")
def test_the_readme_method_trains_federated_with_every_other_hook_at_its_default(
    synth_data: Path, tmp_path: Path
) -> None:
    from fedrs.core.registry import METHODS, register
    from fedrs.orchestrator import checkpoint
    from fedrs.orchestrator.plan import plan
    from fedrs.orchestrator.runner import run

    probe = register(readme_method())  # as methods/__init__.py (or an entry point) would
    try:
        _run_probe(probe, synth_data, tmp_path, checkpoint, plan, run)
    finally:
        METHODS.pop(probe.name)


def _run_probe(probe: type, synth_data: Path, tmp_path: Path, checkpoint, plan, run) -> None:
    # a private copy: other tests' runs store frozen features beside the shared shards, and
    # this test checks that the first round computes them
    data = shutil.copytree(
        synth_data, tmp_path / "data", ignore=shutil.ignore_patterns("features-*")
    )
    cfg = small_run(
        data,
        **{"method.name": probe.name, "federation.rounds": 2, "client.lr": 0.5},
    )
    # --dry-run from its tensor shapes alone: one (classes x embed_dim) head travels
    p = plan(cfg, method_cls=probe)
    assert p["params_sent_per_client"] == p["params_received_per_client"] == 10 * 64
    summary = run(
        cfg, out=str(tmp_path / "r"), method_cls=probe, console=Console(file=io.StringIO())
    )
    assert summary["rounds_completed"] == 2 and summary["method"] == cfg.method.name
    _, params, _ = checkpoint.load(tmp_path / "r")
    assert list(params) == ["head.w"] and np.abs(params["head.w"]).sum() > 0  # it trained
    rounds = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients_ok"] for r in rounds] == [6, 6]
    assert rounds[-1]["bytes_up"] == 6 * 10 * 64 * 4  # only the head came up, float32
    # the frozen image features were cached per shard, the defaults' other promise
    assert sum(r["cache_misses"] for r in rounds) >= 1 and rounds[-1]["cache_hits"] == 6
    chance = 1 / 10
    assert rounds[-1]["accuracy"] > chance + 0.05
