"""FedDiff and multi-modal pixel data: patches, the spatial split, the DDPM, FR fusion, the
low-rank module, who sends what, and resuming between and within stages."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console

from fedrs.datasets.manifest import FedDataset
from fedrs.datasets.multimodal import (
    ModalBuildSpec,
    build_scene,
    build_synthetic_scene,
    extract_patches,
    parse_client_modalities,
)
from fedrs.datasets.partition import PartitionSpec
from fedrs.methods.base import batched_eval, cohen_kappa
from fedrs.methods.feddiff import (
    FedDiff,
    compressible,
    decode_lowrank,
    encode_upload,
    fused_loss,
)
from fedrs.models.feddiff import DDPM, FR, FusionHead, UNet


def _scene(tmp: Path, name: str = "scene", **kw: Any) -> FedDataset:
    spec = ModalBuildSpec(
        out=str(tmp / name),
        partition=PartitionSpec(
            kw.pop("scheme", "spatial"), kw.pop("clients", 4), 0, min_examples=5
        ),
        patch={"*": kw.pop("patch", 5)},
        client_modalities=parse_client_modalities(kw.pop("groups", "hsi+lidar")),
    )
    return build_synthetic_scene(spec, **{"height": 32, "width": 32, **kw})


# ---------------------------------------------------------------------------------- data
def test_patches_reflect_at_borders() -> None:
    cube = np.arange(4 * 5 * 2, dtype=np.float32).reshape(4, 5, 2)
    p = extract_patches(cube, np.array([0, 3]), np.array([0, 4]), 3)
    assert p.shape == (2, 2, 3, 3)
    # corner (0, 0): reflect padding mirrors row 1 / column 1 (numpy "reflect", no edge repeat)
    expect = cube[[1, 0, 1]][:, [1, 0, 1]]  # rows -1,0,1 -> 1,0,1; same for columns
    np.testing.assert_array_equal(p[0].transpose(1, 2, 0), expect)
    expect = cube[[2, 3, 2]][:, [3, 4, 3]]  # corner (3, 4)
    np.testing.assert_array_equal(p[1].transpose(1, 2, 0), expect)
    assert (p[:, :, 1, 1] == cube[[0, 3], [0, 4]]).all()  # the centre is the pixel


def test_test_split_is_spatially_disjoint_and_normalised_on_train_only(tmp_path: Path) -> None:
    k = 5
    ds = _scene(tmp_path, patch=k)
    test = ds.test_shard()
    train = [ds.client(c) for c in range(ds.num_clients)]
    tr = np.concatenate([s.arrays["coords"] for s in train]).astype(int)
    te = test.arrays["coords"].astype(int)
    cheb = np.abs(tr[:, None, :] - te[None, :, :]).max(-1)
    assert cheb.min() >= k  # k x k windows of train and test pixels never overlap
    assert ds.manifest["counts"]["dropped_near_test"] > 0
    # bands standardised with the training pixels' statistics only
    centres = np.concatenate([s.arrays["hsi"][:, :, k // 2, k // 2] for s in train])
    np.testing.assert_allclose(centres.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(centres.std(0), 1, atol=1e-3)
    # spatial clients are disjoint rectangles
    boxes = [(s.arrays["coords"].min(0), s.arrays["coords"].max(0)) for s in train]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            (a0, a1), (b0, b1) = boxes[i], boxes[j]
            assert (a1 < b0).any() or (b1 < a0).any()


def test_test_pixels_do_not_leak_into_training(tmp_path: Path) -> None:
    """Changing the scene at test pixels changes no training array."""
    rng = np.random.default_rng(0)
    hsi, lidar = rng.normal(size=(24, 24, 6)), rng.normal(size=(24, 24, 1))
    gt = rng.integers(1, 4, size=(24, 24))
    spec = ModalBuildSpec(
        out=str(tmp_path / "a"),
        partition=PartitionSpec("iid", 2, 0, min_examples=5),
        patch={"*": 3},
    )
    a = build_scene({"hsi": hsi, "lidar": lidar}, gt, spec)
    te = a.test_shard().arrays["coords"].astype(int)
    hsi2 = hsi.copy()
    hsi2[te[:, 0], te[:, 1]] += 100.0
    b = build_scene(
        {"hsi": hsi2, "lidar": lidar},
        gt,
        ModalBuildSpec(**{**spec.__dict__, "out": str(tmp_path / "b")}),
    )
    for c in range(2):
        np.testing.assert_array_equal(a.client(c).arrays["hsi"], b.client(c).arrays["hsi"])


def test_split_modality_clients_hold_one_modality(tmp_path: Path) -> None:
    ds = _scene(tmp_path, groups="hsi,lidar")
    assert [ds.client(c).modalities for c in range(4)] == [
        ["coords", "hsi"],
        ["coords", "lidar"],
        ["coords", "hsi"],
        ["coords", "lidar"],
    ]
    assert ds.client_test(1).modalities == ["coords", "lidar"]
    assert ds.test_shard().modalities == ["coords", "hsi", "lidar"]
    assert ds.manifest["clients"][0]["modalities"] == ["hsi"]


def test_synthetic_scene_is_deterministic(tmp_path: Path) -> None:
    a, b = _scene(tmp_path, "a"), _scene(tmp_path, "b")
    assert a.manifest["test"]["sha256"] == b.manifest["test"]["sha256"]


# ---------------------------------------------------------------------------------- model
def test_ddpm_schedule_and_one_step_by_hand() -> None:
    d = DDPM(500)
    assert math.isclose(float(d.betas[0]), 1e-4) and math.isclose(float(d.betas[-1]), 0.02)
    t = 3
    betas = [1e-4 + i * (0.02 - 1e-4) / 499 for i in range(4)]
    ab = math.prod(1 - b for b in betas)
    assert math.isclose(float(d.alpha_bar[t]), ab, rel_tol=1e-12)
    x0, eps = torch.tensor([[2.0]]), torch.tensor([[0.5]])
    xt = d.q_sample(x0, torch.tensor([t]), eps)
    assert math.isclose(float(xt), math.sqrt(ab) * 2 + math.sqrt(1 - ab) * 0.5, rel_tol=1e-6)
    z = torch.tensor([[-1.0]])
    prev = d.step(xt, t, eps, z)
    mean = (float(xt) - betas[t] / math.sqrt(1 - ab) * 0.5) / math.sqrt(1 - betas[t])
    assert math.isclose(float(prev), mean + math.sqrt(betas[t]) * -1.0, rel_tol=1e-6)
    assert math.isclose(
        float(d.step(xt, 0, eps, z)),
        (float(xt) - 1e-4 / math.sqrt(1 - float(d.alpha_bar[0])) * 0.5) / math.sqrt(1 - 1e-4),
        rel_tol=1e-6,
    )


def test_unet_shapes_and_features() -> None:
    u = UNet(bands=5, width=8)
    x, t = torch.randn(3, 5, 8, 8), torch.tensor([0, 10, 499])
    assert u(x, t).shape == (3, 5, 8, 8)
    assert u(x, t, features=True).shape == (3, u.feature_dim)


def test_fr_fusion_by_hand_and_head_shapes() -> None:
    fr = FR(2)
    with torch.no_grad():
        fr.conv_r.weight.zero_(), fr.conv_r.bias.zero_()  # sigmoid(0) = 0.5
        fr.conv_c.weight.zero_(), fr.conv_c.bias.fill_(100.0)  # sigmoid(100) = 1
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[4.0, 8.0]])
    torch.testing.assert_close(fr(a, b), a + 0.5 * b + a + 1.0 * b)
    head = FusionHead(num_classes=3, dim=16)
    out = head(torch.randn(4, 16), torch.randn(4, 16))
    assert len(out) == 3 and all(o.shape == (4, 3) for o in out)
    assert all(float(o.detach().abs().sum()) == 0 for o in out)  # logit heads start at zero


def test_fused_loss_and_kappa_by_hand() -> None:
    y = torch.tensor([0, 1])
    a = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    ce = (torch.nn.functional.cross_entropy(a, y) + torch.nn.functional.cross_entropy(b, y)) / 2
    mse = (((a - b) / 2) ** 2).mean()  # each head against the mean: +-(a - b) / 2
    torch.testing.assert_close(fused_loss([a, b], 2, y, 0.5), ce + 0.5 * mse)
    torch.testing.assert_close(fused_loss([a, b], 0, y, 0.5), ce)
    # confusion [[20, 5], [10, 15]] (true by row): 35 correct, 25 / 25 true, 30 / 20 predicted
    po, pe = 35 / 50, (30 * 25 + 20 * 25) / 2500
    assert math.isclose(cohen_kappa(35, [25, 25], [30, 20]), (po - pe) / (1 - pe))
    # the counts come from the shared evaluation: a model that always says class 1
    labels = np.array([0] * 25 + [1] * 25)
    always_1 = batched_eval(lambda r: torch.tensor([[0.0, 1.0]] * len(r)), labels, labels, 8)
    assert list(always_1["class_pred"]) == [0, 50] and list(always_1["class_n"]) == [25, 25]
    kappa = cohen_kappa(always_1["correct"], always_1["class_n"], always_1["class_pred"])
    assert always_1["correct"] == 25 and kappa == 0.0  # accuracy 0.5, agreement by chance


def test_low_rank_exchange_restores_and_counts() -> None:
    rng = np.random.default_rng(0)
    received = {"w": rng.normal(size=(16, 4, 3, 3)).astype(np.float32), "b": np.zeros(16, "f4")}
    delta = (rng.normal(size=(16, 2)) @ rng.normal(size=(2, 36))).reshape(16, 4, 3, 3)
    local = {"w": received["w"] + delta.astype(np.float32), "b": np.ones(16, "f4")}
    params, extras = encode_upload(local, received, rank=2)
    assert set(params) == {"b"} and set(extras) == {"lowrank/w/u", "lowrank/w/v"}
    assert extras["lowrank/w/u"].shape == (16, 2) and extras["lowrank/w/v"].shape == (2, 36)
    sent = sum(v.nbytes for v in (*params.values(), *extras.values()))
    assert sent == 4 * (16 + 2 * (16 + 36))  # bias + rank x (out + in)
    restored, rest = decode_lowrank(received, params, extras)
    assert rest == {}
    np.testing.assert_allclose(restored["w"], local["w"], atol=1e-4)  # rank-2 update: exact
    assert not compressible((16,), 2) and not compressible((4, 4), 2) and compressible((16, 36), 2)
    bad = {**extras, "lowrank/w/v": extras["lowrank/w/v"][:, :5]}
    with pytest.raises(ValueError, match="do not"):
        decode_lowrank(received, params, bad)


def test_groups_keep_modalities_apart() -> None:
    from fedrs.core.config import RunConfig

    cfg = RunConfig().replace(**{"method.name": "feddiff", "method.diffusion_rounds": 2})
    hsi_only = {"id": 0, "modalities": ["hsi"]}
    for rnd in (1, 3):
        up = FedDiff.upload_keys_for(cfg, hsi_only, rnd)
        down = FedDiff.download_keys_for(cfg, hsi_only, rnd)
        for name in ("unet_lidar.inc.weight", "clf_lidar.head.weight", "fuse.p12.weight"):
            assert name not in up and name not in down
    assert "unet_hsi.inc.weight" in FedDiff.upload_keys_for(cfg, hsi_only, 1)
    assert "unet_hsi.inc.weight" not in FedDiff.upload_keys_for(cfg, hsi_only, 3)  # frozen
    assert "unet_hsi.inc.weight" in FedDiff.download_keys_for(cfg, hsi_only, 3)  # features
    paired = {"id": 1, "modalities": ["hsi", "lidar"]}
    assert "fuse.p12.weight" in FedDiff.upload_keys_for(cfg, paired, 3)


# ---------------------------------------------------------------------------------- runs
def _tiny(data: Path, **sets: Any) -> Any:
    from fedrs.core.config import RunConfig

    base = {
        "method.name": "feddiff",
        "data.path": str(data),
        "method.unet_width": 8,
        "method.diffusion_steps": 50,
        "method.feature_timesteps": "5,20",
        "method.diffusion_rounds": 2,
        "federation.rounds": 4,
        "federation.clients_per_round": 4,
        "federation.eval_every": 2,
        "client.local_epochs": 1,
        "client.lr": 0.05,
        "resources.num_actors": 2,
    }
    return RunConfig().replace(**{**base, **sets})


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _by_hand(cfg: Any, run: Path) -> dict[str, Any]:
    """The final model's figures on the test split, from its predictions (checkpoint): OA,
    per-class accuracy, AA, kappa from the confusion matrix, and each head's OA."""
    from fedrs.orchestrator import checkpoint

    ds = FedDataset(cfg.data.path)
    test, (_, params, _) = ds.test_shard(), checkpoint.load(run)
    logits_of, _ = FedDiff(cfg, ds.classes)._predictor(params, test)
    with torch.no_grad():
        total, heads = logits_of(np.arange(len(test)))
    y, k = test.labels, len(ds.classes)
    conf = np.zeros((k, k))
    np.add.at(conf, (y, total.argmax(1).numpy()), 1)
    n, rows, cols = conf.sum(), conf.sum(1), conf.sum(0)
    po, pe = np.trace(conf) / n, (rows @ cols) / n**2
    per_class = [conf[c, c] / rows[c] if rows[c] else None for c in range(k)]
    return {
        "accuracy": po,
        "per_class_accuracy": per_class,
        "balanced_accuracy": np.mean([a for a in per_class if a is not None]),
        "kappa": (po - pe) / (1 - pe),
        **{f"accuracy_{v}": float((h.argmax(1).numpy() == y).mean()) for v, h in heads.items()},
    }


def _check(rec: dict[str, Any], want: dict[str, Any]) -> None:
    for key, value in want.items():
        assert rec[key] == pytest.approx(value, abs=1e-9), key


def watched() -> type[FedDiff]:
    """FedDiff that reports whether a client received or sent another modality's tensor
    (made in a function: Ray ships the class by value, the test module is not importable)."""

    class Watched(FedDiff):
        def fit(self, global_params: Any, private: Any, shard: Any, options: Any) -> Any:
            out = super().fit(global_params, private, shard, options)
            others = [m for m in self.opts.modalities if m not in shard.arrays]
            seen = list(global_params) + list(out.params) + list(out.extras)
            out.metrics["other_modality"] = float(any(m in k for k in seen for m in others))
            return out

    return Watched


@pytest.mark.usefixtures("ray_cluster")
def test_split_modality_run_never_exchanges_the_other_modality(tmp_path: Path) -> None:
    from fedrs.orchestrator.plan import plan
    from fedrs.orchestrator.runner import run

    ds = _scene(tmp_path, groups="hsi,lidar", patch=3)
    cfg = _tiny(ds.root, **{"method.rank": 2})
    run(cfg, out=str(tmp_path / "run"), method_cls=watched(), console=Console(file=io.StringIO()))
    m = _metrics(tmp_path / "run")
    for rec in m:
        assert rec["clients_rejected"] == 0 and rec["clients_ok"] == 4
        assert all(c["other_modality"] == 0.0 for c in rec["clients"].values())
    want = _by_hand(cfg, tmp_path / "run")
    assert set(want) >= {"accuracy_hsi", "accuracy_lidar", "accuracy_fused"}
    _check(m[-1], want)
    # the fusion heads, never trained here, stay at zero: their argmax is class 0 everywhere
    labels = ds.test_shard().labels
    assert m[-1]["accuracy_fused"] == pytest.approx(float(np.mean(labels == 0)), abs=1e-12)
    # each modality's head is evaluated on its own: not the whole model's figure
    assert m[-1]["accuracy_hsi"] != m[-1]["accuracy"] != m[-1]["accuracy_lidar"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["map"] == "map.png" and (tmp_path / "run" / "map.png").stat().st_size > 1000
    p = plan(cfg)  # --dry-run: the same bytes, round by round
    assert p["bytes_up_per_run"] == sum(r["bytes_up"] for r in m)
    assert p["bytes_down_per_run"] == sum(r["bytes_down"] for r in m)


@pytest.mark.usefixtures("ray_cluster")
def test_resume_between_and_within_stages_is_exact(tmp_path: Path) -> None:
    from fedrs.orchestrator import checkpoint
    from fedrs.orchestrator.runner import run

    ds = _scene(tmp_path, patch=3, clients=4)
    cfg = _tiny(ds.root)
    quiet = Console(file=io.StringIO())
    run(cfg, out=str(tmp_path / "full"), console=quiet)
    for cut in (2, 3):  # after the diffusion stage; inside the classifier stage
        out = tmp_path / f"cut{cut}"
        run(cfg, out=str(out), console=quiet, stop_after=cut)
        run(resume=str(out), console=quiet)
        _, a, _ = checkpoint.load(tmp_path / "full")
        _, b, _ = checkpoint.load(out)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    m = _metrics(tmp_path / "full")
    assert [r["clients"]["0"].get("stage") for r in m if "0" in r["clients"]][:1] == [1.0]
    # the final model's OA, per-class accuracy, AA, kappa and head OAs (this tiny model ends up
    # predicting one class, absent from the spatially held-out test split: all are 0 here)
    _check(m[-1], _by_hand(cfg, tmp_path / "full"))


def test_cli_builds_a_mat_scene_and_rejects_a_malformed_one(tmp_path: Path) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(1)
    savemat(
        tmp_path / "scene.mat",
        {
            "HSI": rng.normal(size=(20, 20, 12)),
            "LiDAR": rng.normal(size=(20, 20)),
            "gt": rng.integers(0, 4, size=(20, 20)).astype(np.uint8),
        },
    )
    out = tmp_path / "built"

    def build(source: Path, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "fedrs.cli", "data", "build", "--source", f"s={source}"]
        return subprocess.run([*cmd, *args], capture_output=True, text=True)

    done = build(
        tmp_path / "scene.mat",
        *("--patch-size", "3", "--partition", "spatial", "--num-clients", "2"),
        *("--min-examples", "5", "--out", str(out)),
    )
    assert done.returncode == 0, done.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["modalities"] == {"hsi": {"bands": 12, "patch": 3}, "lidar": {"bands": 1, "patch": 3}}
    (tmp_path / "bad.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(40))
    bad = build(tmp_path / "bad.mat", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "not a readable MATLAB" in bad.stderr
    assert not (tmp_path / "x").exists()


def test_sweep_builds_a_pixel_table_with_each_trials_modal_keys(tmp_path: Path) -> None:
    from scipy.io import savemat

    from fedrs.core.config import RunConfig
    from fedrs.orchestrator.sweep.builds import build_key, ensure_build

    rng = np.random.default_rng(0)
    src = tmp_path / "pixels"
    src.mkdir()
    savemat(src / "HSI_TrSet.mat", {"HSI_TrSet": rng.random((40, 6))})
    savemat(src / "LiDAR_TrSet.mat", {"LiDAR_TrSet": rng.random((40, 2))})
    savemat(src / "TrLabel.mat", {"TrLabel": np.repeat([1, 2], 20)[:, None].astype(np.uint8)})
    build = {"sources": [f"h={src}"], "min_examples": 2}
    base = {"method.name": "feddiff", "data.partition": "iid", "data.num_clients": 2}
    paired = RunConfig().replace(**base)
    split = RunConfig().replace(**base, **{"data.modal.client_modalities": "hsi,lidar"})
    assert build_key(paired, build) != build_key(split, build)
    for cfg, want in ((paired, [["hsi", "lidar"]] * 2), (split, [["hsi"], ["lidar"]])):
        m = json.loads(
            (Path(ensure_build(cfg, build, tmp_path / "builds")) / "manifest.json").read_text()
        )
        assert [c["modalities"] for c in m["clients"]] == want
        assert m["kind"] == "multimodal" and m["scene"] is None
