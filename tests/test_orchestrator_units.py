"""Strategy maths, sampling, config, validation, client-state store: no Ray needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrs.core.config import RunConfig, from_dict, load_config
from fedrs.core.sampling import sample_clients
from fedrs.core.state_store import FileStateStore
from fedrs.core.strategies import (
    ClientUpdate,
    FedAvg,
    FedProx,
    PromptAveraging,
    make_strategy,
    weighted_average,
)
from fedrs.core.validation import spec_of, validate_update
from fedrs.errors import ConfigError
from fedrs.orchestrator import checkpoint


def _u(cid: int, n: int, **params: list[float]) -> ClientUpdate:
    return ClientUpdate(cid, {k: np.array(v, dtype=np.float32) for k, v in params.items()}, n)


def test_fedavg_weights_by_examples_hand_computed() -> None:
    current = {"w": np.zeros(2, np.float32), "b": np.zeros(1, np.float32)}
    ups = [_u(0, 10, w=[1.0, 2.0], b=[1.0]), _u(1, 30, w=[5.0, -2.0], b=[3.0])]
    out = FedAvg(upload_keys=("w", "b")).aggregate(current, ups)
    # w = (10*[1,2] + 30*[5,-2]) / 40 = [4, -1]; b = (10*1 + 30*3) / 40 = 2.5
    np.testing.assert_allclose(out["w"], [4.0, -1.0])
    np.testing.assert_allclose(out["b"], [2.5])
    assert out["w"].dtype == np.float32
    # completion order does not matter
    again = FedAvg(upload_keys=("w", "b")).aggregate(current, ups[::-1])
    assert np.array_equal(again["w"], out["w"])


def test_fedprox_is_fedavg_on_server_and_sends_mu() -> None:
    strat = make_strategy("fedprox", mu=0.1, global_keys=("w",), prompt_keys=())
    assert isinstance(strat, FedProx) and strat.client_options() == {"proximal_mu": 0.1}
    out = strat.aggregate({"w": np.zeros(1, np.float32)}, [_u(0, 1, w=[2.0]), _u(1, 3, w=[6.0])])
    np.testing.assert_allclose(out["w"], [5.0])


def test_prompt_averaging_touches_only_shared_prompts() -> None:
    strat = make_strategy(
        "prompt_avg", mu=0, global_keys=("shared", "head"), prompt_keys=("shared",)
    )
    assert isinstance(strat, PromptAveraging) and strat.upload_keys == ("shared",)
    current = {"shared": np.zeros(2, np.float32), "head": np.full(2, 7.0, np.float32)}
    out = strat.aggregate(current, [_u(0, 1, shared=[1, 1]), _u(1, 1, shared=[3, 5])])
    np.testing.assert_allclose(out["shared"], [2.0, 3.0])
    np.testing.assert_allclose(out["head"], [7.0, 7.0])
    with pytest.raises(ConfigError, match="shared prompt"):
        make_strategy("prompt_avg", mu=0, global_keys=("w",), prompt_keys=())
    with pytest.raises(ConfigError, match="unknown strategy"):
        make_strategy("fedsgd", mu=0, global_keys=("w",), prompt_keys=())


def test_weighted_average_rejects_bad_weights() -> None:
    with pytest.raises(ValueError):
        weighted_average([np.ones(1)], [0.0])
    with pytest.raises(ValueError):
        weighted_average([], [])


def test_sampling_depends_only_on_seed_and_round() -> None:
    a = sample_clients(100, 10, seed=3, round_=5)
    assert a == sample_clients(100, 10, seed=3, round_=5)
    assert a != sample_clients(100, 10, seed=3, round_=6)
    assert a != sample_clients(100, 10, seed=4, round_=5)
    assert len(set(a)) == 10 and a == sorted(a) and all(0 <= c < 100 for c in a)
    assert sample_clients(5, 10, 0, 1) == [0, 1, 2, 3, 4]
    big = sample_clients(100_000, 10, 0, 1)
    assert len(set(big)) == 10 and max(big) < 100_000


def test_config_toml_overrides_and_errors(tmp_path: Path) -> None:
    toml = tmp_path / "exp.toml"
    toml.write_text('[strategy]\nname = "fedprox"\nmu = 0.05\n[federation]\nrounds = 3\n')
    cfg = load_config(
        toml, ["federation.rounds=7", "resources.num_gpus_per_client=0.25", "data.path=/x"]
    )
    assert cfg.strategy.name == "fedprox" and cfg.strategy.mu == 0.05
    assert cfg.federation.rounds == 7 and cfg.resources.num_gpus_per_client == 0.25
    assert cfg.data.path == "/x" and cfg.method.name == "promptfl"
    for key in (
        "method.name",
        "strategy.name",
        "strategy.mu",
        "model.arch",
        "model.pretrained",
        "data.path",
        "data.partition",
        "data.alpha",
        "data.num_clients",
        "federation.rounds",
        "federation.clients_per_round",
        "federation.seed",
        "resources.num_cpus_per_client",
        "resources.num_gpus_per_client",
        "resources.num_actors",
    ):
        section, name = key.split(".")
        assert name in getattr(cfg, section).__dataclass_fields__
    with pytest.raises(ConfigError, match=r"unknown config key 'federation\.roundz'"):
        load_config(None, ["federation.roundz=3"])
    with pytest.raises(ConfigError, match="unknown config key 'optim'"):
        from_dict({"optim": {"lr": 1}})
    with pytest.raises(ConfigError, match=r"federation\.rounds: 'many' is not a valid int"):
        load_config(None, ["federation.rounds=many"])
    with pytest.raises(ConfigError, match="must be >= 1"):
        load_config(None, ["federation.rounds=0"])
    with pytest.raises(ConfigError, match="placement_strategy"):
        load_config(None, ["resources.placement_strategy=RANDOM"])
    with pytest.raises(ConfigError, match="not valid TOML"):
        (tmp_path / "bad.toml").write_text("[x\n")
        load_config(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match=r"expected dotted\.key=value"):
        load_config(None, ["federation.rounds"])
    with pytest.raises(ConfigError, match="not a valid float"):
        load_config(None, ["client.lr=nan"])
    assert RunConfig().replace(**{"federation.rounds": 2}).federation.rounds == 2


def _dotted(cfg: RunConfig, key: str) -> object:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def test_a_methods_run_defaults_fill_only_the_keys_the_user_left_out(tmp_path: Path) -> None:
    from fedrs.core.config import to_toml
    from fedrs.methods import METHODS

    feddiff = from_dict({"method": {"name": "feddiff"}})
    assert (feddiff.federation.rounds, feddiff.client.local_epochs, feddiff.client.lr) == (
        35,
        2,
        0.05,
    )
    assert feddiff.federation.rounds > feddiff.method.options.stage1_rounds  # meaningful
    # the user's file and --set win over the method's defaults
    toml = tmp_path / "run.toml"
    toml.write_text('[method]\nname = "feddiff"\n[client]\nlr = 0.3\n')
    mine = load_config(toml, ["federation.rounds=40"])
    assert (mine.client.lr, mine.federation.rounds, mine.client.local_epochs) == (0.3, 40, 2)
    # a method without run defaults keeps the dataclasses' defaults
    assert from_dict({}).client.lr == RunConfig().client.lr != feddiff.client.lr
    # every method's run defaults are real keys that validate, and a dumped config (what
    # config.json and `fedrs config` hold) loads back to itself
    for name, method in METHODS.items():
        cfg = from_dict({"method": {"name": name}})
        for key, value in method.run_defaults.items():
            assert _dotted(cfg, key) == value, (name, key)
        dumped = tmp_path / f"{name}.toml"
        dumped.write_text(to_toml(cfg))
        assert load_config(dumped) == cfg


@pytest.mark.parametrize(
    ("sweep", "method"),
    [
        ("feddiff_houston", "early_fusion"),  # the arms' shared 30 classifier rounds
        ("feddiff_scene", "early_fusion"),
        ("clip2fl_longtail", "clip2fl"),
        ("fedrsclip_study", "fedrsclip"),
    ],
)
def test_method_defaults_are_the_settings_of_its_benchmark_tables(sweep: str, method: str) -> None:
    import tomllib

    from fedrs.methods import METHODS

    base = tomllib.loads(
        (Path(__file__).parents[1] / "benchmarks" / "sweeps" / f"{sweep}.toml").read_text()
    )["base"]
    base = {f"{section}.{k}": v for section, keys in base.items() for k, v in keys.items()}
    shared = [k for k in METHODS[method].run_defaults if k in base]
    assert len(shared) >= 3, shared
    assert {k: base[k] for k in shared} == {k: METHODS[method].run_defaults[k] for k in shared}


def test_validate_update_catches_malformed_and_non_finite() -> None:
    spec = spec_of({"w": np.zeros((2, 3), np.float32)}, ("w",))
    ok = {"w": np.ones((2, 3), np.float32)}
    assert validate_update(ok, 5, spec) is None
    assert "names differ" in validate_update({"v": ok["w"]}, 5, spec)
    assert "shape" in validate_update({"w": np.ones((3, 2), np.float32)}, 5, spec)
    assert "dtype" in validate_update({"w": np.ones((2, 3), np.float64)}, 5, spec)
    bad = ok["w"].copy()
    bad[1, 1] = np.nan
    assert "non-finite" in validate_update({"w": bad}, 5, spec)
    bad[1, 1] = np.inf
    assert "non-finite" in validate_update({"w": bad}, 5, spec)
    assert "not an array" in validate_update({"w": [[1.0] * 3] * 2}, 5, spec)
    assert "not a dict" in validate_update([ok["w"]], 5, spec)
    assert "not positive" in validate_update(ok, 0, spec)
    assert "not an integer" in validate_update(ok, 2.5, spec)


def test_state_store_versions_and_discard(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path, keep=2)
    assert store.load(7, before_round=5) is None
    store.save(7, 1, {"p": np.array([1.0], np.float32)})
    store.save(7, 3, {"p": np.array([3.0], np.float32)})
    assert store.load(7, before_round=3)["p"][0] == 1.0  # only versions from earlier rounds
    assert store.load(7, before_round=4)["p"][0] == 3.0
    store.save(7, 4, {"p": np.array([4.0], np.float32)})
    assert store.versions(7) == [3, 4]  # pruned to the newest two
    store.discard(7, 4)
    assert store.load(7, before_round=9)["p"][0] == 3.0
    store.save(123_456, 1, {"p": np.zeros(1, np.float32)})
    assert (tmp_path / "0123" / "123456" / "r1.safetensors").is_file()


def test_checkpoint_roundtrip(tmp_path: Path) -> None:
    assert checkpoint.load(tmp_path) is None
    for r in (1, 2, 3):
        checkpoint.save(
            tmp_path,
            r,
            {"w": np.full(2, r, np.float32)},
            {"features": np.ones((2, 2), np.float32), "note": "not a tensor"},
        )
    rnd, params, server = checkpoint.load(tmp_path)
    assert rnd == 3 and params["w"].tolist() == [3.0, 3.0]
    assert server["features"].shape == (2, 2) and "note" not in server
    assert len(list((tmp_path / "checkpoint").glob("round_*.safetensors"))) == 2


def test_scalars_and_strided_arrays_keep_their_shape_through_every_store(tmp_path: Path) -> None:
    """A 0-d parameter (CLIP's logit scale, trained by full fine-tuning) comes back 0-d from a
    checkpoint, a client's private state and a deployment site's wire format: a resumed
    retrieval_fullft run failed its first round on a (1,) logit scale."""
    from fedrs.actors.site_worker import _from_bytes, _to_bytes

    scale = np.array(4.6, np.float32)
    strided = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]  # not contiguous
    checkpoint.save(tmp_path, 1, {"logit_scale": scale, "w": strided}, {"s": scale})
    _, params, server = checkpoint.load(tmp_path)
    assert params["logit_scale"].shape == () and server["s"].shape == ()
    assert np.array_equal(params["w"], strided)
    store = FileStateStore(tmp_path / "private")
    store.save(0, 1, {"logit_scale": scale})
    assert store.load(0, before_round=2)["logit_scale"].shape == ()
    assert _from_bytes(_to_bytes(scale)).shape == ()


def test_fit_options_from_config_carry_client_settings_and_strategy_options() -> None:
    from fedrs.core.strategies import make_strategy
    from fedrs.methods.base import FitOptions

    cfg = RunConfig().replace(**{"client.lr": 0.1, "client.local_epochs": 3, "federation.seed": 7})
    prox = make_strategy("fedprox", mu=0.5, global_keys=("a", "b"), prompt_keys=())
    opts = FitOptions.from_config(cfg, 4, 11, prox)
    assert (opts.round, opts.client_id, opts.seed, opts.epochs, opts.lr) == (4, 11, 7, 3, 0.1)
    assert opts.proximal_mu == 0.5 and set(opts.upload_keys) == {"a", "b"}
    plain = FitOptions.from_config(cfg, 1, 0)
    assert plain.proximal_mu == 0.0 and plain.upload_keys == ()


def test_a_collapsed_round_is_named_in_the_record_and_the_round_line() -> None:
    from fedrs.core.metrics import collapse
    from fedrs.orchestrator.runner import _progress_line

    one = {"accuracy": 0.574, "per_class_accuracy": [1.0, 0.0, 0.0, None], "kappa": 0.02}
    assert collapse(one) == "one class predicted: 1 of 3 classes recognised"
    chance = {"accuracy": 0.5, "per_class_accuracy": [0.6, 0.4], "kappa": -0.01}
    assert collapse(chance) == "kappa -0.010: agreement no better than chance"
    fine = {"accuracy": 0.8, "per_class_accuracy": [0.9, 0.7], "kappa": 0.6}
    assert collapse(fine) is None and collapse({"accuracy": 0.5}) is None
    line = _progress_line(
        {"round": 3, **one, "balanced_accuracy": 0.33, "collapsed": collapse(one)}, 10
    )
    assert "acc 0.574" in line and "AA 0.330" in line and "kappa 0.020" in line
    assert "collapsed: one class predicted" in line


def test_the_multimodal_keys_live_in_their_own_table(tmp_path: Path) -> None:
    """data.modal.* (fedrs/core/modal.py) validate there, dump as [data.modal], load back, and
    hash flat so that results stored under data.patch_size keep their config_sha."""
    from fedrs.core.config import to_toml
    from fedrs.errors import ConfigError
    from fedrs.orchestrator.sweep.store import config_sha

    cfg = from_dict({}, ["data.modal.patch_size=5", "data.modal.client_modalities=hsi,lidar"])
    assert cfg.data.modal.groups() == (("hsi",), ("lidar",))
    assert not hasattr(cfg.data, "patch_size")  # not among the keys every dataset shares
    dumped = tmp_path / "c.toml"
    dumped.write_text(to_toml(cfg))
    assert "[data.modal]\npatch_size = 5\n" in dumped.read_text()
    assert load_config(dumped) == cfg
    with pytest.raises(ConfigError, match=r"data\.modal\.patch_size must be an odd number"):
        from_dict({}, ["data.modal.patch_size=4"])
    with pytest.raises(ConfigError, match=r"data\.modal\.client_modalities 'hsi,,lidar'"):
        from_dict({}, ["data.modal.client_modalities=hsi,,lidar"])
    with pytest.raises(ConfigError, match=r"unknown config key 'data\.patch_size'"):
        from_dict({}, ["data.patch_size=5"])
    # rows stored before the table existed (data.patch_size) keep their hashes
    import csv

    from fedrs.orchestrator.sweep.spec import expand, load_sweep

    sweeps = Path(__file__).parents[1] / "benchmarks" / "sweeps"
    stored = {
        r["trial"]: r["config_sha"]
        for r in csv.DictReader((sweeps / "fedrsclip_study.results.csv").open())
    }
    trials = expand(load_sweep(sweeps / "fedrsclip_study.toml"))[:4]
    assert [stored[t.name] for t in trials] == [config_sha(t.cfg) for t in trials]
    # so do rows stored before [secagg] existed; set, it counts
    secure = trials[0].cfg.replace(**{"secagg.enabled": True})
    assert config_sha(secure) != config_sha(trials[0].cfg)


def test_local_steps_clip_the_gradient_norm_when_asked() -> None:
    """``client.max_grad_norm``: plain SGD (no momentum, no decay) moves a tensor by at most
    lr x max_norm per step; off (0), a huge gradient moves it far."""
    import dataclasses

    import torch

    from fedrs.methods.base import FitOptions, local_sgd

    def moved(max_norm: float) -> float:
        w = torch.nn.Parameter(torch.zeros(4))

        def step(rows: np.ndarray) -> tuple[torch.Tensor, int]:
            return (w * 1000.0).sum(), 0  # gradient 1000 per entry: norm 2000

        sets = ["client.momentum=0", "client.weight_decay=0", "client.lr=0.1"]
        cfg = from_dict({}, [*sets, f"client.max_grad_norm={max_norm}"])
        options = dataclasses.replace(FitOptions.from_config(cfg, 1, 0), epochs=1, batch_size=4)
        local_sgd({"w": w}, step, 12, options, ())  # 3 steps
        return float(w.detach().norm())

    assert moved(1.0) == pytest.approx(3 * 0.1 * 1.0, rel=1e-5)
    assert moved(0.0) == pytest.approx(3 * 0.1 * 2000.0, rel=1e-5)
    with pytest.raises(Exception, match="max_grad_norm must be >= 0"):
        from_dict({}, ["client.max_grad_norm=-1"])
