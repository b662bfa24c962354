"""The general method interface: methods' own options, evaluation partials combined by the
method (headline metric), the ported methods unchanged, and PE-RSITR on caption shards."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console

from conftest import make_caption_dataset, small_run
from fedrs.core.config import RunConfig, from_dict
from fedrs.datasets.manifest import FedDataset
from fedrs.datasets.partition import PartitionSpec
from fedrs.errors import ConfigError
from fedrs.methods import method_class
from fedrs.methods.base import FitOptions, MethodServer, Params
from fedrs.methods.promptfl import PromptFL

# Final tensors of a short seeded local fit (2 epochs, batch 8, client 1 of a 2-client IID
# synthetic build at 32 px, 4 scenes per class), computed with the code before the interface
# was generalised (commit b8a08c3): |sum|, first and last entry of the first tensors, private
# |sum|, train loss, and the test split's (correct, loss sum). The port must reproduce them.
PINNED = {
    "promptfl": {
        "params": {"prompt.ctx": [9.478554725646973, -0.017912482842803, 0.03434983640909195]},
        "private": {},
        "loss": 2.287693802515666,
        "correct": 3.0,
        "loss_sum": 68.88256072998047,
    },
    "fedrsclip": {
        "params": {
            "prompt.shared_ctx": [7.648533821105957, 0.009114768356084824, 0.04002558812499046]
        },
        "private": {"prompt.private_ctx": 8.891929626464844, "prompt.visual": 3.868013858795166},
        "loss": 5.630798594156901,
        "correct": 3.0,
        "loss_sum": 68.93218994140625,
    },
    "fullft": {
        "params": {
            "ln_final.bias": [0.004107318352907896, 7.850504334783182e-05, 1.88144767889753e-05],
            "ln_final.weight": [63.99907684326172, 1.0002455711364746, 0.999914288520813],
            "logit_scale": [2.65594482421875, 2.65594482421875, 2.65594482421875],
            "positional_embedding": [
                16.739213943481445,
                -0.007807644549757242,
                0.012385830283164978,
            ],
        },
        "private": {},
        "loss": 2.2361111481984457,
        "correct": 2.0,
        "loss_sum": 66.52123260498047,
    },
}
SETS = {"promptfl": {}, "fedrsclip": {"strategy.name": "prompt_avg"}, "fullft": {"client.lr": 1e-3}}


@pytest.fixture(scope="module")
def pin_data(tmp_path_factory: pytest.TempPathFactory) -> FedDataset:
    from fedrs.datasets.synth import build_synthetic

    out = tmp_path_factory.mktemp("pin") / "d"
    build_synthetic(
        out,
        per_class=4,
        image_size=32,
        partition=PartitionSpec(scheme="iid", num_clients=2, min_examples=2),
    )
    return FedDataset(out)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_ported_methods_reproduce_the_pinned_tensors(pin_data: FedDataset, name: str) -> None:
    cfg = RunConfig().replace(**{"method.name": name, **SETS[name]})
    method = method_class(name)(cfg, pin_data.classes)
    start = method.init_global(0)
    opts = FitOptions(
        round=1,
        client_id=1,
        seed=0,
        epochs=2,
        batch_size=8,
        lr=cfg.client.lr,
        momentum=0.9,
        weight_decay=5e-4,
        upload_keys=tuple(start),
    )
    fit = method.fit(start, method.init_private(1, 0), pin_data.client(1), opts)
    pin = PINNED[name]
    for key, (total, first, last) in pin["params"].items():
        v = fit.params[key].ravel()
        np.testing.assert_allclose([np.abs(v).sum(), v[0], v[-1]], [total, first, last], rtol=1e-4)
    got_private = {k: float(np.abs(v).sum()) for k, v in fit.private.items()}
    assert got_private == pytest.approx(pin["private"], rel=1e-4)
    assert fit.metrics["train_loss"] == pytest.approx(pin["loss"], rel=1e-4)
    test = pin_data.test_shard()
    partial = method.evaluate_rows(fit.params, {}, test, 0, len(test))
    assert partial["correct"] == pin["correct"]
    assert partial["loss_sum"] == pytest.approx(pin["loss_sum"], rel=1e-4)
    metrics = method.reduce_eval([partial])
    assert metrics["accuracy"] == pytest.approx(pin["correct"] / len(test))


def test_each_method_owns_its_validated_options() -> None:
    cfg = RunConfig().replace(**{"method.name": "fedrsclip", "method.lambda_dpa": 0.25})
    assert cfg.method.options.lambda_dpa == 0.25 and cfg.method.options.n_vis == 4
    flat = cfg.to_dict()["method"]
    assert flat["name"] == "fedrsclip" and flat["lambda_dpa"] == 0.25  # config.json: flat keys
    assert from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"'method.lambda_dpa': method 'promptfl' has the opt"):
        RunConfig().replace(**{"method.lambda_dpa": 0.5})
    with pytest.raises(ConfigError, match=r"method\.n_vis must be >= 1"):
        cfg.replace(**{"method.n_vis": 0})
    with pytest.raises(ConfigError, match=r"unknown method\.name 'nope'"):
        RunConfig().replace(**{"method.name": "nope"})
    # switching methods: options at their defaults do not follow, changed ones must fit
    assert RunConfig().replace(**{"method.name": "zeroshot"}).method.options.template
    with pytest.raises(ConfigError, match=r"'method\.lambda_dpa': method 'zeroshot'"):
        cfg.replace(**{"method.name": "zeroshot"})
    assert not hasattr(RunConfig().replace(**{"method.name": "zeroshot"}).method.options, "n_ctx")
    with pytest.raises(AttributeError):  # one typed way to read options: method.options.X
        _ = RunConfig().method.n_ctx


def _caption_build(root: Path, clients: int = 2) -> FedDataset:
    from fedrs.datasets.builder import BuildSpec, build

    src = make_caption_dataset(root / "src", n=30, n_test=6)
    spec = BuildSpec.from_args(
        [f"cap={src}"],
        str(root / "data"),
        partition=PartitionSpec(scheme="iid", num_clients=clients, min_examples=1),
        test_fraction=0.2,
        image_size=32,
    )
    return build(spec)


def _retrieval_cfg(data: Path, name: str, **sets: Any) -> RunConfig:
    base = {
        "method.name": name,
        "federation.clients_per_round": 2,
        "client.lr": 0.05,
        "client.batch_size": 8,
    }
    return small_run(data, **{**base, **sets})


def _pe_cfg(data: Path, **sets: Any) -> RunConfig:
    return _retrieval_cfg(data, "pe_rsitr", **{"method.bottleneck": 16, **sets})


def test_pe_rsitr_trains_only_the_adapter_and_gathers_evaluation(tmp_path: Path) -> None:
    ds = FedDataset(_caption_build(tmp_path).root)
    cfg = _pe_cfg(ds.root)
    method = method_class("pe_rsitr")(cfg, ds.classes)
    start = method.init_global(0)
    assert sum(v.size for v in start.values()) == sum(
        p.numel() for p in method.model.adapter.parameters()
    )
    assert all(k.startswith("adapter.") for k in start)
    opts = FitOptions.from_config(cfg, 1, 0)
    fit = method.fit(start, {}, ds.client(0), opts)
    assert set(fit.params) == set(start)
    moved = sum(float(np.abs(fit.params[k] - start[k]).sum()) for k in start)
    assert moved > 0 and {"l_cm", "l_v", "l_t"} <= set(fit.metrics)
    test = ds.test_shard()
    whole = method.reduce_eval([method.evaluate_rows(fit.params, {}, test, 0, len(test))])
    parts = [
        method.evaluate_rows(fit.params, {}, test, s, min(s + 2, len(test))) for s in (0, 2, 4)
    ]
    assert method.reduce_eval(parts) == pytest.approx(whole)  # gathered = evaluated in one go
    assert set(whole) == {
        "i2t_r1",
        "i2t_r5",
        "i2t_r10",
        "t2i_r1",
        "t2i_r5",
        "t2i_r10",
        "mR",
        "n_images",
    }
    assert whole["n_images"] == len(test) == 6
    # with 6 images, a caption's image is always among the top 10 images
    assert whole["t2i_r10"] == 100.0


def test_pe_rsitr_dry_run_counts_the_paper_adapter(tmp_path: Path) -> None:
    from fedrs.orchestrator.plan import plan

    # retrieval plans need captions; 8 registered clients over the build's 2 partitions
    caps = {"data.path": str(_caption_build(tmp_path).root), "federation.num_clients": 8}
    p = plan(RunConfig().replace(**{"method.name": "pe_rsitr", "model.arch": "ViT-B-32", **caps}))
    assert p["trainable_params"] == p["params_sent_per_client"] == 161_088
    tiny = {"method.name": "pe_rsitr", **caps}  # fedrs-tiny: 64 wide
    with pytest.raises(ConfigError, match=r"bottleneck=64 must be below the encoders' widths"):
        plan(RunConfig().replace(**tiny, **{"method.bottleneck": 64}))
    # the default bottleneck (0) fits the backbone: min(64, narrower width // 2) = 32 here
    assert plan(RunConfig().replace(**tiny))["trainable_params"] < p["trainable_params"]


@pytest.mark.usefixtures("ray_cluster")
def test_pe_rsitr_federated_run_reports_retrieval(tmp_path: Path) -> None:
    from fedrs.orchestrator.runner import run

    ds = _caption_build(tmp_path, clients=2)
    out = io.StringIO()
    summary = run(_pe_cfg(ds.root), out=str(tmp_path / "r"), console=Console(file=out, width=300))
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    for r in records:
        assert {"i2t_r1", "t2i_r10", "mR", "personalized_mR"} <= set(r)
        assert 0 <= r["mR"] <= 100 and r["n_images"] == 6
    assert summary["headline"] == "mR" and summary["best_mR"] == max(r["mR"] for r in records)
    assert "mR " in out.getvalue() and "done: mR" in out.getvalue()
    # the curve is named by the metric it plots
    assert (tmp_path / "r" / "mR.png").is_file() and not (tmp_path / "r" / "accuracy.png").exists()
    n = sum(v.size for v in method_class("pe_rsitr")(_pe_cfg(ds.root), []).init_global(0).values())
    assert summary["totals"]["bytes_up"] == 2 * 2 * n * 4  # 2 rounds x 2 clients, float32


# ------------------------------------------------------------------ what travels, server side
def travel_method() -> type:
    """Defined in a function: Ray ships such classes by value to its workers."""

    class TravelServer(MethodServer):
        """A stateful torch step every round: a momentum of the averaged context, sent back down
        in a tensor only the server writes; it also sums the clients' extra payloads."""

        def __init__(self, cfg: RunConfig, classes: list[str], device: str = "cpu") -> None:
            super().__init__(cfg, classes, device)
            self.momentum: torch.Tensor | None = None
            self.seen = 0.0

        def update(self, round: int, params: Params, updates: list[Any]) -> Params:
            ctx = torch.from_numpy(params["prompt.ctx"]).to(self.device)
            self.momentum = ctx if self.momentum is None else 0.9 * self.momentum + ctx
            self.seen += float(sum(u.extras["stats/n"][0] for u in updates))
            return {**params, "server.bias": self.momentum.cpu().numpy()}

        def state_dict(self) -> Params:
            if self.momentum is None:
                return {}
            return {"momentum": self.momentum.cpu().numpy(), "seen": np.array([self.seen])}

        def load_state_dict(self, state: Params) -> None:
            if state:
                self.momentum = torch.from_numpy(state["momentum"]).to(self.device)
                self.seen = float(state["seen"][0])

    class Travel(PromptFL):
        """PromptFL plus: a server-only tensor, a branch only odd clients upload, a tensor no
        client uploads (frozen: sent once per client), an extra payload (client 3's is not
        finite in round 1), and ``TravelServer``."""

        download_only = ("server.bias",)
        extra_keys = ("stats/",)
        Server = TravelServer

        def init_global(self, seed: int) -> Params:
            g = super().init_global(seed)
            return {
                **g,
                "server.bias": np.zeros_like(g["prompt.ctx"]),
                "branch.b": np.zeros(3, "f4"),
                "frozen.w": np.arange(5, dtype="f4"),
            }

        @classmethod
        def upload_keys_for(cls, cfg: Any, client: dict[str, Any], round: int) -> tuple[str, ...]:
            return ("prompt.ctx", "branch.b") if client["id"] % 2 else ("prompt.ctx",)

        def fit(self, global_params: Params, private: Params, shard: Any, options: Any) -> Any:
            out = super().fit(global_params, private, shard, options)
            if "branch.b" in options.upload_keys:
                out.params["branch.b"] = global_params["branch.b"] + 1.0
            n = np.nan if (options.client_id, options.round) == (3, 1) else float(len(shard))
            out.extras = {"stats/n": np.array([n])}
            out.metrics["got_bias"] = float(np.abs(global_params["server.bias"]).sum())
            out.metrics["got_frozen"] = float(
                np.array_equal(global_params["frozen.w"], np.arange(5))
            )
            return out

    return Travel


@pytest.mark.usefixtures("ray_cluster")
def test_server_state_group_uploads_and_extras(synth_data: Path, tmp_path: Path) -> None:
    from fedrs.orchestrator import checkpoint
    from fedrs.orchestrator.runner import run

    cfg = small_run(synth_data, **{"federation.rounds": 3, "resources.server_num_cpus": 0.5})
    quiet = Console(file=io.StringIO())
    Travel = travel_method()
    run(cfg, out=str(tmp_path / "full"), method_cls=Travel, console=quiet)
    run(cfg, out=str(tmp_path / "cut"), method_cls=Travel, console=quiet, stop_after=1)
    run(resume=str(tmp_path / "cut"), method_cls=Travel, console=quiet)
    rnd, full, server = checkpoint.load(tmp_path / "full")
    _, cut, cut_server = checkpoint.load(tmp_path / "cut")
    assert rnd == 3 and set(full) == {"prompt.ctx", "server.bias", "branch.b", "frozen.w"}
    for key in full:  # resumed = uninterrupted, the server's torch state included
        np.testing.assert_allclose(cut[key], full[key], rtol=0, atol=1e-6)
    np.testing.assert_allclose(cut_server["momentum"], server["momentum"], atol=1e-6)
    np.testing.assert_allclose(full["server.bias"], server["momentum"])
    np.testing.assert_array_equal(full["branch.b"], np.full(3, 3.0))  # odd clients only, +1/round
    m = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert m[0]["clients_rejected"] == 1 and "non-finite" in m[0]["failures"]["3"]
    assert m[1]["clients_rejected"] == 0
    sizes = {
        c: json.loads((synth_data / "manifest.json").read_text())["clients"][c]["num_examples"]
        for c in range(6)
    }
    assert server["seen"][0] == 3 * sum(sizes.values()) - sizes[3]  # the NaN one was rejected
    ctx, branch, frozen, extra = 4 * 64 * 4, 3 * 4, 5 * 4, 8
    assert m[0]["bytes_up"] == 6 * (ctx + extra) + 3 * branch  # sent bytes, rejected included
    assert m[0]["bytes_down"] == 6 * (2 * ctx + branch + frozen)  # every global tensor goes down
    # later rounds: the unchanged tensor is held by every client (all 6 sampled each round)
    assert [r["bytes_down"] for r in m[1:]] == [6 * (2 * ctx + branch)] * 2
    assert m[0]["clients"]["0"]["got_bias"] == 0 and m[1]["clients"]["0"]["got_bias"] > 0
    assert all(c["got_frozen"] == 1.0 for r in m for c in r["clients"].values())
    # the unchanged tensor's object: fetched once per actor (2), then resident on it
    assert "resting_fetched" not in m[0] and 1 <= m[1]["resting_fetched"] <= 2
    assert m[1]["resting_fetched"] + m[1]["resting_resident"] == 6
    assert m[2].get("resting_fetched", 0) == 0 and m[2]["resting_resident"] == 6
    resumed = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["bytes_down"] for r in resumed] == [r["bytes_down"] for r in m]  # holdings resumed


@pytest.mark.parametrize(
    ("name", "sets"),
    [
        ("retrieval_coop", {}),
        ("retrieval_fullft", {"client.lr": 1e-3}),
        ("retrieval_adaptformer", {"method.bottleneck": 8}),
        ("pe_rsitr", {"method.lambda_views": 0.0}),  # the L_cm-only ablation
    ],
)
def test_retrieval_baselines_train_what_they_declare(
    tmp_path: Path, name: str, sets: dict[str, Any]
) -> None:
    from fedrs.models.backbone import load_backbone, model_config

    ds = FedDataset(_caption_build(tmp_path).root)
    cfg = _pe_cfg(ds.root, **sets) if name == "pe_rsitr" else _retrieval_cfg(ds.root, name, **sets)
    cls = method_class(name)
    shapes = cls.tensor_shapes(cfg, model_config(cfg.model.arch), 0)["global"]
    method = cls(cfg, ds.classes)
    start = method.init_global(0)
    assert {k: v.shape for k, v in start.items()} == shapes  # --dry-run counts what travels
    frozen = {k: v.clone() for k, v in load_backbone("fedrs-tiny").model.state_dict().items()}
    fit = method.fit(start, {}, ds.client(0), FitOptions.from_config(cfg, 1, 0))
    assert set(fit.params) == set(start)
    assert sum(float(np.abs(fit.params[k] - start[k]).sum()) for k in start) > 0
    after = load_backbone("fedrs-tiny").model.state_dict()
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)  # the resident model untouched
    test = ds.test_shard()
    whole = method.reduce_eval([method.evaluate_rows(fit.params, {}, test, 0, len(test))])
    parts = [method.evaluate_rows(fit.params, {}, test, s, s + 3) for s in (0, 3)]
    assert method.reduce_eval(parts) == pytest.approx(whole)
    if name == "pe_rsitr":
        assert set(fit.metrics) >= {"l_cm"} and "l_v" not in fit.metrics


def test_adaptformer_starts_as_the_frozen_model_and_zero_shot_is_frozen(tmp_path: Path) -> None:
    ds = FedDataset(_caption_build(tmp_path).root)
    test = ds.test_shard()
    zero = method_class("retrieval_zeroshot")(
        _retrieval_cfg(ds.root, "retrieval_zeroshot"), ds.classes
    )
    assert not zero.trains and zero.init_global(0) == {}
    cfg = _pe_cfg(ds.root).replace(
        **{"method.name": "retrieval_adaptformer", "method.bottleneck": 8}
    )
    ada = method_class("retrieval_adaptformer")(cfg, ds.classes)
    a = ada.evaluate_rows(ada.init_global(0), {}, test, 0, len(test))
    z = zero.evaluate_rows({}, {}, test, 0, len(test))
    np.testing.assert_allclose(a["image_emb"], z["image_emb"], atol=1e-5)
    np.testing.assert_allclose(a["text_emb"], z["text_emb"], atol=1e-5)


def test_retrieval_dry_run_counts(tmp_path: Path) -> None:
    from fedrs.orchestrator.plan import plan

    caps = str(_caption_build(tmp_path).root)

    def sent(name: str, **sets: Any) -> int:
        base = {"method.name": name, "model.arch": "ViT-B-32", "data.path": caps}
        base["federation.num_clients"] = 8  # over the build's 2 partitions
        cfg = RunConfig().replace(**{**base, **sets})
        return plan(cfg)["params_sent_per_client"]

    block = lambda w: 2 * w * 64 + 64 + w  # noqa: E731  down + up (with biases)
    assert sent("retrieval_adaptformer") == 12 * block(512) + 12 * block(768) == 1_982_976
    assert sent("retrieval_coop") == 4 * 512
    assert sent("retrieval_zeroshot") == 0
    assert sent("pe_rsitr") == 161_088


@pytest.mark.usefixtures("ray_cluster")
def test_retrieval_benchmark_is_resumable_and_reports_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fedrs bench retrieval` at toy size: builds, runs, aggregates over seeds; a second call
    reads the finished runs back instead of training again."""
    from conftest import make_imagefolder
    from fedrs.benchmarks import retrieval

    captions = make_caption_dataset(tmp_path / "cap", n=30, n_test=6)
    classes = tmp_path / "classes"
    for i in range(30):  # the class folder whose sorted order numbers the caption images
        (classes / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
    for c in range(3):
        for j in range(10):
            (classes / f"c{c}" / f"{j:02d}.jpg").write_bytes(b"")
    make_imagefolder(tmp_path / "pre", {"a": 4})
    kwargs = dict(
        data=str(captions),
        pretrain_data=str(tmp_path / "pre"),
        class_folder=str(classes),
        cache=str(tmp_path / "cache"),
        seeds=[0, 1],
        rounds=1,
        local_epochs=1,
        num_clients=2,
        methods=["zeroshot", "mrs_hmmc"],
        settings=["federated"],
        arch="fedrs-tiny",
        bottleneck=8,
    )
    first = retrieval.run(**kwargs)
    rows = {r["key"]: r for r in first["rows"]}
    assert set(rows) == {"zeroshot", "mrs_hmmc"} and all(r["seeds"] == 2 for r in rows.values())
    assert rows["zeroshot"]["mR_std"] == 0.0  # nothing trains: the same every seed
    assert rows["mrs_hmmc"]["paper_mR"] == 55.71
    assert len(first["runs"]) == 4 and "federated" in first["ordering"]
    builds = list((tmp_path / "cache").glob("captions-*/manifest.json"))
    assert builds and all(
        json.loads(b.read_text())["classes"] == ["c0", "c1", "c2"] for b in builds
    )
    from fedrs.orchestrator import runner

    def no_training(*args: Any, **kw: Any) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(runner, "run", no_training)
    again = retrieval.run(**kwargs)
    assert again["rows"] == first["rows"]
    assert "| MRS-Adapter + HMMC (PE-RSITR) | federated |" in retrieval.markdown(again)


def test_dry_run_counts_download_only_tensors_and_extras() -> None:
    from fedrs.orchestrator.plan import plan

    class Planned(PromptFL):
        download_only = ("server.bias",)

        @classmethod
        def tensor_shapes(cls, cfg: Any, model_cfg: Any, num_classes: int) -> Any:
            ctx = super().tensor_shapes(cfg, model_cfg, num_classes)["global"]
            return {
                "global": {**ctx, "server.bias": (4, 64)},
                "private": {},
                "extras": {"stats/n": (1,)},
            }

    p = plan(RunConfig(), method_cls=Planned)
    assert p["params_sent_per_client"] == 4 * 64 + 1  # the context and the extra, not the bias
    assert p["params_received_per_client"] == 2 * 4 * 64  # every global tensor goes down
    assert p["trainable_params"] == 4 * 64
    assert p["tensors"]["extras"] == {"stats/n": [1]}
