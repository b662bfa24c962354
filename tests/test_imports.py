"""What each process imports: nothing heavy where it is not used. The CLI's help, the data
commands' help and a data build import none of torch, torchvision, open_clip, Ray or Flower;
preflight and the
driver (which check and aggregate, and never build a backbone) import no open_clip or
torchvision (open_clip's import alone is seconds: torchvision, torch._dynamo); the client
actors, which build the backbone, do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "torchvision", "open_clip", "ray", "flwr")


def _imported(code: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after ``code``."""
    probe = f"""
import sys
{code}
print("HEAVY", ",".join(m for m in {HEAVY!r} if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("HEAVY")][-1]
    return [m for m in line.split(" ", 1)[1].split(",") if m]


@pytest.mark.parametrize(
    "argv", [["--help"], ["data", "build", "--help"], ["sweep", "--help"], ["run", "--help"]]
)
def test_help_imports_nothing_heavy(argv: list[str]) -> None:
    code = f"""
from fedrs.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
"""
    assert _imported(code) == []


def test_a_data_build_imports_nothing_heavy(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "built"
    code = f"""
from fedrs.cli import main
main(["data", "build", "--source", "s={tiny_folder}", "--num-clients", "2",
      "--image-size", "16", "--out", "{out}"])
"""
    assert _imported(code) == []
    assert (out / "manifest.json").is_file()


def test_preflight_reads_model_configs_without_open_clip() -> None:
    code = """
from fedrs.core.config import RunConfig
from fedrs.orchestrator.preflight import resolve_names
method, strategy, shapes = resolve_names(RunConfig(), 10)
assert shapes["global"], shapes
"""
    found = _imported(code)
    assert "torch" in found  # the method's class: used
    assert "open_clip" not in found and "torchvision" not in found


def test_model_config_equals_open_clips_for_every_architecture() -> None:
    import open_clip

    from fedrs.models.backbone import model_config, register_configs

    register_configs()
    names = open_clip.list_models()
    assert {"ViT-B-32", "fedrs-tiny", "fedrs-small"} <= set(names)
    for name in names:
        assert model_config(name) == open_clip.get_model_config(name), name


def test_the_driver_imports_no_open_clip_and_the_actors_do(ray_cluster, tmp_path: Path) -> None:
    from rich.console import Console

    from conftest import small_run
    from fedrs.datasets.partition import PartitionSpec
    from fedrs.datasets.synth import build_synthetic
    from fedrs.orchestrator.runner import run

    data = tmp_path / "data"
    build_synthetic(
        data,
        per_class=4,
        image_size=32,
        partition=PartitionSpec(scheme="iid", num_clients=2, min_examples=2),
    )
    cfg = small_run(data, **{"federation.clients_per_round": 2, "resources.num_actors": 1})
    summary = run(cfg, out=str(tmp_path / "run"), console=Console(quiet=True))
    start = summary["startup"]
    assert "open_clip" not in start["driver_modules"]
    assert "torchvision" not in start["driver_modules"]
    assert "open_clip" in start["actor_modules"]  # it built the backbone
    # the parts of the start add up to no more than the time before round 1
    parts = start["preflight_s"] + start["ray_s"] + start["spawn_s"] + start["actors_up_s"]
    assert parts <= start["until_round_1_s"] + 1e-3
