"""Chaos at a tiny size: killed client actors, a straggler past the round timeout, a full disk
while the checkpoint is written (then --resume gives the uninterrupted run's tensors)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from fedrs.errors import ConfigError, FedrsError
from fedrs.faults import _matches, parse


def test_fault_specs_parse_or_fail_in_one_line() -> None:
    assert parse("fit@*:p0.2=exit; checkpoint@3=enospc") == [
        ("fit", "*", "p0.2", "exit"),
        ("checkpoint", "3", "", "enospc"),
    ]
    for bad in ("fit@x=exit", "disk@1=enospc", "fit@1:1=melt", "fit@1=sleep:-1", "fit@1"):
        with pytest.raises(ConfigError) as err:
            parse(bad)
        assert "\n" not in str(err.value)
    hits = [c for c in range(200) if _matches("*", "p0.25", 4, c)]
    assert hits == [c for c in range(200) if _matches("4", "p0.25", 4, c)]  # deterministic
    assert 20 < len(hits) < 80 and not _matches("3", "", 4, 1) and _matches("4", "7", 4, 7)


@pytest.mark.usefixtures("ray_cluster")
def test_chaos_scenarios_complete_and_lose_nothing(synth_data: Path, tmp_path: Path) -> None:
    from conftest import small_run
    from fedrs.orchestrator import checkpoint
    from fedrs.orchestrator.runner import run

    quiet = Console(file=io.StringIO())
    base = {"federation.rounds": 2, "federation.round_timeout_s": 20.0}
    run(small_run(synth_data, **base), out=str(tmp_path / "clean"), console=quiet)
    # a full disk while writing round 2's checkpoint: one line; round 1's checkpoint intact
    full = small_run(synth_data, **base, **{"federation.faults": "checkpoint@2=enospc"})
    with pytest.raises(FedrsError, match="cannot write its checkpoint") as err:
        run(full, out=str(tmp_path / "disk"), console=quiet)
    assert "resumed after round 1" in str(err.value) and "\n" not in str(err.value)
    assert checkpoint.latest_round(tmp_path / "disk") == 1
    run(resume=str(tmp_path / "disk"), overrides=["federation.faults="], console=quiet)
    _, a, _ = checkpoint.load(tmp_path / "clean")
    _, b, _ = checkpoint.load(tmp_path / "disk")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # an actor killed mid-round and a straggler past the timeout
    faults = "fit@1:3=exit;fit@2:3=sleep:60"
    sets = {"federation.round_timeout_s": 8.0, "federation.faults": faults}
    chaos = small_run(synth_data, **{**base, **sets, "resources.max_actor_restarts": -1})
    summary = run(chaos, out=str(tmp_path / "chaos"), console=quiet)
    m = [json.loads(x) for x in (tmp_path / "chaos" / "metrics.jsonl").read_text().splitlines()]
    assert summary["rounds_completed"] == 2 and [r["round"] for r in m] == [1, 2]
    # round 1: the killed actor's client (under load, a client whose reply was still in flight
    # on that actor when it died goes with it, for the same reason); round 2: the straggler
    # (and a client queued behind it on the same actor when the deadline came)
    died = m[0]["failures"]
    assert "3" in died and len(died) <= 2, died
    assert all(why.startswith("actor died") for why in died.values()), died
    assert "timed out" in m[1]["failures"]["3"]
    assert all(r["clients_ok"] + r["clients_failed"] + r["clients_rejected"] == 6 for r in m)
