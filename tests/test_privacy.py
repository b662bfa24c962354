"""Client-level DP that matches its accountant: Poisson sampling at rate q, DP-FedAvg's
estimator over the expected cohort (its noise checked statistically), local noise for
sensitivity 2C, epsilon of a real run against Opacus's for (q, sigma, rounds) taken from the
config, and the configurations refused in one line."""

from __future__ import annotations

import io
import json
import time
import tomllib
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console

from fedrs.core.config import RunConfig, from_dict, load_config, to_toml
from fedrs.core.privacy import central_estimate, epsilon, gaussian_noise, privatize_local
from fedrs.core.sampling import poisson_usable, sample_round
from fedrs.core.strategies import ClientUpdate
from fedrs.errors import ConfigError


def _dp(**sets: object) -> RunConfig:
    return RunConfig().replace(**{"privacy.mode": "central", **sets})


# ------------------------------------------------------------------------------- sampling
def test_poisson_sampler_includes_each_client_at_rate_q() -> None:
    n, per_round, rounds = 50, 10, 2000
    cfg = _dp(**{"federation.clients_per_round": per_round, "federation.seed": 4})
    q = per_round / n
    cohorts = [sample_round(cfg, n, n, frozenset(), r) for r in range(1, rounds + 1)]
    counts = np.zeros(n)
    for c in cohorts:
        assert c == sorted(set(c)) and all(0 <= i < n for i in c)
        counts[c] += 1
    # all inclusions: Binomial(n rounds, q); each client's: Binomial(rounds, q)
    tol = 4 * np.sqrt(q * (1 - q) / (n * rounds))
    assert abs(counts.sum() / (n * rounds) - q) < tol
    assert np.max(np.abs(counts - q * rounds)) < 4.5 * np.sqrt(rounds * q * (1 - q))
    # cohort sizes are Binomial(n, q): they vary, with variance n q (1 - q)
    sizes = np.array([len(c) for c in cohorts])
    assert sizes.var() == pytest.approx(n * q * (1 - q), rel=4 * np.sqrt(2 / rounds))
    # a function of (seed, round): the same on a resume, another round draws another cohort
    assert sample_round(cfg, n, n, frozenset(), 7) == cohorts[6] != cohorts[7]


def test_poisson_rounds_can_be_empty_and_skip_excluded_partitions() -> None:
    cfg = _dp(**{"federation.clients_per_round": 1})  # q = 1/6: (5/6)^6 of rounds are empty
    empty = np.mean([not sample_round(cfg, 6, 6, frozenset(), r) for r in range(2000)])
    assert empty == pytest.approx((5 / 6) ** 6, abs=4 * np.sqrt(0.34 * 0.66 / 2000))
    # 40 registered on 8 partitions, 2 excluded: those clients never join, the others at q
    excluded = frozenset({1, 5})
    counts = np.zeros(40)
    for r in range(2000):
        counts[poisson_usable(40, 0.25, 0, r, 8, excluded)] += 1
    out = [c for c in range(40) if c % 8 in excluded]
    assert counts[out].sum() == 0
    kept = np.delete(counts, out)
    assert kept.sum() / (len(kept) * 2000) == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize("n", [100_000, 10**12])
def test_poisson_sampling_is_o_cohort(n: int) -> None:
    poisson_usable(10, 0.5, 0, 0, 10)  # warm numpy's lazily loaded modules
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        ids = poisson_usable(n, 20 / n, 3, 7, 6)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0
    assert peak < 256 * 1024  # a Bernoulli draw per client would take >= n bytes
    assert 0 < len(ids) < 60 and ids == sorted(set(ids)) and ids[-1] < n


def test_dry_run_plan_samples_like_the_driver_under_dp() -> None:
    from fedrs.orchestrator.plan import plan

    sets = {"federation.rounds": 6, "federation.clients_per_round": 3}
    p, dp = plan(RunConfig().replace(**sets)), plan(_dp(**sets))
    per_client = p["bytes_sent_per_client"]
    assert p["bytes_up_per_run"] == per_client * 3 * 6  # fixed size: 3 a round
    sampled = sum(len(sample_round(_dp(**sets), 8, 8, frozenset(), r)) for r in range(1, 7))
    assert dp["bytes_up_per_run"] == per_client * sampled != p["bytes_up_per_run"]
    assert dp["clients"]["sampling"] == "poisson"


# ------------------------------------------------------------------------------- mechanisms
def test_central_estimator_noise_and_mean_are_calibrated_to_the_expected_cohort() -> None:
    """Over many seeded rounds: mean = sum of clipped updates / (q N), noise std =
    sigma C / (q N) per coordinate (not / the 2 updates that came)."""
    cfg = SimpleNamespace(clip_norm=1.0, noise_multiplier=0.8)
    current = {"a": np.full(8, 0.5, np.float32), "b": np.zeros((4, 14), np.float32)}
    big_a, big_b = np.zeros(8), np.zeros((4, 14))
    big_a[0], big_b[0, 0] = 3.0, 4.0  # norm 5 over both tensors: clipped to 1 as a whole
    ups = [
        ClientUpdate(3, {"a": current["a"] + big_a, "b": big_b.astype(np.float32)}, 100),
        ClientUpdate(8, {"a": current["a"] + 0.05}, 1),  # norm 0.14: unclipped; "b" not sent
    ]
    want = {"a": 0.6 * (big_a / 3) + 0.05, "b": 0.8 * (big_b / 4)}
    expected = 5.0  # q N: 5 of 50 per round
    draws = 600
    resid = {k: np.empty((draws, *v.shape)) for k, v in current.items()}
    for r in range(draws):
        out = central_estimate(current, ups, ("a", "b"), cfg, expected, seed=11, round_=r)
        for k in current:
            resid[k][r] = out[k].astype(np.float64) - current[k]
    flat_mean = np.concatenate([resid[k].mean(0).ravel() for k in ("a", "b")])
    flat_want = np.concatenate([want[k].ravel() / expected for k in ("a", "b")])
    std = 0.8 * 1.0 / expected
    assert np.max(np.abs(flat_mean - flat_want)) < 4.5 * std / np.sqrt(draws)
    noise = np.concatenate([(resid[k] - want[k] / expected).reshape(draws, -1) for k in "ab"], 1)
    m = noise.size
    # m (s / std)^2 ~ chi-square(m): within 5 of its standard deviations sqrt(2 m)
    assert abs(np.sum(noise**2) / std**2 - m) < 5 * np.sqrt(2 * m)
    # an empty round releases noise / (q N) alone; the draw is a function of (seed, round)
    empty = central_estimate(current, [], ("a", "b"), cfg, expected, seed=11, round_=3)
    np.testing.assert_allclose(
        empty["a"], current["a"] + gaussian_noise([11, 3, 0xD9, 0], (8,), 0.8) / 5, rtol=1e-6
    )


def test_local_dp_noise_covers_sensitivity_2c() -> None:
    cfg = SimpleNamespace(clip_norm=1.0, noise_multiplier=2.0)
    got = {"w": np.array([1.0, 1.0], "f4")}
    sent = privatize_local({"w": np.array([4.0, 5.0], "f4")}, got, cfg, 0, 3, 9)
    noise = gaussian_noise([0, 3, 9, 0x10C, 0], (2,), 2.0 * 2 * 1.0)  # sigma x 2C
    np.testing.assert_allclose(sent["w"], np.array([1.6, 1.8]) + noise, rtol=1e-6)


# ------------------------------------------------------------------------------- refusals
def test_privacy_keys_without_a_mode_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"privacy\.noise_multiplier set while privacy\.mode"):
        load_config(None, ["privacy.noise_multiplier=1.0"])  # its default, but set
    with pytest.raises(ConfigError, match=r"privacy\.clip_norm, privacy\.delta set"):
        from_dict({"privacy": {"clip_norm": 0.5, "delta": 1e-6}})
    from_dict({"privacy": {"mode": "local", "clip_norm": 0.5}})
    # full dumps at the defaults (config.json, `fedrs config`) load back
    from_dict(RunConfig().to_dict())
    load_config(None, [])
    dumped = to_toml(RunConfig())
    assert from_dict(tomllib.loads(dumped)) == RunConfig()


def test_dp_refuses_what_it_cannot_protect(synth_data: Path) -> None:
    from fedrs.orchestrator.preflight import resolve_names

    base = {"data.path": str(synth_data), "privacy.mode": "central"}
    with pytest.raises(ConfigError, match="extra payloads"):
        resolve_names(RunConfig().replace(**base, **{"method.name": "creff"}), 10)
    # FedRSCLIP sends only the shared prompt unless share_visual_mean: it runs under DP
    fedrsclip = {**base, "method.name": "fedrsclip"}
    resolve_names(RunConfig().replace(**fedrsclip), 10)
    with pytest.raises(ConfigError, match=r"extra payloads \(prompt\.visual\)"):
        resolve_names(RunConfig().replace(**fedrsclip, **{"method.share_visual_mean": True}), 10)
    for name in ("median", "trimmed_mean", "krum", "bulyan", "normclip", "normfilter"):
        with pytest.raises(ConfigError, match=r"privacy\.mode=central needs a mean"):
            resolve_names(RunConfig().replace(**base, **{"strategy.name": name}), 10)
    for name in ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"):
        resolve_names(RunConfig().replace(**base, **{"strategy.name": name}), 10)
    local = {**base, "privacy.mode": "local", "strategy.name": "median"}  # post-processing
    resolve_names(RunConfig().replace(**local), 10)


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (
            ["privacy.mode=central", "strategy.name=median"],
            "privacy.mode=central needs a mean aggregator",
        ),
        (["privacy.noise_multiplier=1.0"], "privacy.noise_multiplier set while privacy.mode"),
    ],
)
def test_dp_mistakes_through_the_cli(tmp_path: Path, sets: list[str], needle: str) -> None:
    from test_cli_mistakes import assert_one_line_error, fedrs

    args = [a for s in sets for a in ("--set", s)]
    assert_one_line_error(fedrs(tmp_path, "run", *args), needle)
    assert_one_line_error(fedrs(tmp_path, "run", "--dry-run", *args), needle)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- a real run
@pytest.mark.usefixtures("ray_cluster")
def test_dp_run_varies_its_rounds_and_reports_the_accountants_epsilon(
    synth_data: Path, tmp_path: Path
) -> None:
    """FedRSCLIP under central DP: Poisson rounds (one of them empty), epsilon each round equal
    to Opacus's RDP accountant stepped with q = clients_per_round / registered from the config
    numbers; a resumed run draws the same cohorts and noise."""
    from opacus.accountants import RDPAccountant

    from conftest import small_run
    from fedrs.orchestrator import checkpoint
    from fedrs.orchestrator.runner import run

    rounds, per_round, registered, sigma = 4, 2, 6, 0.8  # synth_data: 6 partitions
    sets = {
        "method.name": "fedrsclip",
        "federation.rounds": rounds,
        "federation.clients_per_round": per_round,
        "privacy.mode": "central",
        "privacy.noise_multiplier": sigma,
        "privacy.clip_norm": 0.5,
    }

    def sizes(seed: int) -> list[int]:
        cfg = small_run(synth_data, **sets, **{"federation.seed": seed})
        return [len(sample_round(cfg, registered, 6, (), r)) for r in range(1, rounds + 1)]

    seed = next(s for s in range(100) if 0 in sizes(s) and max(sizes(s)) >= 2)
    cfg = small_run(synth_data, **sets, **{"federation.seed": seed})
    quiet = Console(file=io.StringIO())
    run(cfg, out=str(tmp_path / "full"), console=quiet)
    run(cfg, out=str(tmp_path / "cut"), console=quiet, stop_after=2)
    run(resume=str(tmp_path / "cut"), console=quiet)
    m = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients_sampled"] for r in m] == sizes(seed)
    assert len({r["clients_sampled"] for r in m}) > 1
    acc = RDPAccountant()
    for r in m:
        acc.step(noise_multiplier=sigma, sample_rate=per_round / registered)
        assert r["epsilon"] == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-9)
        assert r["delta"] == 1e-5
    empty = next(r for r in m if r["clients_sampled"] == 0)
    assert empty["clients_ok"] == 0 and empty["loss"] is None
    assert empty["global_change"] > 0  # the mechanism ran: noise / (q N) was released
    _, a, _ = checkpoint.load(tmp_path / "full")
    _, b, _ = checkpoint.load(tmp_path / "cut")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_epsilon_edge_cases() -> None:
    cfg = SimpleNamespace(noise_multiplier=1.1, delta=1e-5, accountant="rdp")
    assert epsilon(cfg, 0, 0.3) == 0.0 and epsilon(cfg, 10, 0.3) > epsilon(cfg, 5, 0.3)
    assert epsilon(SimpleNamespace(noise_multiplier=0.0, delta=1e-5), 1, 0.3) == float("inf")
    prv = SimpleNamespace(noise_multiplier=1.1, delta=1e-5, accountant="prv")
    assert 0 < epsilon(prv, 5, 0.3) < float("inf")


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
