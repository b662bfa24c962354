"""``fedrs bench robustness``: a real cell where boosted sign flip hurts FedAvg, the precondition
that refuses a workload where it does not, the drops, recovered fractions and headline, and
Bulyan left out of a grid too small for it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from fedrs.benchmarks.robustness import (
    SEP,
    ZEROSHOT,
    arms,
    attack_cells,
    attack_table,
    defences,
    headline,
    options,
    precondition,
    run_config,
)


@pytest.mark.usefixtures("ray_cluster")
def test_boosted_signflip_lowers_fedavg_in_a_real_cell(tmp_path: Path) -> None:
    """The benchmark's own cell configuration, tiny (5 clients, 20 images per class, 4 rounds):
    the student from scratch, clean and with 1 of 5 clients sending ``w_g - 10 (w - w_g)``."""
    from fedrs.orchestrator.runner import run

    o = options(rounds=4, clients=5, per_class=20, alpha=1.0, lr=0.05)
    cells = {c["label"]: c for c in attack_cells(["signflip"], [0.2])}
    acc = {}
    for label in ("clean", "signflip 20%"):
        cfg = run_config(o, {**cells[label], "strategy.name": "fedavg"}, 0)
        cfg = cfg.replace(**{"resources.num_actors": 2})
        assert cfg.attack.boost == 10.0 and cfg.method.name == "student"
        summary = run(cfg, out=str(tmp_path / label), console=Console(file=io.StringIO()))
        acc[label] = summary["final"]["accuracy"]
    assert acc["clean"] >= 0.3, acc  # the clean federation learns (chance: 0.1) ...
    assert acc["signflip 20%"] <= acc["clean"] - 0.15, acc  # ... and the attack undoes it


def _accs(clean: list[float], attacked: dict[str, list[float]]) -> dict[str, dict[int, float]]:
    out = {f"fedavg{SEP}clean": dict(enumerate(clean))}
    for label, values in attacked.items():
        out[label] = dict(enumerate(values))
    return out


def test_precondition_needs_ten_points_and_an_interval_excluding_zero() -> None:
    head = f"fedavg{SEP}signflip 20%"
    ok = precondition(_accs([0.9, 0.8, 0.85], {head: [0.6, 0.5, 0.6]}))
    assert ok["valid"] and ok["fedavg_drop_points"] == pytest.approx(100 * 0.85 / 3)
    lo, hi = ok["fedavg_drop_ci95"]
    assert lo > 0 and (lo + hi) / 2 == pytest.approx(ok["fedavg_drop_points"])
    # a big mean drop that one seed contradicts: the interval covers 0
    assert not precondition(_accs([0.9, 0.8, 0.85], {head: [0.3, 0.3, 0.9]}))["valid"]
    # a reliable but small drop
    assert not precondition(_accs([0.9, 0.8, 0.85], {head: [0.85, 0.75, 0.8]}))["valid"]
    # one seed: no interval, so no verdict of validity
    assert not precondition(_accs([0.9], {head: [0.1]}))["valid"]


def test_drops_recovered_fraction_verdicts_and_headline() -> None:
    o = options(defences="median,krum,normclip", attacks="signflip,ipm", fractions=0.2)
    names, _ = defences(o)
    assert names == ["fedavg", "median", "krum", "normclip"]
    cells = attack_cells(["signflip", "ipm"], [0.2])
    sf, ipm = f"{SEP}signflip 20%", f"{SEP}ipm 20%"
    accs = _accs(
        [0.90, 0.80],
        {
            "fedavg" + sf: [0.40, 0.30],
            "median" + sf: [0.89, 0.79],  # drop 1: recovers 49 of 50 points
            "krum" + sf: [0.80, 0.70],
            "normclip" + sf: [0.65, 0.55],  # halfway
            "fedavg" + ipm: [0.50, 0.40],
            "median" + ipm: [0.50, 0.40],
            "krum" + ipm: [0.60, 0.50],
            "normclip" + ipm: [0.45, 0.35],
        },
    )
    table = attack_table(accs, names, cells)
    s = table["signflip 20%"]
    assert s["fedavg_drop_points"] == pytest.approx(50.0)
    assert s["defences"]["median"]["drop_points"] == pytest.approx(1.0)
    assert s["defences"]["median"]["recovered_fraction"] == pytest.approx(49 / 50)
    assert s["defences"]["normclip"]["recovered_fraction"] == pytest.approx(0.5)
    assert "median" in s["verdict"] and "every defence fails" not in s["verdict"]
    assert table["ipm 20%"]["verdict"].startswith("every defence fails")
    assert "krum" in table["ipm 20%"]["verdict"]  # the best of them, named
    assert headline(table) == (pytest.approx(1.0), "median")
    assert table["clean"]["verdict"] == "no attack"
    # a large mean drop the seeds do not establish is said as such, not "does not hurt"
    from fedrs.benchmarks.robustness import verdict

    loose = {"fedavg_drop_points": 41.1, "fedavg_drop_ci95": [-41.2, 123.4], "defences": {}}
    assert verdict(loose).startswith("hurts FedAvg by 41.1 points on average, not established")
    none = {"fedavg_drop_points": 0.5, "fedavg_drop_ci95": [-3.0, 4.0], "defences": {}}
    assert verdict(none) == "does not hurt FedAvg here (+0.5 points)"


def test_arms_split_the_precondition_from_the_grid_and_bulyan_needs_4f_plus_3() -> None:
    o = options(defences="median,bulyan", attacks="alie", fractions="0.1,0.3", byzantine=2)
    first, rest, skipped = arms(o)
    # the headline cell (20 % sign flip) runs even when the grid does not list it
    assert [a["label"] for a in first] == [
        f"fedavg{SEP}clean",
        f"fedavg{SEP}signflip 20%",
        ZEROSHOT,
    ]
    assert skipped == ["bulyan needs clients >= 11, got 10"]
    assert [a["label"] for a in rest] == [
        f"fedavg{SEP}alie 10%",
        f"fedavg{SEP}alie 30%",
        f"median{SEP}clean",
        f"median{SEP}alie 10%",
        f"median{SEP}alie 30%",
        f"median{SEP}signflip 20%",
    ]
    _, rest, skipped = arms({**o, "clients": 11})
    assert not skipped and any(a["strategy.name"] == "bulyan" for a in rest)
    with pytest.raises(ValueError, match="unknown options"):
        options(methods="promptfl")


def test_the_stored_results_score_a_diverged_trial_at_chance_and_compare_to_clean(
    tmp_path: Path,
) -> None:
    from fedrs.benchmarks.robustness import CHANCE, write_stored
    from fedrs.orchestrator.sweep.report import stored_report

    rows = []
    for seed, (clean, attacked) in enumerate([(0.8, 0.2), (0.7, None), (0.75, 0.25)]):
        rows.append(
            {"trial": f"c{seed}", "arm": "fedavg | clean", "federation.seed": seed}
            | {"status": "finished", "error": None, "final_accuracy": clean, "run_dir": "/x"}
        )
        failed = attacked is None
        rows.append(
            {"trial": f"a{seed}", "arm": "fedavg | signflip 20%", "federation.seed": seed}
            | {
                "status": "failed" if failed else "finished",
                "error": "RoundFailedError: x has non-finite values" if failed else None,
                "final_accuracy": attacked,
                "run_dir": "/x",
            }
        )
    path = tmp_path / "robustness.results.csv"
    write_stored(rows, path)
    text = path.read_text()
    assert "run_dir" not in text and "non-finite" in text  # the error is kept
    report = stored_report(path, compare=["arm=*:fedavg | clean"], scale=100)
    # drops -60, -(70 - 100 CHANCE), -50: the diverged seed counts at chance, not dropped
    diffs = [-60.0, 100 * CHANCE - 70.0, -50.0]
    assert " / ".join(f"{d:+.4f}" for d in diffs) in report
    assert "Unpaired" not in report
