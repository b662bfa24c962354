"""CLIP2FL / CReFF (methods/clip2fl.py): the loss terms against hand-computed values, the
server's re-trained classifier on an imbalanced toy, payload validation and accounting, and
an exact resume of the server state."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import small_run
from fedrs.core.config import RunConfig
from fedrs.core.metrics import shot_accuracy, shot_groups
from fedrs.core.strategies import ClientUpdate
from fedrs.core.validation import validate_extras
from fedrs.errors import ConfigError
from fedrs.methods.base import FitOutput
from fedrs.methods.clip2fl import (
    CLIP2FL,
    Clip2FLServer,
    classifier_grad,
    kd_loss,
    match_distance,
    prototype_contrastive,
)
from fedrs.orchestrator import checkpoint
from fedrs.orchestrator.runner import run

QUIET = None
# a small student and a short server step: the machinery, not the paper's budget
TINY = {
    "method.name": "clip2fl",
    "method.scaling": 1,
    "method.input_size": 16,
    "method.features_per_class": 5,
    "method.feature_steps": 3,
    "method.retrain_epochs": 2,
    "method.grad_repeats": 2,
    "method.grad_batch_size": 4,
    "method.lambda_pcl": 0.01,
    "client.lr": 0.05,
}


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------ the terms


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_term_is_t_squared_kl_teacher_to_student(temperature: float) -> None:
    # two classes, logits (1, 0) for the student and (0, 1) for the teacher: with d = 1 / T,
    # p_t = (s(-d), s(d)), q_s = (s(d), s(-d)) and KL(p_t || q_s) = (s(d) - s(-d)) * d
    d = 1.0 / temperature
    sig = 1.0 / (1.0 + math.exp(-d))
    want = (sig - (1.0 - sig)) * d * temperature**2
    got = kd_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), temperature)
    assert float(got) == pytest.approx(want, rel=1e-6)
    # the same logits: no distillation signal
    same = kd_loss(torch.tensor([[0.3, -1.0]]), torch.tensor([[0.3, -1.0]]), temperature)
    assert float(same) == pytest.approx(0.0, abs=1e-7)


def test_kd_term_direction_and_batch_mean() -> None:
    """Uneven three-class logits, a batch of two: KL(teacher || student) averaged over the
    batch, not KL(student || teacher), not summed."""
    student = [[4.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    teacher = [[0.0, 0.0, 1.0], [3.0, -2.0, 0.0]]
    t = 2.0

    def softmax(z: list[float]) -> list[float]:
        e = [math.exp(v / t) for v in z]
        return [v / sum(e) for v in e]

    def kl(p: list[float], q: list[float]) -> float:
        return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))

    want = (
        t
        * t
        * sum(kl(softmax(te), softmax(st)) for st, te in zip(student, teacher, strict=True))
        / 2
    )
    wrong = (
        t
        * t
        * sum(kl(softmax(st), softmax(te)) for st, te in zip(student, teacher, strict=True))
        / 2
    )
    got = float(kd_loss(torch.tensor(student), torch.tensor(teacher), t))
    assert got == pytest.approx(want, rel=1e-6)
    assert abs(want - wrong) > 0.2 and got != pytest.approx(wrong, rel=1e-2)


def test_classifier_gradient_in_closed_form() -> None:
    # W = 0, b = 0: P = (1/2, 1/2); label 0 -> P - Y = (-1/2, 1/2); gW = (P - Y)^T f
    gw, gb = classifier_grad(
        torch.tensor([[1.0, 2.0]]), torch.tensor([0]), torch.zeros(2, 2), torch.zeros(2)
    )
    np.testing.assert_allclose(gw.numpy(), [[-0.5, -1.0], [0.5, 1.0]])
    np.testing.assert_allclose(gb.numpy(), [-0.5, 0.5])
    # and equal to autograd's on random values
    gen = torch.Generator().manual_seed(0)
    f, w, b = (torch.randn(*s, generator=gen) for s in ((6, 5), (3, 5), (3,)))
    y = torch.tensor([0, 2, 1, 1, 0, 2])
    w.requires_grad_(True)
    b.requires_grad_(True)
    torch.nn.functional.cross_entropy(f @ w.t() + b, y).backward()
    gw, gb = classifier_grad(f, y, w.detach(), b.detach())
    np.testing.assert_allclose(gw.numpy(), w.grad.numpy(), atol=1e-6)
    np.testing.assert_allclose(gb.numpy(), b.grad.numpy(), atol=1e-6)


def test_client_class_gradients_match_autograd_on_the_received_model() -> None:
    """Per local class: the mean over the repeats of autograd's CE gradient w.r.t. the
    re-trained classifier, on eval-mode features of the received backbone; (C, D + 1) with
    the bias last; only the client's classes; deterministic in (seed, round, client)."""
    from fedrs.methods.base import FitOptions

    cfg = RunConfig().replace(**{**TINY, "method.grad_repeats": 3, "method.grad_batch_size": 4})
    classes = [f"c{i}" for i in range(5)]
    method = CLIP2FL(cfg, classes)
    g = method.init_global(0)
    rng = np.random.default_rng(1)
    g["classifier.weight"] = rng.normal(size=g["classifier.weight"].shape).astype(np.float32)
    g["classifier.bias"] = rng.normal(size=5).astype(np.float32)
    g["student.head.weight"] = np.zeros_like(g["student.head.weight"])  # must not be used
    images = rng.integers(0, 256, (9, 20, 20, 3), dtype=np.uint8)
    labels = np.array([0, 0, 0, 3, 3, 3, 3, 3, 3])
    opts = FitOptions(round=2, client_id=1, seed=0, epochs=1, batch_size=4, lr=0.1)
    method._load(g)
    got = method.class_gradients(g, images, labels, opts)
    assert sorted(got) == ["class_grad/0", "class_grad/3"]
    assert got["class_grad/3"].shape == (5, 64 + 1)
    # autograd on the same samples: redraw them with the method's own generators
    gen, pick_rng = method._generator(opts, 2)
    w = torch.from_numpy(g["classifier.weight"]).requires_grad_(True)
    b = torch.from_numpy(g["classifier.bias"]).requires_grad_(True)
    for c in (0, 3):
        rows = np.flatnonzero(labels == c)
        size = min(len(rows), 4)
        picks = np.concatenate(
            [np.sort(pick_rng.choice(rows, size, replace=False)) for _ in range(3)]
        )
        with torch.no_grad():
            feats = method.student.backbone(method.student.pixels(images[picks], gen))
        want = []
        for r in range(3):
            f = feats[r * size : (r + 1) * size]
            loss = torch.nn.functional.cross_entropy(f @ w.t() + b, torch.full((size,), c))
            gw, gb = torch.autograd.grad(loss, (w, b))
            want.append(torch.cat([gw, gb[:, None]], 1).numpy())
        np.testing.assert_allclose(got[f"class_grad/{c}"], np.mean(want, 0), atol=1e-5)
    again = method.class_gradients(g, images, labels, opts)
    np.testing.assert_array_equal(again["class_grad/3"], got["class_grad/3"])


def test_teacher_logits_scale_paper_100_or_the_teachers_own() -> None:
    """``teacher_scale`` multiplies cos(image, text): 100 by default (the paper's, CLIP's
    clamp); 0 takes the teacher's learned logit scale. The cached logits' identity names the
    scale, so a cache of one is never read as the other."""
    classes = [f"c{i}" for i in range(4)]
    images = np.random.default_rng(0).integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    paper = CLIP2FL(RunConfig().replace(**TINY), classes)
    own = CLIP2FL(RunConfig().replace(**{**TINY, "method.teacher_scale": 0.0}), classes)
    learned = float(own.teacher.model.logit_scale.exp())
    assert own.teacher_scale == pytest.approx(learned) and learned != pytest.approx(100.0)
    feats = paper.teacher.image_embeddings(paper.teacher.preprocess(images))
    cos = (feats @ paper.text.t()).float().numpy()
    np.testing.assert_allclose(paper._teacher_logits(images), 100 * cos, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(own._teacher_logits(images), learned * cos, rtol=1e-5, atol=1e-5)
    assert paper.input_cache().identity != own.input_cache().identity
    with pytest.raises(ConfigError, match="teacher_scale"):
        RunConfig().replace(**{**TINY, "method.teacher_scale": -1.0})


def test_retraining_is_plain_minibatch_sgd_on_cross_entropy() -> None:
    """The closed-form retraining loop takes the steps autograd + torch.optim.SGD would."""
    from fedrs.methods.clip2fl import Clip2FLOptions, retrain_classifier

    opts = Clip2FLOptions(retrain_epochs=3, retrain_batch_size=4, retrain_lr=0.5)
    gen = torch.Generator().manual_seed(3)
    feats, labels = torch.randn(10, 6, generator=gen), torch.randint(0, 3, (10,), generator=gen)
    w, b = retrain_classifier(feats, labels, 3, opts, [0, 1])
    # the reference: the same initialisation and shuffles, autograd and torch's SGD
    ref = torch.Generator().manual_seed(int(np.random.SeedSequence([0, 1]).generate_state(1)[0]))
    rw = ((torch.rand(3, 6, generator=ref) * 2 - 1) / 6**0.5).requires_grad_(True)
    rb = ((torch.rand(3, generator=ref) * 2 - 1) / 6**0.5).requires_grad_(True)
    start = rw.detach().clone()
    opt = torch.optim.SGD([rw, rb], lr=0.5)
    for _ in range(3):
        perm = torch.randperm(10, generator=ref)
        for s in range(0, 10, 4):
            rows = perm[s : s + 4]
            loss = torch.nn.functional.cross_entropy(feats[rows] @ rw.t() + rb, labels[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    np.testing.assert_allclose(w.numpy(), rw.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(b.numpy(), rb.detach().numpy(), atol=1e-5)
    assert np.abs(w.numpy() - start.numpy()).max() > 0.01  # it trained


def test_gradient_matching_distance() -> None:
    # W rows: the same direction (1 - 1 = 0), orthogonal (1 - 0 = 1); b: orthogonal (1)
    d = match_distance(
        torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        torch.tensor([1.0, 0.0]),
        torch.tensor([[2.0, 0.0], [3.0, 0.0]]),
        torch.tensor([0.0, 1.0]),
    )
    assert float(d) == pytest.approx(2.0)
    opposite = match_distance(
        torch.tensor([[1.0, 0.0]]),
        torch.tensor([1.0]),
        torch.tensor([[-1.0, 0.0]]),
        torch.tensor([1.0]),
    )
    assert float(opposite) == pytest.approx(2.0)  # (1 - (-1)) + (1 - 1)


def test_prototype_contrastive_loss() -> None:
    # features on their own class's text direction, temperature 0.5: logits (2, 0), CE =
    # log(1 + e^-2); the features' norms do not matter (cosine)
    loss = prototype_contrastive(
        torch.tensor([[3.0, 0.0], [0.0, 0.5]]),
        torch.tensor([0, 1]),
        torch.tensor([[1.0, 0.0], [0.0, 2.0]]),
        0.5,
    )
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    swapped = prototype_contrastive(
        torch.tensor([[3.0, 0.0]]), torch.tensor([1]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 0.5
    )
    assert float(swapped) == pytest.approx(math.log(1 + math.exp(2)), rel=1e-6)


def test_long_tail_groups_and_their_accuracy() -> None:
    counts = [300, 101, 100, 20, 19, 3]
    assert shot_groups(counts, 100, 20) == ["many", "many", "medium", "medium", "few", "few"]
    out = shot_accuracy([1.0, 0.5, 0.4, None, 0.0, 0.2], counts, 100, 20)
    assert out == pytest.approx(
        {"many_shot_accuracy": 0.75, "medium_shot_accuracy": 0.4, "few_shot_accuracy": 0.1}
    )
    assert shot_accuracy([0.5], [5], 100, 20)["many_shot_accuracy"] is None


def test_per_class_plot_colours_bars_and_legend_by_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.colors import to_rgba

    from fedrs.orchestrator import plots
    from fedrs.orchestrator.plots import plot_classes

    figures: list[Any] = []
    save = plots.save_figure
    monkeypatch.setattr(
        plots, "save_figure", lambda fig, path: (figures.append(fig), save(fig, path))
    )
    long_tail = {
        "train_counts": [5, 150, 40],
        "groups": ["few", "many", "medium"],
        "per_class_accuracy": [0.5, 0.9, None],
    }
    plot_classes(long_tail, ["a", "b", "c"], tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
    ax = figures[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b (150)", "c (40)", "a (5)"]
    colours = [to_rgba(c) for c in ("tab:blue", "tab:orange", "tab:red")]
    assert [p.get_facecolor() for p in ax.patches] == colours  # most examples first
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["many-shot", "medium-shot", "few-shot"]
    assert [h.get_facecolor() for h in legend.legend_handles] == colours


# ------------------------------------------------------------------ the server on a toy


def _balanced_accuracy(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    pred = (x @ w.t() + b).argmax(1)
    return float(np.mean([(pred[y == c] == c).float().mean() for c in y.unique()]))


def test_retrained_classifier_beats_the_imbalanced_one_on_balanced_accuracy() -> None:
    """Three overlapping classes with 400 / 40 / 4 training features: a classifier trained on
    them (what FedAvg learns) favours the head class; CReFF's server, given only each class's
    mean classifier gradient, re-trains one that is better on a balanced test set."""
    cfg = RunConfig().replace(
        **{
            "method.name": "creff",
            "method.feature_steps": 100,
            "method.features_per_class": 50,
            "method.retrain_epochs": 100,
        }
    )
    dim, classes = 64, ["a", "b", "c"]  # fedrs-tiny's embedding width
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(3, dim, generator=gen) * 0.35

    def sample(n: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.cat([torch.full((k,), c) for c, k in enumerate(n)])
        return means[y] + torch.randn(len(y), dim, generator=gen), y

    x_train, y_train = sample([400, 40, 4])
    x_test, y_test = sample([300, 300, 300])
    w = torch.zeros(3, dim, requires_grad=True)
    b = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([w, b], lr=0.1)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(x_train @ w.t() + b, y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    w, b = w.detach(), b.detach()
    imbalanced = _balanced_accuracy(w, b, x_test, y_test)

    server = Clip2FLServer(cfg, classes)
    params = {"classifier.weight": w.numpy(), "classifier.bias": b.numpy()}
    for rnd in range(1, 4):  # clients' class gradients under the current re-trained classifier
        cw, cb = (torch.from_numpy(params[k]) for k in ("classifier.weight", "classifier.bias"))
        extras = {}
        for c in range(3):
            gw, gb = classifier_grad(x_train[y_train == c], y_train[y_train == c], cw, cb)
            extras[f"class_grad/{c}"] = torch.cat([gw, gb[:, None]], 1).numpy()
        params = server.update(rnd, params, [ClientUpdate(0, {}, 444, {}, extras)])
    retrained = _balanced_accuracy(
        *(torch.from_numpy(params[k]) for k in ("classifier.weight", "classifier.bias")),
        x_test,
        y_test,
    )
    assert server.metrics["classes_matched"] == 3
    assert retrained > imbalanced + 0.05, (retrained, imbalanced)


def test_class_gradient_payloads_are_validated() -> None:
    shapes = {"class_grad/0": (3, 5), "class_grad/1": (3, 5)}
    ok = np.zeros((3, 5), np.float32)
    allowed = CLIP2FL.extra_allowed
    assert validate_extras({"class_grad/1": ok}, allowed, shapes) is None
    bad = ok.copy()
    bad[0, 0] = np.nan
    assert "non-finite" in validate_extras({"class_grad/0": bad}, allowed, shapes)
    assert "shape (3, 4)" in validate_extras({"class_grad/0": ok[:, :4]}, allowed, shapes)
    assert "declares" in validate_extras({"class_grad/7": ok}, allowed, shapes)
    assert "declares" in validate_extras({"features": ok}, allowed, shapes)


def test_dry_run_counts_the_per_class_gradients() -> None:
    from fedrs.orchestrator.plan import plan

    cfg = RunConfig().replace(**TINY)
    p = plan(cfg)
    student = p["trainable_params"]
    c, d = 10, 64  # the synthetic default's classes, fedrs-tiny's embedding width
    assert p["params_sent_per_client"] == student + c * c * (d + 1)
    assert len(p["tensors"]["extras"]) == c
    # the re-trained classifier goes down, never up
    assert p["params_received_per_client"] == student + c * d + c
    # the student baseline: its model both ways, nothing else
    s = plan(RunConfig().replace(**{**TINY, "method.name": "student", "method.lambda_pcl": 0}))
    assert s["params_sent_per_client"] == s["params_received_per_client"] == student
    assert not s["tensors"]["extras"]


# ------------------------------------------------------------------------- runs on Ray


def test_bad_class_gradients_are_rejected_counted_and_bytes_include_them(
    synth_data: Path, tmp_path: Path
) -> None:
    class Faulty(CLIP2FL):
        def fit(self, *a: Any, **k: Any) -> FitOutput:
            out = super().fit(*a, **k)
            name = sorted(out.extras)[0]
            if a[3].client_id == 1:
                out.extras[name] = np.full_like(out.extras[name], np.nan)
            elif a[3].client_id == 2:
                out.extras[name] = out.extras[name][:, :-1]
            return out

    cfg = small_run(synth_data, **{**TINY, "federation.rounds": 1})
    run(cfg, out=str(tmp_path / "r"), method_cls=Faulty, console=QUIET)
    (m,) = _metrics(tmp_path / "r")
    assert m["clients_rejected"] == 2 and m["clients_ok"] == 4
    assert "non-finite" in m["failures"]["1"] and "shape" in m["failures"]["2"]
    # bytes up: every client's student plus one (C, D + 1) float32 gradient per local class
    manifest = json.loads((synth_data / "manifest.json").read_text())
    _, params, _ = checkpoint.load(tmp_path / "r")
    student = sum(v.nbytes for k, v in params.items() if k.startswith("student."))
    grads = sum(sum(1 for n in c["class_counts"] if n) for c in manifest["clients"]) * 10 * 65 * 4
    assert m["bytes_up"] == 6 * student + grads - 10 * 4  # client 2's lacks a column of 10
    # --dry-run counts each client's local classes, as the clients send them
    from fedrs.orchestrator.plan import plan

    assert grads < 6 * 10 * 10 * 65 * 4  # some client lacks a class
    assert plan(cfg)["bytes_up_per_run"] == 6 * student + grads


def _start_cli(cwd: Path, *args: str) -> subprocess.Popen:
    """`fedrs ARGS` in its own process, with a local Ray of its own."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "fedrs.cli", *args]
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def test_clip2fl_server_state_resumes_bit_identically_after_sigkill(
    synth_data: Path, tmp_path: Path
) -> None:
    """`fedrs run` killed with SIGKILL after its first round, then `--resume`: the federated
    features, the re-trained classifier and the student equal an uninterrupted run's, bit for
    bit; the teacher's logits were computed once per shard."""
    data = tmp_path / "data"  # a fresh copy: no teacher output cached by other tests
    shutil.copytree(synth_data, data, ignore=shutil.ignore_patterns("features-*"))
    sets = {
        **TINY,
        "data.path": str(data),
        "federation.rounds": 3,
        "federation.clients_per_round": 3,
        "client.local_epochs": 1,
        "resources.num_actors": 2,
    }
    args = [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    proc = _start_cli(tmp_path, "run", "--out", "cut", *args)
    deadline = time.monotonic() + 300
    while checkpoint.load(tmp_path / "cut") is None:  # round 1 checkpointed
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.load(tmp_path / "cut")[0] < 3  # killed before the end
    run(resume=str(tmp_path / "cut"), console=QUIET)
    fresh = tmp_path / "fresh"  # the uninterrupted run on its own copy: its cache starts empty
    shutil.copytree(synth_data, fresh, ignore=shutil.ignore_patterns("features-*"))
    cfg = small_run(fresh, **{**sets, "data.path": str(fresh)})
    run(cfg, out=str(tmp_path / "full"), console=QUIET)
    full, cut = checkpoint.load(tmp_path / "full"), checkpoint.load(tmp_path / "cut")
    assert full[0] == cut[0] == 3
    assert {k for k in full[2] if not k.startswith("driver/")} == {"features"}
    assert set(full[2]) == set(cut[2])  # the driver's holdings too (orchestrator/holdings.py)
    for key in full[2]:
        np.testing.assert_array_equal(full[2][key], cut[2][key], err_msg=key)
    for key in full[1]:
        np.testing.assert_array_equal(full[1][key], cut[1][key], err_msg=key)
    m = _metrics(tmp_path / "full")
    # the teacher's logits: computed once per shard, read back in every later round
    seen: set[str] = set()
    for r in m:
        for cid, client in r["clients"].items():
            assert client["cache"] == ("hit" if cid in seen else "miss"), (r["round"], cid)
            seen.add(cid)
        assert r["cache_hits"] + r["cache_misses"] == 3
    assert sum(r["cache_hits"] for r in m) > 0
    assert all(r["server_s"] > 0 and r["server_classes_matched"] >= 1 for r in m)
    last = m[-1]
    for key in ("accuracy", "accuracy_fedavg_head", "accuracy_teacher", "balanced_accuracy"):
        assert 0.0 <= last[key] <= 1.0
    assert len(last["per_class_accuracy"]) == 10
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["long_tail"]["groups"] == ["few"] * 10  # 6-8 training images per class
    assert last["few_shot_accuracy"] == pytest.approx(last["balanced_accuracy"])
    assert (tmp_path / "full" / "per_class.png").stat().st_size > 1000
