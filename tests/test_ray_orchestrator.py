"""The orchestrator on a real (local, 2-node) Ray cluster: scheduling, dropouts, resume, e2e."""

from __future__ import annotations

import collections
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from conftest import small_run
from fedrs.actors.pool import ClientPool
from fedrs.core.config import RunConfig
from fedrs.methods.base import FitOutput
from fedrs.methods.promptfl import PromptFL
from fedrs.orchestrator import checkpoint
from fedrs.orchestrator.aggregate import RoundFailedError
from fedrs.orchestrator.runner import run

pytestmark = pytest.mark.usefixtures("ray_cluster")
QUIET = Console(file=io.StringIO())


def _cfg(data: Path, **sets: Any) -> RunConfig:
    return small_run(data, **sets)


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_fractional_gpus_pack_16_actors_on_4_gpus(synth_data: Path, tmp_path: Path) -> None:
    class Light(PromptFL):  # no backbone: these actors only report where they landed
        def __init__(self, cfg: Any, classes: list[str], device: str = "cpu") -> None:
            self.device = device

    cfg = _cfg(
        synth_data,
        **{
            "resources.num_actors": 16,
            "resources.num_gpus_per_client": 0.25,
            "resources.num_cpus_per_client": 0.5,
        },
    )
    pool = ClientPool(cfg, Light, str(synth_data), str(tmp_path))
    try:
        info = pool.describe()
    finally:
        pool.shutdown()
    assert len({i["pid"] for i in info}) == 16  # 16 live actors at once
    assert all(len(i["gpu_ids"]) == 1 for i in info)
    per_gpu = collections.Counter((i["node_id"], i["gpu_ids"][0]) for i in info)
    assert sorted(per_gpu.values()) == [4, 4, 4, 4]  # four 0.25-GPU actors per GPU
    assert all(i["cuda_visible_devices"] == i["gpu_ids"][0] for i in info)
    assert all(i["device"] == "cpu" for i in info)  # no CUDA here: torch falls back to CPU
    assert all(i["allocator_tuned"] == sys.platform.startswith("linux") for i in info)


@pytest.mark.parametrize(("strategy", "distinct_nodes"), [("SPREAD", 2), ("STRICT_PACK", 1)])
def test_placement_strategy_across_nodes(
    synth_data: Path, tmp_path: Path, strategy: str, distinct_nodes: int
) -> None:
    class Light(PromptFL):
        def __init__(self, cfg: Any, classes: list[str], device: str = "cpu") -> None:
            self.device = device

    cfg = _cfg(synth_data, **{"resources.placement_strategy": strategy})
    pool = ClientPool(cfg, Light, str(synth_data), str(tmp_path))
    try:
        nodes = {i["node_id"] for i in pool.describe()}
    finally:
        pool.shutdown()
    assert len(nodes) == distinct_nodes


def test_unplaceable_pool_is_a_clear_error(synth_data: Path, tmp_path: Path) -> None:
    from fedrs.actors.placement import SchedulingError

    cfg = _cfg(synth_data, **{"resources.num_actors": 40, "resources.placement_timeout_s": 2})
    with pytest.raises(SchedulingError, match="cannot place 40 client actors"):
        ClientPool(cfg, PromptFL, str(synth_data), str(tmp_path))


def test_raising_dying_and_malformed_clients_are_counted(synth_data: Path, tmp_path: Path) -> None:
    class Faulty(PromptFL):
        def fit(self, global_params: Any, private: Any, shard: Any, options: Any) -> FitOutput:
            if options.client_id == 1:
                raise RuntimeError("injected failure")
            if options.client_id == 2 and options.round == 1:
                os._exit(1)  # the actor process dies mid-round
            out = super().fit(global_params, private, shard, options)
            if options.client_id == 3:
                out.params = {k: v * np.nan for k, v in out.params.items()}
            return out

    summary = run(_cfg(synth_data), out=str(tmp_path / "r"), method_cls=Faulty, console=QUIET)
    m = _metrics(tmp_path / "r")
    assert [r["round"] for r in m] == [1, 2]
    assert m[0]["clients_ok"] == 3 and m[0]["clients_failed"] == 2
    assert m[0]["clients_rejected"] == 1
    assert "injected failure" in m[0]["failures"]["1"]
    assert "actor died" in m[0]["failures"]["2"]
    assert "non-finite" in m[0]["failures"]["3"]
    assert m[1]["clients_failed"] == 1 and m[1]["clients_ok"] == 4  # the actor came back
    assert summary["totals"]["clients_failed"] == 3
    _, params, _ = checkpoint.load(tmp_path / "r")
    assert np.isfinite(params["prompt.ctx"]).all()


def test_too_few_reports_fail_the_run_with_a_clear_message(
    synth_data: Path, tmp_path: Path
) -> None:
    class Broken(PromptFL):
        def fit(self, *a: Any, **k: Any) -> FitOutput:
            raise ValueError("disk on fire")

    with pytest.raises(RoundFailedError, match=r"round 1: 0 of 6 clients reported.*disk on fire"):
        run(_cfg(synth_data), out=str(tmp_path / "r"), method_cls=Broken, console=QUIET)


def test_resume_reaches_the_same_final_state(synth_data: Path, tmp_path: Path) -> None:
    cfg = _cfg(synth_data, **{"federation.rounds": 3, "federation.clients_per_round": 3})
    run(cfg, out=str(tmp_path / "full"), console=QUIET)
    run(cfg, out=str(tmp_path / "cut"), stop_after=1, console=QUIET)
    assert checkpoint.load(tmp_path / "cut")[0] == 1
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as fh:
        fh.write('{"round": 2, "accuracy": 0.9')  # a line cut short by the interruption
    run(resume=str(tmp_path / "cut"), console=QUIET)
    full, cut = checkpoint.load(tmp_path / "full"), checkpoint.load(tmp_path / "cut")
    assert full[0] == cut[0] == 3
    np.testing.assert_allclose(full[1]["prompt.ctx"], cut[1]["prompt.ctx"], rtol=0, atol=1e-6)
    a, b = _metrics(tmp_path / "full"), _metrics(tmp_path / "cut")
    assert [r["round"] for r in b] == [1, 2, 3]
    assert [r["accuracy"] for r in a] == pytest.approx([r["accuracy"] for r in b], abs=1e-6)


def test_fedprox_and_prompt_avg_run(synth_data: Path, tmp_path: Path) -> None:
    for name in ("fedprox", "prompt_avg"):
        summary = run(
            _cfg(synth_data, **{"strategy.name": name, "federation.rounds": 1}),
            out=str(tmp_path / name),
            console=QUIET,
        )
        assert summary["strategy"] == name and summary["rounds_completed"] == 1
        # only the 4 x 64 shared context travels: 1,024 bytes per client each way
        assert summary["totals"]["bytes_up"] == 6 * 4 * 64 * 4


def test_zero_shot_evaluates_once(synth_data: Path, tmp_path: Path) -> None:
    import torch

    from fedrs.datasets.manifest import FedDataset
    from fedrs.models.backbone import load_backbone

    cfg = _cfg(synth_data, **{"method.name": "zeroshot"})
    summary = run(cfg, out=str(tmp_path / "z"), console=QUIET)
    m = _metrics(tmp_path / "z")
    assert len(m) == 1 and m[0]["round"] == 0
    assert summary["totals"]["bytes_up"] == 0
    # zero-shot CLIP by hand on the whole test split: the template's class prompts as classifier
    ds = FedDataset(synth_data)
    test = ds.test_shard()
    bb = load_backbone(cfg.model.arch, cfg.model.pretrained)
    prompts = [cfg.method.options.template.format(c.replace("_", " ")) for c in ds.classes]
    with torch.no_grad():
        text = torch.nn.functional.normalize(bb.model.encode_text(bb.tokenizer(prompts)), dim=-1)
        logits = (
            bb.model.logit_scale.exp() * bb.image_embeddings(bb.preprocess(test.images)) @ text.t()
        )
    y = torch.as_tensor(test.labels)
    correct = int((logits.argmax(1) == y).sum())
    assert m[0]["accuracy"] == pytest.approx(correct / len(test), abs=1e-12)
    loss = float(torch.nn.functional.cross_entropy(logits, y))
    assert m[0]["test_loss"] == pytest.approx(loss, rel=1e-4)


@pytest.mark.slow
def test_default_run_end_to_end(tmp_path: Path) -> None:
    """`fedrs run` with no config: synthetic data, tiny CLIP, 20 rounds; accuracy rises."""
    summary = run(RunConfig(), out=str(tmp_path / "default"), console=QUIET)
    run_dir = tmp_path / "default"
    for name in (
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "accuracy.png",
        "checkpoint/latest.json",
        "data/manifest.json",
    ):
        assert (run_dir / name).is_file(), name
    m = _metrics(run_dir)
    assert len(m) == 20
    for key in (
        "round",
        "accuracy",
        "loss",
        "clients_ok",
        "clients_failed",
        "bytes_up",
        "bytes_down",
        "wall_s",
        "personalized_accuracy",
    ):
        assert key in m[0]
    first, last = np.mean([r["accuracy"] for r in m[:2]]), np.mean([r["accuracy"] for r in m[-3:]])
    assert last > first + 0.1, (first, last)
    assert summary["rounds_completed"] == 20


def test_full_fedavg_sends_the_whole_model_and_bytes_are_counted(
    synth_data: Path, tmp_path: Path
) -> None:
    import open_clip

    from fedrs.models.backbone import register_configs

    register_configs()
    n_params = sum(p.numel() for p in open_clip.create_model("fedrs-tiny").parameters())
    cfg = _cfg(
        synth_data,
        **{
            "method.name": "fullft",
            "federation.rounds": 1,
            "federation.clients_per_round": 2,
            "client.lr": 1e-3,
        },
    )
    summary = run(cfg, out=str(tmp_path / "ff"), console=QUIET)
    assert summary["totals"]["bytes_up"] == 2 * n_params * 4
    assert summary["totals"]["bytes_down"] == 2 * n_params * 4
    assert summary["trainable_params_sent"] == n_params
