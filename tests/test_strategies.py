"""Server optimisers and robust aggregators against hand-computed values; their state through
checkpoints and --resume."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from fedrs.core.config import StrategyConfig
from fedrs.core.strategies import STRATEGIES, ClientUpdate, make_strategy
from fedrs.core.strategies.fedopt import adaptive_step, fedavgm_step
from fedrs.core.strategies.normclip import clip_update
from fedrs.core.strategies.robust import (
    bulyan,
    coordinate_median,
    krum_scores,
    krum_select,
    trimmed_mean,
)
from fedrs.errors import ConfigError


def _u(cid: int, n: int, **params: list[float]) -> ClientUpdate:
    return ClientUpdate(cid, {k: np.asarray(v, np.float32) for k, v in params.items()}, n)


def _make(name: str, keys: tuple[str, ...] = ("w",), **opts: object):
    return make_strategy(
        name, global_keys=keys, prompt_keys=(), options=StrategyConfig(name=name, **opts)
    )


def test_fedavgm_step_by_hand() -> None:
    x, v = fedavgm_step(np.array([1.0]), np.array([0.5]), None, lr=1.0, momentum=0.9)
    assert (x, v) == (1.5, 0.5)
    x, v = fedavgm_step(x, np.array([0.5]), v, lr=1.0, momentum=0.9)
    assert math.isclose(v[0], 0.9 * 0.5 + 0.5) and math.isclose(x[0], 1.5 + 0.95)


@pytest.mark.parametrize(
    ("kind", "v_new"),
    [
        ("adam", 0.99 * 1e-6 + 0.01 * 0.01),  # b2 tau^2 + (1 - b2) d^2
        ("yogi", 1e-6 + 0.01 * 0.01),  # tau^2 - (1 - b2) d^2 sign(tau^2 - d^2), tau^2 < d^2
        ("adagrad", 1e-6 + 0.01),  # tau^2 + d^2
    ],
)
def test_adaptive_steps_by_hand(kind: str, v_new: float) -> None:
    x, m, v = adaptive_step(
        kind, np.array([2.0]), np.array([0.1]), None, None, 0.1, 0.9, 0.99, 1e-3
    )
    assert math.isclose(m[0], 0.1 * 0.1) and math.isclose(v[0], v_new)
    assert math.isclose(x[0], 2.0 + 0.1 * 0.01 / (math.sqrt(v_new) + 1e-3))


def test_server_optimizer_state_round_trips() -> None:
    """Two rounds straight = one round, state saved and loaded into a fresh strategy, one more."""
    current = {"w": np.array([1.0, -1.0], np.float32)}
    r1 = [_u(0, 1, w=[2.0, 0.0]), _u(1, 3, w=[0.0, 1.0])]
    r2 = [_u(0, 2, w=[1.0, 1.0]), _u(2, 2, w=[3.0, -2.0])]
    for name in ("fedavgm", "fedadam", "fedyogi", "fedadagrad"):
        a = _make(name, server_lr=0.1)
        mid = a.aggregate(current, r1)
        end = a.aggregate(mid, r2)
        b = _make(name, server_lr=0.1)
        b.aggregate(current, r1)
        c = _make(name, server_lr=0.1)
        c.load_state_dict({k: v.copy() for k, v in b.state_dict().items()})
        np.testing.assert_array_equal(c.aggregate(mid, r2)["w"], end["w"])
        assert end["w"].dtype == np.float32


def test_median_trimmed_mean_and_krum_by_hand() -> None:
    rows = np.array([[1.0, 5.0], [2.0, 6.0], [100.0, -100.0]])
    np.testing.assert_array_equal(coordinate_median(rows), [2.0, 5.0])
    np.testing.assert_array_equal(trimmed_mean(np.array([[1.0], [2.0], [3.0], [100.0]]), 1), [2.5])
    with pytest.raises(ValueError):
        trimmed_mean(rows, 2)
    pts = np.array([[0.0], [1.0], [3.0], [10.0]])  # f = 1: each scored by its 1 nearest other
    np.testing.assert_array_equal(krum_scores(pts, 1), [1.0, 1.0, 4.0, 49.0])
    assert list(krum_select(pts, 1, 1)) == [0] and list(krum_select(pts, 1, 2)) == [0, 1]
    # the strategies: each client one vote, example counts ignored
    ups = [_u(0, 1, w=[1.0]), _u(1, 1000, w=[2.0]), _u(2, 1, w=[100.0])]
    assert _make("median").aggregate({"w": np.zeros(1, np.float32)}, ups)["w"][0] == 2.0
    four = [*ups, _u(3, 1, w=[3.0])]
    out = _make("trimmed_mean", trim_fraction=0.25).aggregate({"w": np.zeros(1, "f4")}, four)
    assert out["w"][0] == 2.5
    krum = _make("krum", byzantine=1, multi_krum=2)
    out = krum.aggregate(
        {"w": np.zeros(1, "f4")}, [_u(i, 9, w=[v]) for i, v in enumerate([0, 1, 3, 10])]
    )
    assert out["w"][0] == 0.5  # the mean of the two best-scored, unweighted


def test_bulyan_by_hand_and_its_condition() -> None:
    # six honest updates around 0 and one at 1000; n = 7 = 4f + 3 for f = 1. Krum picks, one at a
    # time (ties: lower index): -1, 1, -2, 2, then -3 (too few left to score); the median of
    # those is -1 and the 7 - 2 - 2 = 3 values closest to it are -1, -2, 1 (tie 1 / -3: order)
    vals = np.array([[-3.0], [-2.0], [-1.0], [1.0], [2.0], [3.0], [1000.0]])
    np.testing.assert_allclose(bulyan(vals, 1), [-2.0 / 3.0])
    with pytest.raises(ConfigError, match=r"4f \+ 3 = 7") as err:
        bulyan(vals[:6], 1)
    assert "\n" not in str(err.value)
    s = _make("bulyan", byzantine=1)
    assert s.min_clients() == 7
    ups = [_u(i, 1, w=[float(v[0])]) for i, v in enumerate(vals)]
    np.testing.assert_allclose(s.aggregate({"w": np.zeros(1, "f4")}, ups)["w"], [-2.0 / 3.0])


def test_bulyan_condition_is_checked_before_a_run(synth_data: Path) -> None:
    from fedrs.core.config import RunConfig
    from fedrs.orchestrator.preflight import resolve_names

    cfg = RunConfig().replace(
        **{
            "data.path": str(synth_data),
            "strategy.name": "bulyan",
            "strategy.byzantine": 1,
            "federation.clients_per_round": 6,
        }
    )
    with pytest.raises(ConfigError, match="at least 7 updates per round") as err:
        resolve_names(cfg, 10)
    assert "\n" not in str(err.value)


def test_norm_clipping_scales_the_whole_update() -> None:
    current = {"a": np.zeros(1, "f4"), "b": np.zeros(1, "f4")}
    long = clip_update(current, _u(0, 1, a=[3.0], b=[4.0]), 1.0)  # norm 5 -> 1
    np.testing.assert_allclose([long.params["a"][0], long.params["b"][0]], [0.6, 0.8], rtol=1e-6)
    short = clip_update(current, _u(0, 1, a=[0.3], b=[0.4]), 1.0)
    np.testing.assert_allclose(short.params["a"], [0.3])
    out = _make("normclip", keys=("a", "b"), clip_norm=1.0).aggregate(
        current, [_u(0, 1, a=[3.0], b=[4.0]), _u(1, 1, a=[0.0], b=[0.0])]
    )
    np.testing.assert_allclose([out["a"][0], out["b"][0]], [0.3, 0.4], rtol=1e-6)


def test_every_strategy_owns_its_options_and_the_section_holds_them_once() -> None:
    import dataclasses

    section = StrategyConfig()
    keys = set(StrategyConfig.__dataclass_fields__) - {"name"}
    owned = set()
    for name, cls in STRATEGIES.items():
        assert cls.summary, name
        for f in dataclasses.fields(cls.Options):  # declared by the strategy, default included
            assert getattr(section, f.name) == f.default, (name, f.name)
            owned.add(f.name)
    assert owned == keys  # no section key that no strategy reads
    assert dataclasses.fields(STRATEGIES["median"].Options) == ()
    made = make_strategy("krum", global_keys=("w",), prompt_keys=(), options=section)
    assert type(made.f) is int and made.m == 1  # its typed Options, from the section
    with pytest.raises(ConfigError, match=r"strategy\.multi_krum must be >= 1"):
        StrategyConfig(name="fedavg", multi_krum=0)  # every strategy's checks run


@pytest.mark.usefixtures("ray_cluster")
def test_fedadam_resumes_exactly(synth_data: Path, tmp_path: Path) -> None:
    from conftest import small_run
    from fedrs.orchestrator import checkpoint
    from fedrs.orchestrator.runner import run

    cfg = small_run(
        synth_data,
        **{"federation.rounds": 3, "strategy.name": "fedadam", "strategy.server_lr": 0.05},
    )
    quiet = Console(file=io.StringIO())
    run(cfg, out=str(tmp_path / "full"), console=quiet)
    run(cfg, out=str(tmp_path / "cut"), console=quiet, stop_after=1)
    run(resume=str(tmp_path / "cut"), console=quiet)
    _, a, sa = checkpoint.load(tmp_path / "full")
    _, b, sb = checkpoint.load(tmp_path / "cut")
    assert set(a) == set(b) and any(k.startswith("strategy/m/") for k in sa)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
