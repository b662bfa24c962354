"""The vs-flower benchmark end to end at a tiny size: both systems run the same client code under
their own Ray, and the JSON carries the ratio and raw figures (no wall-clock assertions)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedrs.benchmarks import flower_baseline, vs_flower
from fedrs.errors import ConfigError

pytestmark = pytest.mark.slow


def test_vs_flower_runs_both_systems_and_reports_the_ratio(tmp_path: Path) -> None:
    out = tmp_path / "vf.json"
    result = vs_flower.main(
        json_path=str(out),
        arch="fedrs-tiny",
        image_size=32,
        per_class=4,
        clients=2,
        rounds=2,
        workers=1,
        batch_size=8,
        methods="promptfl",
        systems=["fedrs", "flower"],
    )
    saved = json.loads(out.read_text())
    assert saved["ratio"] == result["ratio"] and math.isfinite(saved["ratio"])
    assert saved["ratio"] > 0 and saved["target"] == vs_flower.TARGETS["promptfl"]
    for system in ("fedrs", "flower"):
        raw = saved["raw"][f"{system}/promptfl"]
        assert raw["updates"] == 4 and len(raw["round_s"]) == 2  # 2 clients x 2 rounds
        assert raw["round_updates"] == [2, 2]
    assert saved["raw"]["fedrs/promptfl"]["bytes_up"] > 0
    # same client work: Flower and fedrs end with the same global prompt (float rounding only;
    # fedrs trains on cached image features, Flower re-encodes the images every step)
    moved = saved["raw"]["flower/promptfl"]["trained_max_abs"]
    assert moved > 1e-3  # training did move the prompt ...
    assert saved["same_work_max_abs_diff"]["promptfl"]["vs flower"] < 1e-3 * moved  # ... alike
    vs = saved["ratios"]["promptfl"]["vs flower"]
    assert set(vs) == set(vs_flower.BASES) and saved["ratio"] == vs["per_round"]
    # no orchestrator beats its client code: fedrs's rounds take at least their fits' time
    # spread over the workers (5% for timer placement), so its ratio stays under the ceiling
    ceiling = saved["ceilings"]["promptfl"]["vs flower"]
    assert 0 < saved["ratio"] <= 1.05 * ceiling
    fedrs_raw = saved["raw"]["fedrs/promptfl"]
    assert [len(r) for r in fedrs_raw["round_train_s"]] == [2, 2]
    for system in ("fedrs", "flower"):
        raw = saved["raw"][f"{system}/promptfl"]
        # the spans nest: rounds within "from Ray up" within the whole run
        assert sum(raw["round_s"]) <= raw["from_ray_s"] <= raw["total_s"]
    assert (tmp_path / "vf.png").is_file() or any(tmp_path.glob("*.png"))
    assert "command" in saved["machine"]


def test_unknown_system_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match="unknown system 'flwr'"):
        vs_flower.main(systems=["fedrs", "flwr"])


def test_both_sides_get_the_same_gpu_share() -> None:
    """By default each worker gets 1/workers of the GPU where CUDA is there, else none; a share
    given is the same for fedrs's actors and Flower's workers, and both get as many workers."""
    import torch

    opts = {**vs_flower.DEFAULTS, "workers": 4}
    assert vs_flower._gpus_per_client(opts) == (0.25 if torch.cuda.is_available() else 0.0)
    opts["gpus_per_client"] = 0.25  # as _gpus_per_client passes a valid share on a GPU machine
    cfg = vs_flower._run_config(opts, "fedrsclip", "/nonexistent")
    backend = flower_baseline.backend_config(cfg)
    assert cfg["resources"]["num_gpus_per_client"] == 0.25
    assert backend["client_resources"] == {"num_cpus": 1, "num_gpus": 0.25}
    assert backend["init_args"]["num_cpus"] == cfg["resources"]["num_actors"] == 4


@pytest.mark.parametrize("share", [1.5, -0.5])
def test_gpu_share_out_of_range_is_a_one_line_error(share: float) -> None:
    with pytest.raises(ConfigError, match="must be a share"):
        vs_flower._gpus_per_client({**vs_flower.DEFAULTS, "gpus_per_client": share})


def test_gpu_share_without_cuda_is_a_one_line_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        vs_flower.main(gpus_per_client=0.5, systems="fedrs", methods="promptfl")
