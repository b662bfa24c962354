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

from fedrs.core.attacks import (
    LabelFlipped,
    alie_z_max,
    attackers,
    omniscient,
    tamper,
)
from fedrs.core.config import RunConfig
from fedrs.core.strategies import ClientUpdate
from fedrs.errors import ConfigError


def test_attackers_are_a_fixed_fraction_drawn_from_the_seed() -> None:
    a = attackers(10, 0.2, 0)
    assert len(a) == 2 and a == attackers(10, 0.2, 0) and a <= set(range(10))
    assert len(attackers(10, 0.3, 0)) == 3 and attackers(10, 0.2, 0) <= attackers(10, 0.3, 0)
    assert attackers(10, 0.0, 0) == frozenset() and len(attackers(6, 0.1, 0)) == 0
    with pytest.raises(ConfigError, match=r"attack\.kind"):
        RunConfig().replace(**{"attack.kind": "bitflip"})


def test_each_attack_by_hand() -> None:
    cfg = SimpleNamespace(scale=10.0, noise_std=0.5, seed=3, boost=1.0)
    got, w = {"w": np.array([1.0, 2.0], "f4")}, {"w": np.array([2.0, 0.0], "f4")}
    np.testing.assert_array_equal(tamper("signflip", w, got, cfg, 1, 0)["w"], [0.0, 4.0])
    np.testing.assert_array_equal(tamper("scale", w, got, cfg, 1, 0)["w"], [11.0, -18.0])
    assert np.isnan(tamper("nan", w, got, cfg, 1, 0)["w"]).all()
    a, b = (tamper("collude", w, got, cfg, 1, c)["w"] for c in (0, 5))
    np.testing.assert_array_equal(a, b)  # every attacker the same update
    assert np.isclose(np.linalg.norm(a - got["w"]), 10.0)
    np.testing.assert_array_equal(tamper("labelflip", w, got, cfg, 1, 0)["w"], w["w"])
    shard = SimpleNamespace(labels=np.array([0, 1, 4, -1]), images="pixels")
    flipped = LabelFlipped(shard, 5)
    assert flipped.labels.tolist() == [4, 3, 0, -1] and flipped.images == "pixels"


def test_boosted_signflip_is_w_g_minus_lambda_times_the_update() -> None:
    cfg = SimpleNamespace(boost=4.0)
    got, w = {"w": np.array([1.0, 2.0], "f4")}, {"w": np.array([2.0, 0.5], "f4")}
    # w_g - 4 (w - w_g) = [1 - 4, 2 + 6]
    np.testing.assert_array_equal(tamper("signflip", w, got, cfg, 1, 0)["w"], [-3.0, 8.0])
    extras = tamper("signflip", {"g": np.array([1.0, -2.0])}, {}, cfg, 1, 0)
    np.testing.assert_array_equal(extras["g"], [-4.0, 8.0])
    with pytest.raises(ConfigError, match=r"attack\.boost"):
        RunConfig().replace(**{"attack.boost": 0.0})


def test_noise_has_its_std_and_is_drawn_from_seed_round_and_client() -> None:
    cfg = SimpleNamespace(noise_std=0.5, seed=3)
    w = {"w": np.full(20_000, 2.0, "f4")}
    noisy = tamper("noise", w, {}, cfg, 1, 0)["w"]
    assert noisy.dtype == np.float32
    added = noisy.astype(np.float64) - 2.0
    assert abs(added.std() - 0.5) < 0.01 and abs(added.mean()) < 0.01
    np.testing.assert_array_equal(tamper("noise", w, {}, cfg, 1, 0)["w"], noisy)  # replayed
    for other in (tamper("noise", w, {}, cfg, 2, 0), tamper("noise", w, {}, cfg, 1, 1)):
        assert abs(np.corrcoef(other["w"] - 2.0, added)[0, 1]) < 0.05  # a fresh draw


def _updates(rows: list[list[float]]) -> list[ClientUpdate]:
    return [ClientUpdate(i, {"w": np.array(r, "f4")}, 10) for i, r in enumerate(rows)]


def test_alie_sends_mean_minus_z_std_of_the_honest_updates() -> None:
    current = {"w": np.array([1.0, 1.0], "f4")}
    # honest deltas [1, 0], [3, 2], [2, 4]: mean [2, 2], population std [sqrt(2/3), sqrt(8/3)]
    ups = _updates([[2.0, 1.0], [4.0, 3.0], [3.0, 5.0], [100.0, -100.0]])
    out = omniscient("alie", current, ups, {3}, SimpleNamespace(alie_z=1.5))
    want = np.array([1 + 2 - 1.5 * np.sqrt(2 / 3), 1 + 2 - 1.5 * np.sqrt(8 / 3)])
    np.testing.assert_allclose(out[3].params["w"], want, rtol=1e-6)
    assert all(out[i] is ups[i] for i in range(3))  # honest updates untouched
    # z_max (Baruch et al.): n = 10, f = 2: s = floor(6) - 2 = 4, z = Phi^-1(6 / 10)
    assert alie_z_max(10, 2) == pytest.approx(0.2533471, abs=1e-6)
    out = omniscient("alie", current, ups, {3}, SimpleNamespace(alie_z=0.0))
    z = alie_z_max(4, 1)  # s = 2, Phi^-1(0.5) = 0
    assert z == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(out[3].params["w"], [3.0, 3.0], rtol=1e-6)


def test_ipm_sends_minus_epsilon_times_the_honest_mean_and_turns_fedavg_around() -> None:
    current = {"w": np.array([1.0, -1.0], "f4")}
    ups = _updates([[2.0, 0.0], [4.0, -1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    cfg = SimpleNamespace(ipm_epsilon=3.0)
    out = omniscient("ipm", current, ups, {2, 3, 4}, cfg)
    honest_mean = np.array([2.0, 0.5])  # deltas [1, 1] and [3, 0]
    for i in (2, 3, 4):
        np.testing.assert_allclose(out[i].params["w"], current["w"] - 3.0 * honest_mean)
    assert out[2].num_examples == 10 and out[0] is ups[0]
    # FedAvg's step: (2 honest - 3 x 3 epsilon) / 5 of the honest mean: against it
    step = _make_fedavg().aggregate(current, out)["w"] - current["w"]
    assert float(step @ honest_mean) < 0
    np.testing.assert_allclose(step, (2 - 3 * 3.0) / 5 * honest_mean, rtol=1e-6)
    # no attacker sampled: nothing changes
    assert omniscient("ipm", current, ups, set(), cfg) is ups


def _make_fedavg():
    from fedrs.core.strategies import make_strategy

    return make_strategy("fedavg", global_keys=("w",), prompt_keys=())


def test_normclip_adaptive_bound_is_the_median_norm() -> None:
    from fedrs.core.config import StrategyConfig
    from fedrs.core.strategies import make_strategy

    current = {"w": np.zeros(2, "f4")}
    # norms 1, 2, 5 (honest) and 50 (an attacker): median of four = (2 + 5) / 2
    ups = _updates([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [30.0, 40.0]])
    s = make_strategy(
        "normclip",
        global_keys=("w",),
        prompt_keys=(),
        options=StrategyConfig(name="normclip", clip_norm=0.0),
    )
    out = s.aggregate(current, ups)
    assert s.bound == pytest.approx(3.5)
    clipped = [[1.0, 0.0], [0.0, 2.0], [2.1, 2.8], [2.1, 2.8]]  # norm 5 and 50 -> 3.5
    np.testing.assert_allclose(out["w"], np.mean(clipped, axis=0), rtol=1e-6)
    fixed = make_strategy(
        "normclip", global_keys=("w",), prompt_keys=(), options=StrategyConfig(clip_norm=1.0)
    )
    fixed.aggregate(current, ups)
    assert fixed.bound == 1.0  # a constant bound still works
    with pytest.raises(ConfigError, match=r"strategy\.clip_norm"):
        StrategyConfig(clip_norm=-1.0)


def test_normfilter_leaves_out_long_updates_and_keeps_example_weights() -> None:
    from fedrs.core.config import StrategyConfig
    from fedrs.core.strategies import make_strategy

    current = {"w": np.zeros(2, "f4")}
    # norms 1, 2, 5 (honest, 10 / 30 / 60 examples) and 50 (a boosted attacker): median 3.5
    ups = [
        ClientUpdate(i, {"w": np.array(r, "f4")}, n)
        for i, (r, n) in enumerate(
            [([1.0, 0.0], 10), ([0.0, 2.0], 30), ([3.0, 4.0], 60), ([30.0, 40.0], 10)]
        )
    ]

    def strategy(factor: float):
        return make_strategy(
            "normfilter",
            global_keys=("w",),
            prompt_keys=(),
            options=StrategyConfig(name="normfilter", filter_factor=factor),
        )

    s = strategy(3.0)  # bound 10.5: the attacker is out, the honest keep their weights
    out = s.aggregate(current, ups)
    honest = 10 * np.array([1.0, 0.0]) + 30 * np.array([0.0, 2.0]) + 60 * np.array([3.0, 4.0])
    np.testing.assert_allclose(out["w"], honest / 100, rtol=1e-6)
    assert s.metrics == {"bound": pytest.approx(10.5), "excluded": 1.0}
    tight = strategy(1.0)  # bound 3.5: the norm-5 update goes too
    np.testing.assert_allclose(tight.aggregate(current, ups)["w"], [0.25, 1.5], rtol=1e-6)
    assert tight.metrics["excluded"] == 2.0
    same = _updates([[1.0, 0.0], [0.0, 1.0]])  # equal norms: nothing left out
    np.testing.assert_allclose(tight.aggregate(current, same)["w"], [0.5, 0.5], rtol=1e-6)
    with pytest.raises(ConfigError, match=r"strategy\.filter_factor"):
        StrategyConfig(filter_factor=0.5)


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
