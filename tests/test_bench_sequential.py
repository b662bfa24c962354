"""The vs-sequential and packing benchmarks: the sequential baseline does exactly fedrs's work,
and fractional GPUs pack as asked (tiny sizes; no wall-clock assertions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrs.benchmarks import harness, packing, vs_sequential

TINY = {
    "arch": "fedrs-tiny",
    "clients_per_round": 4,
    "local_epochs": 1,
    "batch_size": 16,
    "workers": 2,
    "noniid": False,
    "ceiling": False,
}


def test_clock_timestamps_each_line() -> None:
    clock = harness.RoundClock()
    clock.write("header: 2 client actors\nround   1/3")
    clock.write("  ok 4\nround   2/3  ok 4\n")
    lines = [line for _, line in clock.lines]
    assert lines == ["header: 2 client actors", "round   1/3  ok 4", "round   2/3  ok 4"]
    assert harness.ROUND_LINE.match(lines[2]).group(1) == "2"


def test_steady_rounds_skip_warmup_and_evaluation() -> None:
    assert harness.steady_index(5) == [1, 2, 3]
    assert harness.steady_index(2) == [1]
    assert harness.steady_index(1) == [0]


@pytest.mark.usefixtures("ray_cluster")
def test_sequential_loop_computes_what_fedrs_computes(synth_data: Path) -> None:
    result = vs_sequential.run(
        data=str(synth_data), rounds=3, method="fedrsclip", repeats=2, **TINY
    )
    detail, again = result["details"]
    assert (detail["repeat"], again["repeat"]) == (1, 2)
    assert again["final_params_max_abs_diff"] == 0.0
    (summary,) = result["summary"]
    effs = [detail["efficiency_steady"], again["efficiency_steady"]]
    assert summary["efficiency_steady"] == [round(e, 3) for e in effs]
    assert result["ratio"] == summary["efficiency_steady_median"]
    assert result["ratio"] == pytest.approx(sum(effs) / 2, abs=1e-3)
    # same sampled clients, options, data and strategy: the same global tensors, bit for bit
    assert detail["final_params_max_abs_diff"] == 0.0
    assert detail["accuracy"]["sequential"] == detail["accuracy"]["fedrs"]
    assert len(detail["fedrs_periods_s"]) == len(detail["seq_rounds"]) == 3
    assert [r["round"] for r in detail["fedrs_records"]] == [1, 2, 3]
    assert all(len(r["clients"]) == 4 for r in detail["seq_rounds"])
    assert "eval_s" in detail["seq_rounds"][-1] and "eval_s" not in detail["seq_rounds"][0]
    assert detail["eval_s"]["sequential"] > 0 and detail["eval_s"]["fedrs"] > 0
    assert "eval_s" in detail["fedrs_records"][-1] and "eval_s" not in detail["fedrs_records"][0]
    assert detail["steady_rounds"] == [2]
    # the efficiencies from each side's recorded times: steady round 2, and the totals
    seq_s, fed_s = detail["seq_rounds"][1]["round_s"], detail["fedrs_periods_s"][1]
    fixed, workers = detail["fixed_costs_s"], result["setup"]["workers"]
    seq_total = fixed["seq_build"] + sum(r["round_s"] for r in detail["seq_rounds"])
    fed_total = sum(detail["fedrs_periods_s"]) + sum(
        fixed[k] for k in ("fedrs_ray_start", "fedrs_spawn", "fedrs_finish")
    )
    assert (detail["seq_steady_round_s"], detail["fedrs_steady_round_s"]) == (seq_s, fed_s)
    assert detail["efficiency_steady"] == pytest.approx(seq_s / (workers * fed_s))
    assert detail["speedup_steady"] == pytest.approx(seq_s / fed_s)
    assert (detail["seq_total_s"], detail["fedrs_total_s"]) == pytest.approx((seq_total, fed_total))
    assert detail["efficiency_total"] == pytest.approx(seq_total / (workers * fed_total))
    assert result["target"] == vs_sequential.TARGET
    assert result["setup"]["interleave"] is True  # the default: rounds alternate
    # fedrs's actors keep freed memory; the research loop runs with the allocator's defaults
    assert result["setup"]["retain_freed_memory"] == {
        "fedrs_actors": True,
        "sequential_and_ceiling": False,
    }
    prof = detail["profile_steady_per_round"]
    parts = ("ideal_round_s", "load_imbalance_s", "dispatch_collect_s", "aggregate_record_s")
    assert sum(prof[k] for k in parts) + prof["after_round_s"] == pytest.approx(prof["round_s"])
    assert result["state_store_save_load_s_per_client"] > 0  # fedrsclip has private state


@pytest.mark.usefixtures("ray_cluster")
def test_back_to_back_mode_through_runner_computes_the_same(synth_data: Path) -> None:
    """``interleave=False``: the whole sequential loop, then fedrs through ``runner.run``."""
    result = vs_sequential.run(
        data=str(synth_data), rounds=3, method="fedrsclip", repeats=1, interleave=False, **TINY
    )
    (detail,) = result["details"]
    assert detail["final_params_max_abs_diff"] == 0.0
    assert detail["accuracy"]["sequential"] == detail["accuracy"]["fedrs"]
    assert len(detail["fedrs_periods_s"]) == 3 and result["setup"]["interleave"] is False
    # the ratio: steady round 2 of the loop / (2 workers x fedrs's round 2), to 3 decimals
    seq_s, fed_s = detail["seq_rounds"][1]["round_s"], detail["fedrs_periods_s"][1]
    assert result["ratio"] == pytest.approx(round(seq_s / (2 * fed_s), 3), abs=1e-12)


@pytest.mark.usefixtures("ray_cluster")
def test_half_gpu_clients_share_one_logical_gpu(synth_data: Path) -> None:
    result = packing.run(
        data=str(synth_data),
        rounds=3,
        fractions=[1.0, 0.5],
        gpus=1,
        arch="fedrs-tiny",
        clients_per_round=4,
        local_epochs=1,
        batch_size=16,
    )
    whole, row = result["rows"]
    _, detail = result["details"]
    assert (whole["gpu_per_client"], whole["actors"], row["gpu_per_client"]) == (1.0, 1, 0.5)
    assert row["actors"] == 2 and row["gpus_used"] == 1 and row["actors_per_gpu"] == 2
    assert detail["packed_as_asked"]
    assert len({(a["node_id"], tuple(a["gpu_ids"])) for a in detail["actors"]}) == 1
    assert all(len(a["gpu_ids"]) == 1 for a in detail["actors"])
    assert detail["clients_ok"] == [4, 4, 4]
    # updates/s: the steady round's client updates over its period; ratio: best / one GPU each
    for r, d in zip(result["rows"], result["details"], strict=True):
        assert d["steady_rounds"] == [2]
        assert r["updates_per_s"] == pytest.approx(d["clients_ok"][1] / d["periods_s"][1])
    best = max(whole["updates_per_s"], row["updates_per_s"])
    assert result["ratio"] == pytest.approx(round(best / whole["updates_per_s"], 3), abs=1e-12)
    assert not result["real_gpus"] or result["gpus_are"].startswith("real")


def test_config_overrides_reach_the_run_config() -> None:
    from fedrs.core.config import RunConfig

    parse = vs_sequential.config_overrides
    assert parse("method.diffusion_rounds=1; client.lr=0.05;;") == {
        "method.diffusion_rounds": "1",
        "client.lr": "0.05",
    }
    # the CLI splits "a,b" into a list; the value comes back whole, as `fedrs run --set` takes it
    sets = parse(["method.name=feddiff;method.modalities=hsi", "lidar;method.diffusion_rounds=2"])
    cfg = RunConfig().replace(**sets)
    assert cfg.method.options.modalities == ("hsi", "lidar")
    assert cfg.method.options.diffusion_rounds == 2
    with pytest.raises(ValueError, match="not key=value"):
        parse("method.rank")
