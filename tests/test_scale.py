"""Scale to many registered clients: O(k) sampling, virtual clients on data partitions, the
client-state store's bulk and recovery paths, the bounded shard cache."""

from __future__ import annotations

import io
import json
import math
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from fedrs.core.config import RunConfig
from fedrs.core.sampling import registered_clients, sample_clients
from fedrs.core.state_store import FileStateStore
from fedrs.datasets.manifest import FedDataset
from fedrs.errors import ConfigError


def _peak_bytes(fn: Any) -> tuple[Any, int]:
    """``fn()`` and the peak bytes Python and numpy allocated during it."""
    sample_clients(10, 1, 0, 0)  # warm: numpy's first generator loads lazy modules (~1 MB)
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("n", [100_000, 10**9, 10**12])
def test_sampling_over_huge_populations_is_o_k(n: int) -> None:
    ids, peak = _peak_bytes(lambda: sample_clients(n, 10, seed=3, round_=7))
    assert peak < 256 * 1024  # a permutation of n ids would take 8 n bytes
    assert ids == sample_clients(n, 10, seed=3, round_=7)  # a function of (seed, round)
    assert ids != sample_clients(n, 10, seed=3, round_=8)
    assert len(set(ids)) == 10 and ids == sorted(ids) and ids[0] >= 0 and ids[-1] < n


def test_sampling_many_per_round_stays_bounded_by_k() -> None:
    k = 5_000
    ids, peak = _peak_bytes(lambda: sample_clients(10**9, k, seed=0, round_=1))
    assert len(set(ids)) == k and ids[-1] < 10**9
    assert peak < 200 * k * 8  # O(k), never O(n) = 8 GB
    # spread over the whole range, not its start
    assert np.mean(ids) == pytest.approx(0.5e9, rel=0.05)


def test_registered_clients_default_and_validation() -> None:
    cfg = RunConfig()
    assert registered_clients(cfg, 8) == 8  # 0: one per partition
    assert registered_clients(cfg.replace(**{"federation.num_clients": 100_000}), 8) == 100_000
    with pytest.raises(ConfigError, match="below the dataset's 8 partitions"):
        registered_clients(cfg.replace(**{"federation.num_clients": 5}), 8)


def test_shard_cache_is_bounded_lru(synth_data: Path) -> None:
    with pytest.raises(ValueError):
        FedDataset(synth_data, max_open=0)
    ds = FedDataset(synth_data, max_open=3)
    s0, s1 = ds.client(0), ds.client(1)
    ds.client(2)
    assert ds.client(0) is s0  # a hit, and now the most recently used
    ds.client(3)  # evicts the least recently used: client 1
    assert ds.open_shards == 3
    assert ds.client(0) is s0
    again = ds.client(1)
    assert again is not s1 and np.array_equal(again.labels, s1.labels)  # reopened, same rows
    for c in range(ds.num_clients):
        ds.client(c)
        ds.client_test(c)
        assert ds.open_shards <= 3
    ds.verify_all()
    assert ds.open_shards == 3


def test_state_store_bulk_write_and_unreadable_version(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    n = store.save_many(0, ((c, {"p": np.full(2, c, np.float32)}) for c in range(2_500)))
    assert n == 2_500 and store.load(2_499, 1)["p"][0] == 2_499
    assert (tmp_path / "0002" / "2499" / "r0.safetensors").is_file()
    assert not list(tmp_path.rglob("*.tmp"))  # no temp file left behind
    store.save(7, 1, {"p": np.full(2, 100.0, np.float32)})
    (tmp_path / "0000" / "7" / "r1.safetensors").write_bytes(b"\x00\x01")  # cut short
    assert store.load(7, 2)["p"][0] == 7.0  # falls back to the version before
    assert store.load(5, 0) is None  # nothing written before round 0
    store.save(7, 2, {"p": np.full(2, 200.0, np.float32)})
    assert store.versions(7) == [1, 2]


@pytest.mark.usefixtures("ray_cluster")
def test_virtual_clients_train_on_partitions_and_keep_their_state(
    synth_data: Path, tmp_path: Path
) -> None:
    from fedrs.orchestrator.runner import run

    n, per_round, rounds = 1_000, 3, 2
    cfg = RunConfig().replace(
        **{
            "method.name": "fedrsclip",
            "strategy.name": "prompt_avg",
            "data.path": str(synth_data),
            "federation.num_clients": n,
            "federation.rounds": rounds,
            "federation.clients_per_round": per_round,
            "client.local_epochs": 1,
            "resources.num_actors": 2,
        }
    )
    run_dir = tmp_path / "r"
    summary = run(cfg, out=str(run_dir), console=Console(file=io.StringIO()))
    assert summary["registered_clients"] == n and summary["driver_memory"]["rss_mb"] > 0
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    data = FedDataset(synth_data, verify=False)
    store = FileStateStore(run_dir / "client_state")
    seen = set()
    for rec in records:
        sampled = sample_clients(n, per_round, seed=0, round_=rec["round"])
        assert sorted(int(c) for c in rec["clients"]) == sampled
        assert rec["clients_ok"] == per_round and rec["driver_rss_mb"] > 0
        assert not math.isnan(rec["personalized_accuracy"])  # the sampled clients' own splits
        for cid in sampled:
            part = data.clients[cid % data.num_clients]
            assert rec["clients"][str(cid)]["num_examples"] == part.train.num_examples
            assert rec["round"] in store.versions(cid)  # under the registered id, not c mod P
            seen.add(cid)
    assert max(seen) >= data.num_clients  # virtual clients beyond the partitions took part
    folders = {p.name for p in (run_dir / "client_state").glob("*/*")}
    assert folders == {str(c) for c in seen}


@pytest.mark.usefixtures("ray_cluster")
def test_scale_benchmark_pools_repeats_in_both_orders(synth_data: Path) -> None:
    """``fedrs bench scale-clients`` at a tiny size: every size runs once per repeat (ascending,
    then descending), its round time is the median of all repeats' steady rounds, and every
    sampled client's private state lands in the store."""
    from fedrs.benchmarks import scale_clients

    parts = FedDataset(synth_data).num_clients
    sizes = [parts, 50 * parts]
    result = scale_clients.run(
        data=str(synth_data),
        sizes=sizes,
        object_sizes=[],
        clients_per_round=2,
        rounds=3,
        repeats=2,
        reads=20,
        workers=2,
    )
    rows = result["rows"]
    assert [r["registered"] for r in rows] == sizes
    for r in rows:
        assert len(r["round_s_by_repeat"]) == 2 and len(r["round_walls_s"]) == 2
        steady = [w for walls in r["round_walls_s"] for w in walls[1:]]
        assert r["round_s"] == pytest.approx(float(np.median(steady)))
        assert r["state_landed"] and r["clients_ok"] == 2 * 3 * 2 and r["clients_failed"] == 0
    assert result["ratio"] == pytest.approx(rows[0]["round_s"] / rows[-1]["round_s"])
    assert result["setup"]["repeats"] == 2
    import ray

    assert ray.is_initialized()  # the session's Ray is left running


def test_pool_repeats_takes_the_median_of_all_steady_rounds() -> None:
    from fedrs.benchmarks.scale_clients import pool_repeats

    base = {"driver_rss_mb": 10.0, "driver_peak_rss_mb": 11.0, "clients_ok": 4}
    base |= {"clients_failed": 0, "state_landed": True}
    a = {**base, "round_walls_s": [9.0, 1.0, 2.0], "round_s": 1.5}
    b = {**base, "round_walls_s": [9.0, 3.0, 4.0, 5.0], "round_s": 4.0, "driver_rss_mb": 12.0}
    row = pool_repeats([a, b])
    assert row["round_s"] == 3.0  # median of 1, 2, 3, 4, 5: the first rounds are left out
    assert row["round_s_by_repeat"] == [1.5, 4.0]
    assert row["driver_rss_mb"] == 12.0 and row["clients_ok"] == 8
