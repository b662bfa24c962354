"""Personalised baselines: local-only CoOp sends nothing; PromptFL + local fine-tuning keeps
PromptFL's global model and fine-tunes each client's copy before it is evaluated."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from conftest import small_run
from fedrs.core.state_store import FileStateStore
from fedrs.datasets.manifest import FedDataset
from fedrs.methods.base import FitOptions
from fedrs.methods.personal import LocalCoOp, PromptFLFineTune
from fedrs.methods.promptfl import CTX, PromptFL


def _scores(partial: dict) -> tuple[float, float, float, list[float]]:
    """An evaluation partial as comparable values (its per-class counts are arrays)."""
    return (partial["correct"], partial["loss_sum"], partial["n"], list(partial["class_correct"]))


def _opts(cid: int = 0, epochs: int = 1) -> FitOptions:
    return FitOptions(round=1, client_id=cid, seed=0, epochs=epochs, batch_size=16, lr=0.01)


def test_local_coop_keeps_everything_on_the_client(synth_data: Path) -> None:
    ds = FedDataset(synth_data)
    method = LocalCoOp(small_run(synth_data, **{"method.name": "local_coop"}), ds.classes)
    assert method.init_global(0) == {}
    start = method.init_private(2, 0)
    out = method.fit({}, start, ds.client(2), _opts(2))
    assert out.params == {} and set(out.private) == {CTX}
    assert not np.array_equal(out.private[CTX], start[CTX])
    local = ds.client_test(2)
    assert method.evaluate({}, out.private, local.images, local.labels)["n"] == len(local)


def test_promptfl_ft_fine_tunes_from_the_global_context(synth_data: Path) -> None:
    ds = FedDataset(synth_data)
    cfg = small_run(synth_data, **{"method.name": "promptfl_ft", "method.ft_epochs": 2})
    method = PromptFLFineTune(cfg, ds.classes)
    g = method.init_global(0)
    tuned = method.personalize(g, {}, ds.client(1), _opts(1))
    again = method.personalize(g, {}, ds.client(1), _opts(1))
    assert np.array_equal(tuned[CTX], again[CTX])  # deterministic in the options
    assert not np.array_equal(tuned[CTX], g[CTX])
    # two epochs of fine-tuning = PromptFL's local training for two epochs from the same start
    fit = method.fit(g, {}, ds.client(1), _opts(1, epochs=2))
    assert np.allclose(tuned[CTX], fit.params[CTX], atol=1e-6)
    local = ds.client_test(1)
    assert _scores(method.evaluate(g, tuned, local.images, local.labels)) != _scores(
        method.evaluate(g, {}, local.images, local.labels)
    )


@pytest.mark.usefixtures("ray_cluster")
def test_runs_report_what_each_baseline_has(synth_data: Path, tmp_path: Path) -> None:
    from fedrs.orchestrator.runner import run

    recs = {}
    for name in ("local_coop", "promptfl", "promptfl_ft"):
        cfg = small_run(
            synth_data,
            **{"method.name": name, "federation.eval_personal_global": True},
        )
        run(cfg, out=str(tmp_path / name), console=Console(file=io.StringIO()))
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        recs[name] = json.loads(lines[-1])
    local = recs["local_coop"]
    assert local["accuracy"] is None and "no global model" in local["null_reasons"]["accuracy"]
    assert local["bytes_up"] == local["bytes_down"] == 0
    # each client's own stored context, scored as a PromptFL global context would be: on its
    # local split (personalized_accuracy) and on the global one; the means over the 6 clients
    ds = FedDataset(synth_data)
    store = FileStateStore(tmp_path / "local_coop" / "client_state")
    coop = PromptFL(small_run(synth_data, **{"method.name": "promptfl"}), ds.classes)
    start = coop.init_global(0)  # where every local_coop client starts

    def means(states: list[dict]) -> tuple[float, float]:
        def acc(ctx: dict, shard: Any) -> float:
            out = coop.evaluate(ctx, {}, shard.images, shard.labels)
            return PromptFL.reduce_eval([out])["accuracy"]

        own = [acc(ctx, ds.client_test(c)) for c, ctx in enumerate(states)]
        return float(np.mean(own)), float(np.mean([acc(ctx, ds.test_shard()) for ctx in states]))

    trained = [store.load(c, 3) for c in range(6)]
    assert all(not np.array_equal(t[CTX], start[CTX]) for t in trained)  # each trained its own
    figures = (local["personalized_accuracy"], local["personalized_global_accuracy"])
    assert figures == pytest.approx(means(trained), abs=1e-12)
    assert figures != pytest.approx(means([start] * 6), abs=1e-12)  # not the untrained context
    # fine-tuning leaves PromptFL's global model as it is, and changes the clients' models
    assert recs["promptfl_ft"]["accuracy"] == recs["promptfl"]["accuracy"]
    assert recs["promptfl_ft"]["bytes_up"] == recs["promptfl"]["bytes_up"]
    assert recs["promptfl_ft"]["personalized_accuracy"] != recs["promptfl"]["personalized_accuracy"]


def test_fedpgp_contrastive_loss_by_hand() -> None:
    import math

    import torch

    from fedrs.methods.fedpgp import prompt_contrastive

    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # cos 1, then 0
    neg = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # cos 0, then 1
    tau = 0.5
    want = 0.5 * (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(1 / (1 + math.exp(2))))
    assert float(prompt_contrastive(a, pos, neg, tau)) == pytest.approx(want, rel=1e-6)


def test_fedpgp_personal_context_starts_at_the_shared_one_and_stays_home(
    synth_data: Path,
) -> None:
    from fedrs.methods.fedpgp import SHARED, FedPGP, U, V

    ds = FedDataset(synth_data)
    method = FedPGP(
        small_run(synth_data, **{"method.name": "fedpgp", "method.rank": 2}), ds.classes
    )
    g, priv = method.init_global(0), method.init_private(1, 0)
    assert priv[U].shape == (4, 2) and priv[V].shape == (2, 64) and not priv[U].any()
    local = ds.client_test(1)
    # U = 0: the personal model is the shared one
    assert _scores(method.evaluate(g, priv, local.images, local.labels)) == _scores(
        method.evaluate(g, {}, local.images, local.labels)
    )
    out = method.fit(g, priv, ds.client(1), _opts(1, epochs=2))
    assert list(out.params) == [SHARED] and set(out.private) == {U, V}
    assert out.private[U].any()  # the low-rank term learned something
    assert _scores(method.evaluate(out.params, out.private, local.images, local.labels)) != (
        _scores(method.evaluate(out.params, {}, local.images, local.labels))
    )
