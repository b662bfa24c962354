"""Client-level DP: clipping and noise by hand, epsilon from Opacus's accountant, and a central
DP run whose metrics carry (epsilon, delta) and which resumes to the same tensors."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console

from fedrs.errors import ConfigError
from fedrs.orchestrator.privacy import epsilon, gaussian_noise, privatize_local
from fedrs.orchestrator.strategies import ClientUpdate


def test_central_dp_clips_counts_once_and_adds_one_noise() -> None:
    from fedrs.orchestrator.driver import central_dp

    cfg = SimpleNamespace(clip_norm=1.0, noise_multiplier=0.5, delta=1e-5, accountant="rdp")
    current = {"w": np.zeros(2, np.float32)}
    ups = [
        ClientUpdate(0, {"w": np.array([3.0, 4.0], "f4")}, 100),
        ClientUpdate(1, {"w": np.array([0.0, 0.5], "f4")}, 1),
    ]
    out = central_dp(current, ups, cfg, seed=7, rnd=2)
    noise = gaussian_noise([7, 2, 0xD9, 0], (2,), 0.5 * 1.0 / 2)  # sigma C / n
    np.testing.assert_allclose(out[0].params["w"], np.array([0.6, 0.8]) + noise, rtol=1e-6)
    np.testing.assert_allclose(out[1].params["w"], np.array([0.0, 0.5]) + noise, rtol=1e-6)
    assert [u.num_examples for u in out] == [1, 1]


def test_local_dp_clips_and_noises_what_a_client_sends() -> None:
    cfg = SimpleNamespace(clip_norm=1.0, noise_multiplier=2.0)
    got = {"w": np.array([1.0, 1.0], "f4")}
    sent = privatize_local({"w": np.array([4.0, 5.0], "f4")}, got, cfg, 0, 3, 9)
    noise = gaussian_noise([0, 3, 9, 0x10C, 0], (2,), 2.0)
    np.testing.assert_allclose(sent["w"], np.array([1.6, 1.8]) + noise, rtol=1e-6)


def test_epsilon_is_opacus_accountant() -> None:
    from opacus.accountants import RDPAccountant

    cfg = SimpleNamespace(noise_multiplier=1.1, delta=1e-5, accountant="rdp")
    acc = RDPAccountant()
    for _ in range(5):
        acc.step(noise_multiplier=1.1, sample_rate=0.3)
    assert epsilon(cfg, 5, 0.3) == pytest.approx(acc.get_epsilon(delta=1e-5))
    assert epsilon(cfg, 0, 0.3) == 0.0 and epsilon(cfg, 10, 0.3) > epsilon(cfg, 5, 0.3)
    prv = SimpleNamespace(noise_multiplier=1.1, delta=1e-5, accountant="prv")
    assert 0 < epsilon(prv, 5, 0.3) < float("inf")


def test_dp_refuses_methods_with_unprotected_extras(synth_data: Path) -> None:
    from fedrs.orchestrator.config import RunConfig
    from fedrs.orchestrator.preflight import resolve_names

    cfg = RunConfig().replace(
        **{"data.path": str(synth_data), "method.name": "creff", "privacy.mode": "central"}
    )
    with pytest.raises(ConfigError, match="extra payloads"):
        resolve_names(cfg, 10)


@pytest.mark.usefixtures("ray_cluster")
def test_central_dp_run_reports_epsilon_and_resumes_exactly(
    synth_data: Path, tmp_path: Path
) -> None:
    from conftest import small_run
    from fedrs.orchestrator import checkpoint
    from fedrs.orchestrator.runner import run

    cfg = small_run(
        synth_data,
        **{
            "federation.rounds": 3,
            "federation.clients_per_round": 3,
            "privacy.mode": "central",
            "privacy.noise_multiplier": 0.8,
            "privacy.clip_norm": 0.5,
        },
    )
    quiet = Console(file=io.StringIO())
    run(cfg, out=str(tmp_path / "full"), console=quiet)
    run(cfg, out=str(tmp_path / "cut"), console=quiet, stop_after=1)
    run(resume=str(tmp_path / "cut"), console=quiet)
    m = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    eps = [r["epsilon"] for r in m]
    assert eps == sorted(eps) and eps[0] > 0 and all(r["delta"] == 1e-5 for r in m)
    cfg_p = SimpleNamespace(noise_multiplier=0.8, delta=1e-5, accountant="rdp")
    assert eps[-1] == pytest.approx(epsilon(cfg_p, 3, 3 / 6))
    _, a, _ = checkpoint.load(tmp_path / "full")
    _, b, _ = checkpoint.load(tmp_path / "cut")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.usefixtures("ray_cluster")
def test_tampered_checkpoint_and_corrupt_client_state(synth_data: Path, tmp_path: Path) -> None:
    """A tampered checkpoint stops --resume with one line; a corrupt private-state file is a
    counted, logged fresh start of that client."""
    import subprocess
    import sys

    from conftest import small_run
    from fedrs.orchestrator.runner import run

    cfg = small_run(synth_data, **{"method.name": "fedrsclip", "federation.rounds": 2})
    out = tmp_path / "run"
    run(cfg, out=str(out), console=Console(file=io.StringIO()), stop_after=1)
    (state,) = (out / "client_state").glob("*/0/r1.safetensors")
    state.write_bytes(state.read_bytes()[:20])  # cut short
    ckpt = out / "checkpoint" / "round_00001.safetensors"
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    done = subprocess.run(
        [sys.executable, "-m", "fedrs.cli", "run", "--resume", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "sha256" in done.stderr
    assert done.stderr.strip().count("\n") == 0
    ckpt.write_bytes(good)
    run(resume=str(out), console=Console(file=io.StringIO()))
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["round"] == 2 and last["state_resets"] == 1 and last["clients_ok"] == 6
