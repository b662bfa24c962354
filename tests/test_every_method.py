"""Every method `fedrs methods` lists runs from its defaults (`fedrs run --set
method.name=X`): its options' defaults, its run defaults (``Method.run_defaults``) and the
synthetic default data it asks for (images, captions or an HSI + LiDAR scene), offline, on
the random tiny backbone. One round each (FedDiff: its classifier needs a round after the
diffusion stage, so one diffusion round and one classifier round)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from rich.console import Console

from fedrs.core.config import from_dict
from fedrs.methods import METHODS
from fedrs.orchestrator.runner import run

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]
QUIET = Console(file=io.StringIO())
SHORT = {"feddiff": {"diffusion_rounds": 1}}  # method options, beside federation.rounds


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_runs_from_its_defaults(name: str, tmp_path: Path) -> None:
    method = METHODS[name]
    options = SHORT.get(name, {})
    rounds = 1 + sum(options.values())
    cfg = from_dict({"method": {"name": name, **options}, "federation": {"rounds": rounds}})
    summary = run(cfg, out=str(tmp_path / "r"), console=QUIET)
    # local-only methods have no global model: their figure is the clients' own models'
    head = method.headline if method.global_model else f"personalized_{method.headline}"
    final = summary["final"][head]
    assert isinstance(final, float) and math.isfinite(final), summary["final"]
    if method.trains:
        assert summary["rounds_completed"] == rounds
        assert summary["totals"]["bytes_up"] > 0 or not method.global_model  # sent something
