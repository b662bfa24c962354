"""Preflight's pieces: placement arithmetic, checkpoints, shard checks and their cache, usable
sampling, strict JSON, resume rules; and on the session's Ray cluster: the joined cluster's
nodes, damaged clients left out, finished runs left alone, failed runs leaving no directory."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console

from conftest import small_run
from fedrs.core.config import RunConfig
from fedrs.core.sampling import sample_clients, sample_usable
from fedrs.errors import ConfigError, ShardIntegrityError
from fedrs.io import dumps, json_safe, new_output_dir, write_json
from fedrs.methods.base import FitOutput
from fedrs.methods.promptfl import PromptFL
from fedrs.orchestrator.preflight import (
    ClusterError,
    check_cluster,
    check_data,
    check_ray_address,
    check_weights,
    placement_problem,
    resume_config,
    usable_clients,
)

QUIET = Console(file=io.StringIO())


def _res(**kw: Any) -> RunConfig:
    return RunConfig().replace(**{f"resources.{k}": v for k, v in kw.items()})


def test_placement_arithmetic() -> None:
    two_gpu_nodes = [{"CPU": 8, "GPU": 2}, {"CPU": 8, "GPU": 2}]
    assert (
        placement_problem(
            _res(num_actors=16, num_gpus_per_client=0.25, num_cpus_per_client=1), two_gpu_nodes
        )
        is None
    )
    # 0.4 of a GPU: two per GPU (a bundle never spans GPUs), so 8 fit, not 10
    assert placement_problem(_res(num_actors=8, num_gpus_per_client=0.4), two_gpu_nodes) is None
    msg = placement_problem(_res(num_actors=9, num_gpus_per_client=0.4), two_gpu_nodes)
    assert msg and "room for 8" in msg
    assert (
        placement_problem(_res(num_actors=2, placement_strategy="STRICT_SPREAD"), two_gpu_nodes)
        is None
    )
    msg = placement_problem(_res(num_actors=3, placement_strategy="STRICT_SPREAD"), two_gpu_nodes)
    assert msg and "STRICT_SPREAD" in msg and "room for 2" in msg
    msg = placement_problem(_res(num_actors=9, placement_strategy="STRICT_PACK"), two_gpu_nodes)
    assert msg and "room for 8" in msg
    assert placement_problem(_res(num_actors=16), two_gpu_nodes) is None
    msg = placement_problem(_res(num_actors=1, num_gpus_per_client=1), [{"CPU": 2}])
    assert msg and "num_gpus_per_client=0" in msg


def test_ray_address_probe_is_quick_and_one_line() -> None:
    import socket

    with socket.socket() as s:  # a port with nothing listening: bind, never listen
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(ClusterError, match=f"RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster"):
            check_ray_address(f"127.0.0.1:{port}")
    with pytest.raises(ClusterError, match="not host:port"):
        check_ray_address("nonsense")
    check_ray_address("auto")  # resolved by Ray itself
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_ray_address(f"127.0.0.1:{server.getsockname()[1]}")
        check_ray_address(f"ray://127.0.0.1:{server.getsockname()[1]}")


def test_checkpoint_checks(tmp_path: Path) -> None:
    ckpt = tmp_path / "clip.pt"
    torch.save({"w": torch.zeros(1000)}, ckpt)
    assert "checkpoint" in check_weights("fedrs-tiny", str(ckpt))
    blob = ckpt.read_bytes()
    ckpt.write_bytes(blob[: len(blob) // 2])  # an interrupted copy
    with pytest.raises(ConfigError, match="damaged or cut short"):
        check_weights("fedrs-tiny", str(ckpt))
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="is empty"):
        check_weights("fedrs-tiny", str(tmp_path / "empty.pt"))
    with pytest.raises(ConfigError, match="is not a file"):
        check_weights("fedrs-tiny", str(tmp_path))
    from safetensors.torch import save_file

    st = tmp_path / "clip.safetensors"
    save_file({"w": torch.zeros(1000)}, st)
    assert "checkpoint" in check_weights("fedrs-tiny", str(st))
    st.write_bytes(st.read_bytes()[:-10])
    with pytest.raises(ConfigError, match="not a complete safetensors"):
        check_weights("fedrs-tiny", str(st))
    with pytest.raises(ConfigError, match="neither a local checkpoint nor an open_clip tag"):
        check_weights("fedrs-tiny", "openai")


def test_tag_not_cached_and_host_unreachable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    import socket

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_dns(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(ConfigError, match=r"not in the local cache and .* cannot be reached"):
        check_weights("ViT-B-32", "openai")


def _copy_data(synth_data: Path, dst: Path) -> tuple[Path, dict[str, Any]]:
    shutil.copytree(synth_data, dst, ignore=shutil.ignore_patterns("images", ".verified.json"))
    return dst, json.loads((dst / "manifest.json").read_text())


def test_shard_check_hashes_once_per_build(
    synth_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedrs.datasets import shards
    from fedrs.datasets.manifest import FedDataset

    data, manifest = _copy_data(synth_data, tmp_path / "d")
    calls = []
    real = shards.file_sha256
    monkeypatch.setattr(shards, "file_sha256", lambda p: calls.append(p) or real(p))
    ds = FedDataset(data, verify=False)
    n = len(ds.entries())
    assert ds.check_shards() == {} and len(calls) == n
    assert ds.check_shards() == {} and len(calls) == n  # cached: sizes only
    # same size, other bytes: its mtime moved, so it is hashed again and caught
    shard = data / manifest["clients"][1]["shard"]
    blob = bytearray(shard.read_bytes())
    blob[-200] ^= 0xFF
    shard.write_bytes(bytes(blob))
    damaged = ds.check_shards()
    assert list(damaged) == [manifest["clients"][1]["shard"]]
    assert "sha256" in damaged[manifest["clients"][1]["shard"]]
    assert len(calls) == n + 1


def test_damaged_client_stops_or_is_excluded(synth_data: Path, tmp_path: Path) -> None:
    data, manifest = _copy_data(synth_data, tmp_path / "d")
    local = data / manifest["clients"][4]["local_test"]["shard"]
    local.write_bytes(local.read_bytes()[:10])
    cfg = RunConfig().replace(**{"data.path": str(data), "federation.clients_per_round": 5})
    with pytest.raises(ShardIntegrityError, match="client 4's shard is damaged"):
        check_data(cfg, None)
    checked = check_data(cfg.replace(**{"data.bad_shards": "exclude"}), None)
    assert list(checked.excluded) == [4] and "truncated" in checked.excluded[4]


def test_usable_sampling_never_draws_excluded_partitions() -> None:
    for n, parts in ((6, 6), (20, 6), (100_000, 7)):
        assert sample_usable(n, 4, 0, 3, parts) == sample_clients(n, 4, 0, 3)
        excluded = frozenset({1, parts - 1})
        usable = usable_clients(n, parts, dict.fromkeys(excluded, "x"))
        seen: set[int] = set()
        for rnd in range(1, 40):
            ids = sample_usable(n, min(4, usable), 0, rnd, parts, excluded)
            assert len(set(ids)) == len(ids) == min(4, usable)
            assert all(0 <= c < n and c % parts not in excluded for c in ids)
            seen |= set(ids)
        if n == 6:  # small enough to see every usable client
            assert seen == {c for c in range(n) if c % parts not in excluded}
    assert usable_clients(20, 6, {1: "x", 5: "x"}) == 20 - 4 - 3


def test_strict_json_never_writes_nan(tmp_path: Path) -> None:
    reasons: dict[str, str] = {}
    obj = {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2}}
    assert json_safe(obj, reasons) == {"a": None, "b": [1.0, None], "c": {"d": 2}}
    assert reasons == {"a": "not finite", "b[1]": "not finite"}
    write_json(tmp_path / "x.json", obj)
    text = (tmp_path / "x.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["a"] is None
    assert dumps({"x": float("-inf")}) == '{"x": null}'


def test_written_files_get_the_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "summary.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == 0o644


def test_new_output_dir_removes_only_what_it_created(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), new_output_dir(tmp_path / "a" / "b" / "c") as d:
        (d / "partial").write_text("x")
        raise RuntimeError("failed")
    assert not (tmp_path / "a").exists()
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "old").write_text("x")
    with pytest.raises(RuntimeError), new_output_dir(tmp_path / "keep"):
        raise RuntimeError("failed")
    assert (tmp_path / "keep" / "old").is_file()


def _run_dir(tmp_path: Path, rounds: int, done: int) -> Path:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoint").mkdir(parents=True)
    cfg = RunConfig().replace(**{"federation.rounds": rounds})
    write_json(run_dir / "config.json", cfg.to_dict())
    from fedrs.orchestrator import checkpoint

    checkpoint.save(run_dir, done, {"w": np.zeros(2, np.float32)}, {})
    return run_dir


def test_resume_rules(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path, rounds=5, done=3)
    safe = [
        "federation.rounds=9",
        "federation.round_timeout_s=30",
        "resources.num_actors=1",
        "resources.num_gpus_per_client=0.5",
        "data.feature_cache=false",
    ]
    cfg, done = resume_config(run_dir, safe)
    assert done == 3 and cfg.federation.rounds == 9 and cfg.resources.num_actors == 1
    for unsafe in ("client.lr=0.1", "data.alpha=0.1", "federation.seed=1", "method.n_ctx=8"):
        with pytest.raises(ConfigError, match=f"--resume cannot change {unsafe.split('=')[0]}"):
            resume_config(run_dir, [unsafe])
    with pytest.raises(ConfigError, match="below the 3 rounds"):
        resume_config(run_dir, ["federation.rounds=2"])
    with pytest.raises(ConfigError, match="not a fedrs run directory"):
        resume_config(tmp_path, [])


# ----------------------------------------------------------------------- on the Ray cluster
@pytest.mark.usefixtures("ray_cluster")
def test_joined_cluster_is_checked_against_its_nodes() -> None:
    # the session cluster: 2 nodes x (8 CPU, 2 GPU)
    check_cluster(_res(num_actors=16, num_gpus_per_client=0.25, num_cpus_per_client=1))
    with pytest.raises(ClusterError, match="2 node"):
        check_cluster(_res(num_actors=3, placement_strategy="STRICT_SPREAD"))
    with pytest.raises(ClusterError, match=r"waited 1 s for the autoscaler"):
        check_cluster(_res(num_actors=17, num_gpus_per_client=0.25, autoscale_wait_s=1))


def _cfg(data: Path, **sets: Any) -> RunConfig:
    return small_run(data, **{"federation.clients_per_round": 4, **sets})


@pytest.mark.usefixtures("ray_cluster")
def test_excluded_client_is_never_sampled_and_is_counted(synth_data: Path, tmp_path: Path):
    from fedrs.orchestrator.runner import run

    data, manifest = _copy_data(synth_data, tmp_path / "d")
    shard = data / manifest["clients"][3]["shard"]
    shard.write_bytes(shard.read_bytes()[:-1])
    out = io.StringIO()
    cfg = _cfg(data, **{"data.bad_shards": "exclude", "federation.clients_per_round": 5})
    summary = run(cfg, out=str(tmp_path / "r"), console=Console(file=out, width=400))
    assert list(summary["excluded_clients"]) == ["3"]
    assert "1 left out: damaged shards" in out.getvalue()
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    for rec in records:
        assert rec["clients_ok"] == 5 and "3" not in rec["clients"]


@pytest.mark.usefixtures("ray_cluster")
def test_finished_run_is_left_alone_and_banner_shows_strategy(
    synth_data: Path, tmp_path: Path
) -> None:
    from fedrs.orchestrator.runner import run

    out = io.StringIO()
    cfg = _cfg(synth_data, **{"method.name": "fedrsclip", "federation.rounds": 1})
    run(cfg, out=str(tmp_path / "r"), console=Console(file=out, width=400))
    assert "fedrsclip + fedavg of prompt.shared_ctx" in out.getvalue()
    files = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    again = run(resume=str(tmp_path / "r"), console=QUIET)
    assert again["already_finished"] is True
    assert {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()} == files
    with pytest.raises(ConfigError, match="already holds a run"):
        run(cfg, out=str(tmp_path / "r"), console=QUIET)
    more = run(resume=str(tmp_path / "r"), overrides=["federation.rounds=2"], console=QUIET)
    assert more["rounds_completed"] == 2
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["strategy_in_effect"] == "fedavg of prompt.shared_ctx"


@pytest.mark.usefixtures("ray_cluster")
def test_run_failing_before_round_one_leaves_no_directory(synth_data: Path, tmp_path: Path):
    from fedrs.orchestrator.aggregate import RoundFailedError
    from fedrs.orchestrator.runner import run

    class Broken(PromptFL):
        def fit(self, *a: Any, **k: Any) -> FitOutput:
            raise ValueError("disk on fire")

    with pytest.raises(RoundFailedError, match="disk on fire"):
        run(_cfg(synth_data), out=str(tmp_path / "new" / "r"), method_cls=Broken, console=QUIET)
    assert not (tmp_path / "new").exists()

    class BreaksLater(PromptFL):
        def fit(self, global_params: Any, private: Any, shard: Any, options: Any) -> FitOutput:
            if options.round == 2:
                raise ValueError("disk on fire")
            return super().fit(global_params, private, shard, options)

    with pytest.raises(RoundFailedError):
        run(_cfg(synth_data), out=str(tmp_path / "r2"), method_cls=BreaksLater, console=QUIET)
    assert (tmp_path / "r2" / "checkpoint" / "latest.json").is_file()  # kept for --resume


def test_evaluation_without_examples_is_null_with_a_reason(tmp_path: Path) -> None:
    """The driver's metrics line for a round whose evaluation produced nothing."""
    from fedrs.orchestrator import records

    rec: dict[str, Any] = {
        "round": 1,
        "loss": float("nan"),
        "accuracy": None,
        "null_reasons": {"accuracy": "no global test example was evaluated (2 tasks, 2 failed)"},
    }
    records.append(tmp_path, rec)
    line = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert line["loss"] is None and line["accuracy"] is None
    assert line["null_reasons"]["loss"].startswith("not finite")
    assert "2 failed" in line["null_reasons"]["accuracy"]
    assert "NaN" not in (tmp_path / "metrics.jsonl").read_text()


@pytest.mark.usefixtures("ray_cluster")
def test_actor_that_fails_to_start_is_one_line(synth_data: Path, tmp_path: Path) -> None:
    """A checkpoint that passes preflight (a complete torch file) but is not a CLIP: the client
    actors' __init__ raises inside the driver actor's __init__; the user gets that cause."""
    from fedrs.orchestrator.runner import run

    bogus = tmp_path / "not_clip.pt"
    torch.save({"foo": torch.zeros(3)}, bogus)
    cfg = _cfg(synth_data, **{"model.pretrained": str(bogus)})
    with pytest.raises(ConfigError, match=r"cannot load fedrs-tiny weights .*Missing key"):
        run(cfg, out=str(tmp_path / "r"), console=QUIET)
    assert not (tmp_path / "r").exists()
