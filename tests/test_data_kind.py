"""A method on the wrong kind of data is refused in preflight, before Ray, in one line naming
the fix (`Method.needs` against what the build holds)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli_mistakes import assert_one_line_error, fedrs, tree

from conftest import make_caption_dataset, make_imagefolder
from fedrs.core.config import from_dict
from fedrs.datasets.builder import BuildSpec, build
from fedrs.datasets.partition import PartitionSpec
from fedrs.errors import ConfigError
from fedrs.methods import method_class
from fedrs.orchestrator.preflight import check_data, check_data_kind


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kinds")
    out = {}
    for kind, src in (
        ("captions", make_caption_dataset(root / "caps")),
        ("images", make_imagefolder(root / "imgs", {"forest": 6, "river": 6})),
    ):
        out[kind] = root / f"built-{kind}"
        build(
            BuildSpec(
                sources=((kind, str(src)),),
                out=str(out[kind]),
                partition=PartitionSpec(scheme="iid", num_clients=2, min_examples=1),
                image_size=16,
                workers=1,
            )
        )
    return out


@pytest.mark.parametrize(
    ("method", "kind", "needle"),
    [
        ("promptfl", "captions", "needs labels"),
        ("pe_rsitr", "images", "needs captions"),
        ("feddiff", "images", "needs modalities"),
    ],
)
def test_the_wrong_kind_of_data_is_refused(
    builds: dict[str, Path], method: str, kind: str, needle: str
) -> None:
    cfg = from_dict({"method": {"name": method}, "data": {"path": str(builds[kind])}})
    with pytest.raises(ConfigError, match=needle):
        check_data_kind(cfg, check_data(cfg, None), method_class(method))


def test_the_right_kind_passes(builds: dict[str, Path]) -> None:
    for method, kind in (("promptfl", "images"), ("pe_rsitr", "captions")):
        cfg = from_dict({"method": {"name": method}, "data": {"path": str(builds[kind])}})
        check_data_kind(cfg, check_data(cfg, None), method_class(method))
    cfg = from_dict({"method": {"name": "feddiff"}})  # its synthetic default is a scene
    check_data_kind(cfg, check_data(cfg, None), method_class("feddiff"))


def test_cli_refuses_before_ray_and_writes_nothing(builds: dict[str, Path], tmp_path: Path) -> None:
    before = tree(tmp_path)
    proc = fedrs(tmp_path, "run", "--set", f"data.path={builds['captions']}", "--out", "r")
    assert_one_line_error(proc, "method promptfl needs labels", "--caption-classes")
    assert "Ray instance" not in proc.stderr
    assert tree(tmp_path) == before and not (tmp_path / "r").exists()


def test_runs_that_cannot_mean_anything_are_refused_or_said_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from fedrs.orchestrator.preflight import preflight

    short = from_dict({"method": {"name": "feddiff"}, "federation": {"rounds": 3}})
    with pytest.raises(ConfigError, match=r"rounds=3 leaves FedDiff's classifier untrained"):
        preflight(short, fetch_weights=False)
    ok = from_dict(
        {"method": {"name": "feddiff", "diffusion_rounds": 2}, "federation": {"rounds": 3}}
    )
    assert method_class("feddiff").check_run(ok) == []
    teacher = from_dict({"method": {"name": "clip2fl"}})
    (warning,) = method_class("clip2fl").check_run(teacher)
    assert "random weights" in warning and "model.pretrained" in warning
    assert method_class("creff").check_run(from_dict({"method": {"name": "creff"}})) == []
    no_kd = from_dict({"method": {"name": "clip2fl", "kd_alpha": 0.0, "lambda_pcl": 0.0}})
    assert method_class("clip2fl").check_run(no_kd) == []
    ckpt = from_dict({"method": {"name": "clip2fl"}, "model": {"pretrained": "openai"}})
    assert method_class("clip2fl").check_run(ckpt) == []
    with caplog.at_level("WARNING"):
        preflight(teacher, fetch_weights=False)
    assert any(
        "teaches" in r.getMessage() or "random weights" in r.getMessage() for r in caplog.records
    )


def test_every_option_error_of_a_method_comes_in_one_message() -> None:
    with pytest.raises(ConfigError) as err:
        from_dict({"method": {"name": "pe_rsitr", "lambda_views": -1, "adapter_dropout": 2}})
    text = str(err.value)
    assert "method.lambda_views must be >= 0" in text and "method.adapter_dropout" in text
    assert "\n" not in text
    with pytest.raises(ConfigError, match=r"n_ctx must be >= 1, got 0; method\.cmfa_positives"):
        from_dict({"method": {"name": "fedrsclip", "n_ctx": 0, "cmfa_positives": "x"}})


def test_cli_replays_the_meaningless_runs(tmp_path: Path) -> None:
    proc = fedrs(tmp_path, "run", "--set", "method.name=feddiff", "--set", "federation.rounds=3")
    assert_one_line_error(proc, "leaves FedDiff's classifier untrained", "diffusion_rounds")
    assert "Ray instance" not in proc.stderr and not any(tmp_path.iterdir())
    proc = fedrs(tmp_path, "run", "--dry-run", "--set", "method.name=clip2fl")
    assert proc.returncode == 0, proc.stderr
    assert "random weights" in proc.stderr and "model.pretrained" in proc.stderr
