"""`ray job submit` of `fedrs run` against a Ray head the test starts on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: all bound at once, so no two calls hand out the same one."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_http(url: str, timeout: float, head: subprocess.Popen, log: Path) -> None:
    """Wait for the head's dashboard; fail with the head's log if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # the dashboard answered (401 until the request carries the token)
        except OSError:
            time.sleep(1)
    tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
    raise TimeoutError(f"{url} (head exit code {head.poll()}); head log tail:\n{tail}")


@pytest.mark.slow
def test_ray_job_submit_fedrs_run(synth_data: Path, tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent
    port, dash, *more = _free_ports(7)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "token"  # the head enables token auth; the job client must send it
    log = open(tmp_path / "head.log", "w")  # noqa: SIM115
    head = subprocess.Popen(
        [
            str(bindir / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            # Every port explicit and free: the session's own test cluster already holds Ray's
            # defaults (dashboard agent 52365, client server 10001, ...).
            *(
                f"--{flag}={free}"
                for free, flag in zip(
                    more,
                    (
                        "dashboard-agent-listen-port",
                        "dashboard-agent-grpc-port",
                        "runtime-env-agent-port",
                        "metrics-export-port",
                        "ray-client-server-port",
                    ),
                    strict=True,
                )
            ),
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=true",
            "--disable-usage-stats",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    run_dir = tmp_path / "run"
    try:
        _wait_http(f"http://127.0.0.1:{dash}/api/version", 180, head, tmp_path / "head.log")
        submit = [
            str(bindir / "ray"),
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{dash}",
            "--",
            str(bindir / "fedrs"),
            "run",
            "--out",
            str(run_dir),
            "--set",
            f"data.path={synth_data}",
            "--set",
            "federation.rounds=2",
            "--set",
            "federation.clients_per_round=3",
            "--set",
            "client.local_epochs=1",
        ]
        for _ in range(12):  # the dashboard can answer before the head's job agent registers
            job = subprocess.run(
                submit,
                capture_output=True,
                text=True,
                timeout=400,
                env=env,
            )
            if job.returncode == 0 or "No available agent" not in job.stdout + job.stderr:
                break
            time.sleep(5)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "round   2/2" in job.stdout
        assert "succeeded" in job.stdout.lower()
        rounds = [
            json.loads(x)["round"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
        ]
        assert rounds == [1, 2]
        assert (run_dir / "summary.json").is_file()

        # a sweep submitted the same way: its trials run on the job's cluster
        sweep_file = tmp_path / "sweep.toml"
        sweep_file.write_text(
            f'[base]\ndata.path = "{synth_data}"\nfederation.rounds = 1\n'
            "federation.clients_per_round = 2\nclient.local_epochs = 1\n"
            'resources.num_actors = 1\n\n[grid]\n"federation.seed" = [0, 1]\n'
        )
        sweep_dir = tmp_path / "sweep"
        job = subprocess.run(
            [*submit[: submit.index("run")], "sweep", str(sweep_file), "--out", str(sweep_dir)],
            capture_output=True,
            text=True,
            timeout=400,
            env=env,
        )
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "2/2 done" in job.stdout and "0 failed" in job.stdout
        table = (sweep_dir / "results.csv").read_text().splitlines()
        assert len(table) == 3 and all(",finished," in row for row in table[1:])
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops its cluster on SIGTERM
        stopped = True
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stopped = False
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        log.close()
    assert stopped, "`ray start --block` did not stop its cluster within 60 s of SIGTERM"
