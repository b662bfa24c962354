"""``fedrs bench robustness``'s arithmetic: the drop against clean FedAvg of the same method and
seed, the headline figure, and Bulyan left out of a grid too small for it."""

from __future__ import annotations

from typing import Any

import pytest

from fedrs.benchmarks.robustness import attack_cells, drops, signflip_20, sweep_spec


def _row(method: str, defence: str, threat: str, seed: int, acc: float) -> dict[str, Any]:
    return {
        "method.name": method,
        "defence": defence,
        "threat": threat,
        "federation.seed": seed,
        "final_accuracy": acc,
        "status": "finished",
    }


def test_drops_are_against_clean_fedavg_of_the_same_seed() -> None:
    rows = [
        _row("promptfl", "fedavg", "clean", 0, 0.90),
        _row("promptfl", "fedavg", "clean", 1, 0.80),
        _row("promptfl", "median", "signflip 20%", 0, 0.89),
        _row("promptfl", "median", "signflip 20%", 1, 0.76),
        _row("promptfl", "krum", "signflip 20%", 0, 0.70),
        _row("fedrsclip", "fedavg", "clean", 0, 0.50),
        _row("fedrsclip", "normclip", "signflip 20%", 0, 0.47),
        _row("fedrsclip", "fedavg", "signflip 20%", 0, 0.10),  # not a robust defence
        {**_row("fedrsclip", "krum", "signflip 20%", 0, 0.0), "status": "failed"},
    ]
    table = {(r["method"], r["defence"], r["attack"]): r for r in drops(rows)}
    median = table[("promptfl", "median", "signflip 20%")]
    assert median["drop_points"] == pytest.approx((1.0 + 4.0) / 2)  # per seed, then the mean
    assert median["accuracy"] == pytest.approx(0.825) and median["seeds"] == 2
    assert table[("promptfl", "krum", "signflip 20%")]["drop_points"] == pytest.approx(20.0)
    assert ("fedrsclip", "krum", "signflip 20%") not in table  # failed trials do not count
    # the best robust defence per method (median 2.5, normclip 3.0), the worst over methods
    assert signflip_20(list(table.values())) == pytest.approx(3.0)
    assert signflip_20([r for r in table.values() if r["attack"] == "clean"]) is None


def test_bulyan_needs_4f_plus_3_clients() -> None:
    o = {
        "methods": ["promptfl"],
        "defences": ["fedavg", "bulyan"],
        "attacks": ["signflip"],
        "fractions": [0.2],
        "seeds": [0],
        "rounds": 2,
        "clients": 10,
        "per_class": 4,
        "image_size": 32,
        "local_epochs": 1,
        "arch": "fedrs-tiny",
        "pretrained": "",
        "byzantine": 2,
        "trim_fraction": 0.2,
        "clip_norm": 1.0,
    }
    spec, skipped = sweep_spec(o)
    assert [d["label"] for d in spec["grid"]["defence"]] == ["fedavg"]
    assert skipped == ["bulyan needs clients >= 11, got 10"]
    spec, skipped = sweep_spec({**o, "clients": 11})
    assert [d["label"] for d in spec["grid"]["defence"]] == ["fedavg", "bulyan"] and not skipped
    cells = attack_cells(["signflip", "scale"], [0.1, 0.3])
    assert [c["label"] for c in cells] == [
        "clean",
        "signflip 10%",
        "signflip 30%",
        "scale 10%",
        "scale 30%",
    ]
