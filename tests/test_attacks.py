"""Simulated attacks: who attacks, what each attack sends, and a run where the driver rejects
the non-finite bombs and counts them."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console

from fedrs.errors import ConfigError
from fedrs.orchestrator.attacks import LabelFlipped, attackers, tamper
from fedrs.orchestrator.config import RunConfig


def test_attackers_are_a_fixed_fraction_drawn_from_the_seed() -> None:
    a = attackers(10, 0.2, 0)
    assert len(a) == 2 and a == attackers(10, 0.2, 0) and a <= set(range(10))
    assert len(attackers(10, 0.3, 0)) == 3 and attackers(10, 0.2, 0) <= attackers(10, 0.3, 0)
    assert attackers(10, 0.0, 0) == frozenset() and len(attackers(6, 0.1, 0)) == 0
    with pytest.raises(ConfigError, match=r"attack\.kind"):
        RunConfig().replace(**{"attack.kind": "bitflip"})


def test_each_attack_by_hand() -> None:
    cfg = SimpleNamespace(scale=10.0, noise_std=0.5, seed=3)
    got, w = {"w": np.array([1.0, 2.0], "f4")}, {"w": np.array([2.0, 0.0], "f4")}
    np.testing.assert_array_equal(tamper("signflip", w, got, cfg, 1, 0)["w"], [0.0, 4.0])
    np.testing.assert_array_equal(tamper("scale", w, got, cfg, 1, 0)["w"], [11.0, -18.0])
    assert np.isnan(tamper("nan", w, got, cfg, 1, 0)["w"]).all()
    noisy = tamper("noise", w, got, cfg, 1, 0)["w"]
    assert noisy.dtype == np.float32 and not np.array_equal(noisy, w["w"])
    a, b = (tamper("collude", w, got, cfg, 1, c)["w"] for c in (0, 5))
    np.testing.assert_array_equal(a, b)  # every attacker the same update
    assert np.isclose(np.linalg.norm(a - got["w"]), 10.0)
    np.testing.assert_array_equal(tamper("labelflip", w, got, cfg, 1, 0)["w"], w["w"])
    shard = SimpleNamespace(labels=np.array([0, 1, 4, -1]), images="pixels")
    flipped = LabelFlipped(shard, 5)
    assert flipped.labels.tolist() == [4, 3, 0, -1] and flipped.images == "pixels"


@pytest.mark.usefixtures("ray_cluster")
def test_bombs_are_rejected_and_counted(synth_data: Path, tmp_path: Path) -> None:
    from conftest import small_run
    from fedrs.orchestrator.runner import run

    cfg = small_run(synth_data, **{"attack.kind": "nan", "attack.fraction": 0.5})
    bad = attackers(6, 0.5, 0)
    run(cfg, out=str(tmp_path / "run"), console=Console(file=io.StringIO()))
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        sampled = {int(c) for c in rec["clients"]}
        assert rec["attackers"] == len(sampled & bad) == rec["clients_rejected"] == 3
        assert {int(c) for c in rec["failures"]} == sampled & bad
        assert all("non-finite" in why for why in rec["failures"].values())
        assert rec["accuracy"] is None or np.isfinite(rec["accuracy"])
