"""FedRSCLIP: loss terms by hand, VPT insertion, payload privacy, state following the client."""

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

from fedrs.core.config import RunConfig
from fedrs.core.state_store import FileStateStore
from fedrs.datasets.manifest import FedDataset
from fedrs.errors import ConfigError
from fedrs.methods.base import FitOptions, FitOutput
from fedrs.methods.fedrsclip import PRIVATE, SHARED, VISUAL, FedRSCLIP, fedrsclip_loss
from fedrs.models.backbone import load_backbone
from fedrs.models.prompt import encode_image_prompted, symmetric_info_nce


def _unit(*rows: list[float]) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_loss_terms_by_hand() -> None:
    img = _unit([1, 0], [0, 1])
    ts = _unit([1, 0], [0, 1])  # shared class features
    tp = _unit([1, 0], [1, 0])  # private: class 0 agrees with shared, class 1 is orthogonal
    y = torch.tensor([0, 1])
    s = 2.0
    out = fedrsclip_loss(img, ts, tp, y, s, lambda_dpa=0.3, lambda_cmfa=0.7)
    # DPA: mean_c (1 - cos) = (0 + 1) / 2
    assert float(out["dpa"]) == pytest.approx(0.5)
    # CE(z_s): each image's logits [2, 0] towards its class -> log(1 + e^-2)
    ce = math.log(1 + math.exp(-2))
    assert float(out["ce_shared"]) == pytest.approx(ce, rel=1e-5)
    # CE(z_p): image 0 -> [2, 2] vs class 0 (log 2); image 1 -> [0, 0] vs class 1 (log 2)
    assert float(out["ce_private"]) == pytest.approx(math.log(2), rel=1e-5)
    # CMFA: texts g(P_s, y_i) = ts, logits s * I -> both directions log(1 + e^-2)
    assert float(out["cmfa"]) == pytest.approx(ce, rel=1e-5)
    total = ce + math.log(2) + 0.3 * 0.5 + 0.7 * ce
    assert float(out["loss"]) == pytest.approx(total, rel=1e-5)
    # logits used for prediction are the mean of z_s and z_p
    assert torch.allclose(out["logits"], 0.5 * (s * img @ ts.t() + s * img @ tp.t()))
    # ablations: no private prompts -> no CE_p, no DPA; lambda 0 -> term not in the loss
    none = fedrsclip_loss(img, ts, None, y, s, 0.3, 0.0)
    assert float(none["loss"]) == pytest.approx(ce, rel=1e-5)


def test_symmetric_info_nce_matches_formula() -> None:
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    logits = 3.0 * a @ b.t()
    i2t = -torch.log_softmax(logits, 1).diag().mean()
    t2i = -torch.log_softmax(logits.t(), 1).diag().mean()
    assert float(symmetric_info_nce(a, b, 3.0)) == pytest.approx(float((i2t + t2i) / 2), rel=1e-5)


def test_visual_prompts_insert_after_ln_pre() -> None:
    bb = load_backbone("fedrs-tiny")
    x = bb.preprocess(np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8))
    with torch.no_grad():
        plain = encode_image_prompted(bb, x, None)
        assert torch.allclose(plain, bb.model.encode_image(x), atol=1e-5)
        prompted = encode_image_prompted(bb, x, torch.randn(4, 64))
    assert prompted.shape == plain.shape and not torch.allclose(prompted, plain)


def test_shapes_and_2048_shared_params_at_vit_b_sizes(tmp_path: Path) -> None:
    for arch in ("ViT-B-16", "ViT-B-32"):
        out = tmp_path / f"{arch}.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "fedrs.cli",
                "run",
                "--dry-run",
                "--set",
                f"model.arch={arch}",
                "--set",
                "method.name=fedrsclip",
                "--set",
                "strategy.name=prompt_avg",
                "--json",
                str(out),
            ],
            check=True,
            capture_output=True,
        )
        plan = json.loads(out.read_text())
        assert plan["params_sent_per_client"] == 2048 == 4 * 512
        assert plan["bytes_sent_per_client"] == 8192
        assert plan["tensors"]["private"] == {PRIVATE: [4, 512], VISUAL: [4, 768]}
        assert plan["trainable_params"] == 2048 + 2048 + 4 * 768
    no_private = RunConfig().replace(
        **{"method.name": "fedrsclip", "method.private_prompts": "false"}
    )
    from fedrs.orchestrator.plan import plan as make_plan

    assert make_plan(no_private)["private_params_per_client"] == 0


def test_fit_sends_only_the_shared_prompt(synth_data: Path) -> None:
    ds = FedDataset(synth_data)
    method = FedRSCLIP(RunConfig().replace(**{"method.name": "fedrsclip"}), ds.classes)
    g = method.init_global(0)
    priv = method.init_private(3, 0)
    assert set(priv) == {PRIVATE, VISUAL} and priv[VISUAL].shape == (4, 64)
    assert not np.array_equal(priv[PRIVATE], method.init_private(4, 0)[PRIVATE])
    opts = FitOptions(
        round=1, client_id=3, seed=0, epochs=1, batch_size=16, lr=0.01, upload_keys=(SHARED,)
    )
    out = method.fit(g, priv, ds.client(3), opts)
    assert list(out.params) == [SHARED]  # the payload: shared context only
    assert set(out.private) == {PRIVATE, VISUAL}
    assert not np.array_equal(out.private[VISUAL], priv[VISUAL])  # private prompts trained
    assert not np.array_equal(out.private[PRIVATE], priv[PRIVATE])  # the private text too
    assert not np.array_equal(out.params[SHARED], g[SHARED])
    local = ds.client_test(3)
    pers = method.evaluate(out.params, out.private, local.images, local.labels)
    shared_only = method.evaluate(out.params, {}, local.images, local.labels)
    glob = method.evaluate(out.params, {}, ds.test_shard().images, ds.test_shard().labels)
    assert pers["n"] == len(local) and glob["n"] == len(ds.test_shard())
    for ev in (pers, shared_only, glob):
        assert 0 <= ev["correct"] <= ev["n"] and np.isfinite(ev["loss_sum"]) and ev["loss_sum"] > 0
    # the private prompts enter the personalised prediction (z_s + z_p) / 2: another loss
    assert pers["loss_sum"] != pytest.approx(shared_only["loss_sum"], rel=1e-6)


@pytest.mark.usefixtures("ray_cluster")
def test_private_state_follows_the_client_across_actors(synth_data: Path, tmp_path: Path) -> None:
    from fedrs.orchestrator.runner import run

    class Recording(FedRSCLIP):
        def fit(self, global_params: Any, private: Any, shard: Any, options: Any) -> FitOutput:
            out = super().fit(global_params, private, shard, options)
            out.metrics["received_private"] = float(np.abs(private[PRIVATE]).sum())
            return out

    cfg = RunConfig().replace(
        **{
            "method.name": "fedrsclip",
            "strategy.name": "prompt_avg",
            "data.path": str(synth_data),
            "federation.rounds": 2,
            "federation.clients_per_round": 6,
            "client.local_epochs": 1,
            "resources.num_actors": 2,
        }
    )
    quiet = Console(file=io.StringIO())
    run_dir = tmp_path / "r"
    run(cfg, out=str(run_dir), method_cls=Recording, stop_after=1, console=quiet)
    store = FileStateStore(run_dir / "client_state")
    trained_r1 = {c: float(np.abs(store.load(c, 2)[PRIVATE]).sum()) for c in range(6)}
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    run(resume=str(run_dir), method_cls=Recording, console=quiet)  # new actor processes
    second = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[1])
    assert second["round"] == 2 and second["bytes_up"] == 6 * 4 * 64 * 4
    for c in range(6):
        rec1, rec2 = first["clients"][str(c)], second["clients"][str(c)]
        assert rec1["worker"] != rec2["worker"]  # trained by another actor process
        assert rec2["received_private"] == pytest.approx(trained_r1[c], rel=1e-6)
    assert len({round(v, 3) for v in trained_r1.values()}) == 6  # each client its own state

    # Without --overwrite a new run may not go there at all
    with pytest.raises(ConfigError, match="already holds a run"):
        run(cfg, out=str(run_dir), method_cls=Recording, console=quiet)
    # A fresh run replacing it (--overwrite) must ignore what the earlier run left: plant a
    # newer stale version (as a longer earlier run would leave) for every client.
    for c in range(6):
        store.save(
            c,
            9,
            {PRIVATE: np.full((4, 64), 7.0, np.float32), VISUAL: np.full((4, 64), 7.0, np.float32)},
        )
    run(cfg, out=str(run_dir), method_cls=Recording, console=quiet, overwrite=True)
    fresh = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    local = FedRSCLIP(cfg, FedDataset(synth_data).classes)
    for c in range(6):
        init = float(np.abs(local.init_private(c, 0)[PRIVATE]).sum())
        assert fresh[0]["clients"][str(c)]["received_private"] == pytest.approx(init, rel=1e-6)
        trained = float(np.abs(store.load(c, 2)[PRIVATE]).sum())  # what round 1 trained
        assert fresh[1]["clients"][str(c)]["received_private"] == pytest.approx(trained, rel=1e-6)
        assert trained != pytest.approx(init, rel=1e-3)
    assert store.versions(0) == [1, 2]


def test_fedprox_anchors_the_shared_prompt_not_the_private_ones(synth_data: Path) -> None:
    ds = FedDataset(synth_data)
    method = FedRSCLIP(RunConfig().replace(**{"method.name": "fedrsclip"}), ds.classes)
    g, priv = method.init_global(0), method.init_private(0, 0)

    def moved(mu: float) -> tuple[float, float]:
        opts = FitOptions(
            round=1, client_id=0, seed=0, epochs=2, batch_size=16, lr=0.05, proximal_mu=mu
        )
        out = method.fit(g, priv, ds.client(0), opts)
        return (
            float(np.linalg.norm(out.params[SHARED] - g[SHARED])),
            float(np.linalg.norm(out.private[VISUAL] - priv[VISUAL])),
        )

    (free_shared, free_vis), (prox_shared, prox_vis) = moved(0.0), moved(5.0)
    assert prox_shared < 0.5 * free_shared  # pulled back towards the global prompt
    assert prox_vis > 0.5 * free_vis  # private visual prompts are not anchored


def test_dpa_stop_shared_moves_only_the_private_prompt() -> None:
    img = _unit([1, 0], [0, 1])
    y = torch.tensor([0, 1])
    grads = {}
    for stop in (False, True):
        ts = _unit([1, 0], [0, 1]).requires_grad_(True)
        tp = _unit([1, 1], [1, 0]).requires_grad_(True)
        out = fedrsclip_loss(img, ts, tp, y, 2.0, 1.0, 0.0, dpa_stop_shared=stop)
        out["dpa"].backward()
        grads[stop] = (ts.grad, tp.grad)
    assert float(grads[False][0].abs().sum()) > 0  # plain DPA pulls the shared prompt too
    assert grads[True][0] is None or float(grads[True][0].abs().sum()) == 0.0
    assert torch.allclose(grads[True][1], grads[False][1])  # the private side is unchanged


def test_visual_prompt_options_and_the_visual_mean(synth_data: Path) -> None:
    from fedrs.core.strategies import ClientUpdate
    from fedrs.methods.fedrsclip import VISUAL_MEAN, FedRSCLIPServer

    ds = FedDataset(synth_data)
    base = RunConfig().replace(**{"method.name": "fedrsclip"})
    no_vis = FedRSCLIP(base.replace(**{"method.visual_prompts": False}), ds.classes)
    assert set(no_vis.init_private(0, 0)) == {PRIVATE}
    opts = FitOptions(
        round=1, client_id=0, seed=0, epochs=1, batch_size=16, lr=0.01, upload_keys=(SHARED,)
    )
    out = no_vis.fit(no_vis.init_global(0), no_vis.init_private(0, 0), ds.client(0), opts)
    assert set(out.private) == {PRIVATE} and not out.extras

    cfg = base.replace(**{"method.share_visual_mean": True})
    method = FedRSCLIP(cfg, ds.classes)
    g = method.init_global(0)
    assert set(g) == {SHARED, VISUAL_MEAN} and not g[VISUAL_MEAN].any()
    assert FedRSCLIP.download_only == (VISUAL_MEAN,)
    ups = []
    for cid in (0, 1):
        fit = method.fit(g, method.init_private(cid, 0), ds.client(cid), opts)
        assert set(fit.extras) == {VISUAL} and np.array_equal(
            fit.extras[VISUAL], fit.private[VISUAL]
        )
        ups.append(ClientUpdate(cid, fit.params, fit.num_examples, {}, fit.extras))
    new = FedRSCLIPServer(cfg, ds.classes).update(1, dict(g), ups)
    w = np.array([u.num_examples for u in ups], dtype=float)
    want = (w[0] * ups[0].extras[VISUAL] + w[1] * ups[1].extras[VISUAL]) / w.sum()
    assert np.allclose(new[VISUAL_MEAN], want, atol=1e-6)
    test = ds.test_shard()
    part = method.evaluate(new, {}, test.images, test.labels)
    reduced = FedRSCLIP.reduce_eval([part])
    assert set(reduced) == {
        "accuracy",
        "test_loss",
        "accuracy_visual_mean",
        "test_loss_visual_mean",
        "per_class_accuracy",
        "balanced_accuracy",
        "kappa",
    }
    n = len(test.labels)
    assert reduced["test_loss_visual_mean"] == pytest.approx(part["loss_visual_mean"] / n)
    assert part["loss_visual_mean"] != pytest.approx(part["loss_sum"], rel=1e-6)
    local = ds.client_test(0)
    personal = method.evaluate(
        new, ups[0].extras | {PRIVATE: fit.private[PRIVATE]}, local.images, local.labels
    )
    assert "correct_visual_mean" not in personal  # only the global split is evaluated twice


@pytest.mark.usefixtures("ray_cluster")
def test_a_run_reports_three_global_evaluations_and_the_shared_change(
    synth_data: Path, tmp_path: Path
) -> None:
    """Shared prompt alone, with the mean visual prompts, each personalised model on the
    global split; and how far each round moved the shared prompt."""
    from conftest import small_run
    from fedrs.orchestrator.runner import run

    cfg = small_run(
        synth_data,
        **{
            "method.name": "fedrsclip",
            "method.share_visual_mean": True,
            "federation.eval_personal_global": True,
            "federation.clients_per_round": 3,
        },
    )
    run_dir = tmp_path / "r"
    run(cfg, out=str(run_dir), console=Console(file=io.StringIO()))
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ds = FedDataset(synth_data)
    test = ds.test_shard()
    for rec in recs:  # counts of the 40 test images
        for key in ("accuracy", "accuracy_visual_mean"):
            assert rec[key] * len(test) == pytest.approx(round(rec[key] * len(test)), abs=1e-9)
        assert rec["global_change"] > 0 and 0 < rec["global_change_rel"] < 10
    # three uploads of V^k (4 x 64 float32) beside the shared prompt (4 x 64) per round
    assert recs[0]["bytes_up"] == 3 * (4 * 64 * 4 + 4 * 64 * 4)

    # the last round's three evaluations again, from its checkpoint and client-state store
    from fedrs.methods.fedrsclip import VISUAL_MEAN
    from fedrs.orchestrator import checkpoint

    last, params, _ = checkpoint.load(run_dir)
    rec = recs[-1]
    assert rec["round"] == last == 2 and params[VISUAL_MEAN].any()
    method = FedRSCLIP(cfg, ds.classes)

    def accuracy(glob: dict, private: dict, m: FedRSCLIP = method) -> tuple[float, float]:
        out = FedRSCLIP.reduce_eval([m.evaluate(glob, private, test.images, test.labels)])
        return out["accuracy"], out["test_loss"]

    plain = accuracy({SHARED: params[SHARED]}, {})
    assert (rec["accuracy"], rec["test_loss"]) == pytest.approx(plain, rel=1e-5)
    # z_s on features prompted by the mean V, through a client-side path (no private text)
    no_text = FedRSCLIP(cfg.replace(**{"method.private_prompts": False}), ds.classes)
    vmean = accuracy({SHARED: params[SHARED]}, {VISUAL: params[VISUAL_MEAN]}, no_text)
    assert rec["accuracy_visual_mean"] == pytest.approx(vmean[0], abs=1e-12)
    # the continuous figure too: a tie in accuracy cannot hide the same computation twice
    assert rec["test_loss_visual_mean"] == pytest.approx(vmean[1], rel=1e-5)
    assert rec["test_loss_visual_mean"] != pytest.approx(rec["test_loss"], rel=1e-4)
    store = FileStateStore(run_dir / "client_state")
    each = [
        accuracy(params, store.load(c, last + 1) or method.init_private(c, 0))[0] for c in range(6)
    ]
    assert rec["personalized_global_accuracy"] == pytest.approx(np.mean(each), abs=1e-12)
    # not the same computation thrice (deterministic: the figures told apart here, exactly)
    assert vmean[0] != plain[0] and np.mean(each) != plain[0]
