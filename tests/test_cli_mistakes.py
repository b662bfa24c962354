"""The mistakes new users make, replayed through the CLI as they typed them: each is exit status
2 (or 0 where nothing is wrong), one line, no traceback, within seconds, and leaves every run
directory as it was (no new one, no changed file)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedrs.core.config import RunConfig

FEDRS = [sys.executable, "-m", "fedrs.cli"]


def fedrs(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    environ |= env or {}
    return subprocess.run(
        [*FEDRS, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout
    )


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256: what a failed command must leave as it was."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str, rc: int = 2) -> str:
    """Exit status ``rc``; the error is one line, ``fedrs: error: ...``, the last one written
    (progress logging may come before it); no traceback."""
    assert proc.returncode == rc, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    err = [line for line in lines if line.startswith("fedrs: error: ")]
    assert len(err) == 1 and lines[-1] == err[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


@pytest.mark.parametrize(
    ("sets", "needle", "machine"),
    [
        (["strategy.name=nope"], "unknown strategy.name 'nope'", False),
        (["model.arch=nope"], "unknown model.arch 'nope'", False),
        (["federation.clients_per_round=100"], "exceeds the 8 registered clients", False),
        (["method.name=nope"], "unknown method.name 'nope'", False),
        (["strategy.name=prompt_avg", "method.name=fullft"], "shared prompt", False),
        (["resources.num_actors=10000"], "cannot place 10000 client actors", True),
        (["model.pretrained=/nowhere/clip.pt"], "does not exist", True),
    ],
)
def test_bad_run_settings_fail_before_ray_with_one_line(
    workdir: Path, sets: list[str], needle: str, machine: bool
) -> None:
    args = [a for s in sets for a in ("--set", s)]
    proc = fedrs(workdir, "run", *args)
    assert_one_line_error(proc, needle)
    assert list(workdir.iterdir()) == []  # no runs/<timestamp>, nothing
    # the same preflight guards the plan; what depends on this machine (resources, weights)
    # is a warning there, since a plan may be made for another machine
    plan = fedrs(workdir, "run", "--dry-run", *args)
    if machine:
        assert plan.returncode == 0, plan.stderr
        assert "warning: this machine could not run it" in plan.stdout and needle in plan.stdout
    else:
        assert_one_line_error(plan, needle)


def test_gpu_share_without_a_gpu(workdir: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = fedrs(workdir, "run", "--set", "resources.num_gpus_per_client=0.25", "--out", "r")
    assert_one_line_error(proc, "0 GPU", "num_gpus_per_client=0")
    assert list(workdir.iterdir()) == []


def test_open_clip_tag_not_cached_offline(workdir: Path, tmp_path: Path) -> None:
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HOME": str(tmp_path)}
    sets = ["--set", "model.arch=ViT-B-32", "--set", "model.pretrained=openai"]
    proc = fedrs(workdir, "run", *sets, env=env)
    assert_one_line_error(proc, "'openai'", "not in the local cache")
    assert list(workdir.iterdir()) == []
    # the plan is still made (it may be for another machine), with the problem as a warning
    plan = fedrs(workdir, "run", "--dry-run", *sets, env=env)
    assert plan.returncode == 0, plan.stderr
    assert "warning: this machine could not run it" in plan.stdout
    assert "not in the local cache" in plan.stdout


def test_unreachable_ray_address(workdir: Path) -> None:
    proc = fedrs(workdir, "run", "--out", "r", env={"RAY_ADDRESS": "127.0.0.1:1"}, timeout=60)
    assert_one_line_error(proc, "RAY_ADDRESS=127.0.0.1:1", "no Ray cluster answers")
    assert list(workdir.iterdir()) == []


def test_warm_needs_a_cluster_that_stays_up(workdir: Path) -> None:
    proc = fedrs(workdir, "warm")
    assert_one_line_error(proc, "set RAY_ADDRESS")
    proc = fedrs(workdir, "warm", env={"RAY_ADDRESS": "127.0.0.1:1"}, timeout=60)
    assert_one_line_error(proc, "RAY_ADDRESS=127.0.0.1:1", "no Ray cluster answers")


def fake_run(run_dir: Path, rounds_done: int, rounds: int = 2, finished: bool = True) -> Path:
    """A run directory as `fedrs run` leaves it (config, checkpoint pointer, metrics, summary),
    without spending a Ray start on it: what the CLI must not touch."""
    cfg = RunConfig().replace(**{"federation.rounds": rounds})
    (run_dir / "checkpoint").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict()))
    (run_dir / "checkpoint" / "latest.json").write_text(
        json.dumps({"round": rounds_done, "file": f"round_{rounds_done:05d}.safetensors"})
    )
    (run_dir / f"checkpoint/round_{rounds_done:05d}.safetensors").write_bytes(b"tensors")
    lines = [json.dumps({"round": r, "accuracy": 0.1 * r}) for r in range(1, rounds_done + 1)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if finished:
        (run_dir / "summary.json").write_text(json.dumps({"rounds_completed": rounds_done}))
    return run_dir


def test_out_onto_an_existing_run_is_refused(workdir: Path) -> None:
    run_dir = fake_run(workdir / "r1", 2)
    before = tree(workdir)
    proc = fedrs(workdir, "run", "--out", "r1")
    assert_one_line_error(proc, "already holds a run", "--resume r1", "--overwrite")
    assert tree(workdir) == before
    (workdir / "notes").mkdir()
    (workdir / "notes" / "thesis.tex").write_text("precious")
    proc = fedrs(workdir, "run", "--out", "notes", "--overwrite")
    assert_one_line_error(proc, "holds no fedrs run")  # --overwrite never deletes foreign files
    assert (workdir / "notes" / "thesis.tex").read_text() == "precious"
    assert run_dir.is_dir()


def test_resume_refuses_changes_that_change_what_checkpoints_mean(workdir: Path) -> None:
    fake_run(workdir / "r1", 1, rounds=3, finished=False)
    before = tree(workdir)
    for key, value in (("method.name", "fedrsclip"), ("model.arch", "fedrs-small")):
        proc = fedrs(workdir, "run", "--resume", "r1", "--set", f"{key}={value}")
        assert_one_line_error(proc, f"--resume cannot change {key}")
        assert tree(workdir) == before  # config.json not rewritten
    proc = fedrs(workdir, "run", "--resume", "r1", "--set", "federation.rounds=0")
    assert_one_line_error(proc, "federation.rounds must be >= 1")
    assert tree(workdir) == before


def test_resume_of_a_finished_run_says_so_and_touches_nothing(workdir: Path) -> None:
    fake_run(workdir / "r1", 2, rounds=2)
    before = tree(workdir)
    proc = fedrs(workdir, "run", "--resume", "r1")
    assert proc.returncode == 0, proc.stderr
    assert "already finished" in proc.stdout and "nothing to do" in proc.stdout
    assert tree(workdir) == before


def test_damaged_shards_stop_the_run_before_round_one(synth_data: Path, workdir: Path) -> None:
    data = workdir / "data"
    shutil.copytree(synth_data, data)
    shutil.rmtree(data / "images", ignore_errors=True)
    manifest = json.loads((data / "manifest.json").read_text())
    test_shard = data / manifest["test"]["shard"]
    blob = test_shard.read_bytes()
    test_shard.write_bytes(blob[: len(blob) // 2])
    proc = fedrs(workdir, "run", "--set", f"data.path={data}", "--out", "r")
    assert_one_line_error(proc, "global test shard is damaged", "truncated")
    assert not (workdir / "r").exists()
    test_shard.write_bytes(blob)
    client = data / manifest["clients"][2]["shard"]
    client.write_bytes(client.read_bytes()[:-100])
    proc = fedrs(workdir, "run", "--set", f"data.path={data}", "--out", "r")
    assert_one_line_error(proc, "client 2's shard is damaged", "data.bad_shards=exclude")
    assert not (workdir / "r").exists()


def test_failed_data_build_leaves_no_folder(tiny_folder: Path, workdir: Path) -> None:
    (tiny_folder / "class0" / "broken.png").write_bytes(b"not a png at all")
    proc = fedrs(
        workdir,
        "data",
        "build",
        "--source",
        f"s={tiny_folder}",
        "--out",
        "new/ds",
        "--num-clients",
        "2",
    )
    assert_one_line_error(proc, "broken.png", "--skip-bad")
    assert list(workdir.iterdir()) == []


def test_help_is_for_users_and_every_option_is_documented() -> None:
    import argparse

    from fedrs.cli import build_parser

    text = subprocess.run([*FEDRS, "--help"], capture_output=True, text=True).stdout
    assert "FedrsError" not in text and "fedrs methods" in text

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction):
                assert action.help, f"`{path}` option {action.option_strings or action.dest}"

    walk(build_parser(), "fedrs")


def test_methods_strategies_and_config_are_listed(workdir: Path) -> None:
    from fedrs.core.strategies import STRATEGIES
    from fedrs.methods import METHODS

    out = fedrs(workdir, "methods").stdout
    for name, cls in METHODS.items():
        assert name in out and cls.summary in out
    assert "lambda_dpa=1.0" in out
    out = fedrs(workdir, "strategies").stdout
    for name in STRATEGIES:
        assert name in out
    assert "mu=0.01" in out
    toml = fedrs(workdir, "config", "--set", "federation.rounds=3").stdout
    import tomllib

    loaded = tomllib.loads(toml)
    assert loaded["federation"]["rounds"] == 3
    assert RunConfig().replace(**{"federation.rounds": 3}).to_dict() == loaded


def test_readme_matches_the_package() -> None:
    """The README's Python version is pyproject's, and it documents every `fedrs bench`."""
    import re
    import tomllib

    from fedrs.cli import BENCHMARKS

    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    requires = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["requires-python"]
    assert re.search(r"Python (\d+\.\d+)\+", readme).group(1) == requires.removeprefix(">=")
    bench_section = readme.split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    for name in BENCHMARKS:
        assert f"- `{name}`:" in bench_section, name


@pytest.mark.slow
def test_sigkill_leaves_no_ray_process_behind(workdir: Path) -> None:
    """`fedrs run` killed with SIGKILL mid-run: the local Ray it started (its agents too, which
    Ray itself leaves running for a minute or two) is gone within seconds."""
    import signal
    import time

    from fedrs import reaper

    environ = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    out, err = (open(workdir / n, "w") for n in ("out.txt", "err.txt"))  # noqa: SIM115
    proc = subprocess.Popen(
        [*FEDRS, "run", "--out", "r", "--set", "federation.rounds=10000"],
        cwd=workdir,
        env=environ,
        stdout=out,
        stderr=err,
    )
    metrics = workdir / "r" / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
        time.sleep(0.5)
    ours = reaper.descendants(proc.pid)
    names = {pid: (Path(f"/proc/{pid}/cmdline").read_bytes()[:60]) for pid in ours}
    assert any(b"DashboardAgent" in n or b"agent" in n for n in names.values()), names
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    alive = ours
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = {p: t for p, t in ours.items() if (reaper.process_info(p) or (0, -1))[1] == t}
    assert not alive, {p: names[p] for p in alive}
    assert (workdir / "r" / "checkpoint" / "latest.json").is_file()  # resumable
    # output to files: quiet and plain (issue 28): no colour codes, no warning per actor about
    # random weights (the banner says it once), no Ray token-auth default warning
    out.close()
    err.close()
    text = (workdir / "out.txt").read_text() + (workdir / "err.txt").read_text()
    assert "round   1/10000" in text and "weights: random init" in text
    assert "\x1b[" not in text
    assert "No pretrained weights loaded" not in text
    assert "Token authentication is enabled" not in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["sweep"], "give one sweep file or --resume DIR"),
        (["sweep", "no-such.toml"], "cannot read sweep file no-such.toml"),
        (["sweep", "bad.toml"], "unknown sweep table(s) ['grids']"),
        (["sweep", "ok.toml", "--set", "data.alpha=-1"], "data.alpha must be > 0"),
        (["sweep", "ok.toml", "--out", "taken"], "--out taken exists and is not empty"),
        (["sweep", "--resume", "taken"], "holds no sweep"),
        (["sweep", "--resume", "taken", "--out", "x"], "drop --out"),
        (["sweep", "report"], "usage: fedrs sweep report DIR"),
        (["sweep", "report", "taken"], "holds no sweep"),
        (["sweep", "report", "nowhere"], "nowhere: missing"),
        (["sweep", "--resume", "nowhere"], "nowhere: missing"),
        (["sweep", "ok.toml", "--mlflow", "file:/tmp/x"], "--mlflow"),
    ],
)
def test_sweep_mistakes_are_one_line_and_write_nothing(
    workdir: Path, args: list[str], needle: str
) -> None:
    (workdir / "bad.toml").write_text("[grids]\n")
    (workdir / "ok.toml").write_text('[grid]\n"federation.seed" = [0, 1]\n')
    (workdir / "taken").mkdir()
    (workdir / "taken" / "notes.txt").write_text("mine")
    before = tree(workdir)
    proc = fedrs(workdir, *args)
    assert_one_line_error(proc, needle)
    assert tree(workdir) == before
    assert sorted(p.name for p in workdir.iterdir()) == ["bad.toml", "ok.toml", "taken"]


def test_an_out_without_room_for_the_run_is_one_line_before_ray(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out on a filesystem with less room than the run's checkpoints and private state need
    (``room_needed``'s rule): rc 2, one line naming both sizes, nothing written, no Ray."""
    import collections

    from fedrs import cli
    from fedrs.orchestrator import preflight

    cfg = RunConfig().replace(**{"method.name": "fedrsclip", "federation.rounds": 3})
    shapes = {"global": {"a": (2, 8)}, "private": {"b": (4, 4), "c": (3,)}}
    room = preflight.room_needed(cfg, shapes, registered=100)
    # 3 x 64 B of checkpoints + 2 x 76 B for min(100, 3 rounds x 6 per round) = 18 clients
    assert room == {
        "global": 64,
        "private": 76,
        "clients": 18,
        "need": 3 * 64 + 2 * 76 * 18 + preflight.ROOM_SLACK,
    }
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda path: usage(1 << 30, 1 << 30, 1 << 20))

    def no_ray() -> None:
        raise AssertionError("Ray was joined before the room check")

    monkeypatch.setattr("fedrs.orchestrator.runner.connect_ray", no_ray)
    monkeypatch.setattr("fedrs.orchestrator.spawn.connect_ray", no_ray)
    monkeypatch.chdir(workdir)
    rc = cli.main(["run", "--out", "r", "--set", "method.name=fedrsclip"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("fedrs: error: --out r: the run needs")
    assert "MB free" in err[0] and "1 MB free" in err[0]
    assert not (workdir / "r").exists()
