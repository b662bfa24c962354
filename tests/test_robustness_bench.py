"""``fedrs bench robustness``: a real cell where boosted sign flip hurts FedAvg, the precondition
that refuses a workload where it does not, the drops, recovered fractions and headline, and
Bulyan left out of a grid too small for it."""

from __future__ import annotations

import io
import json
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
def test_boosted_signflip_lowers_fedavg_and_normfilter_reaches_the_floor(tmp_path: Path) -> None:
    """The benchmark's own cell configuration, tiny (5 clients, 20 images per class, 4 rounds):
    the student from scratch, clean and with 1 of 5 clients sending ``w_g - 10 (w - w_g)``;
    normfilter under that attack leaves out exactly the attacker every round, so it ends on the
    same tensors as the floor (FedAvg with the attacker's updates left out, ``absent``)."""
    import numpy as np

    from fedrs.orchestrator import checkpoint
    from fedrs.orchestrator.runner import run

    o = options(rounds=4, clients=5, per_class=20, alpha=1.0, lr=0.05)
    cells = {c["label"]: c for c in attack_cells(["signflip", "absent"], [0.2])}
    acc, final = {}, {}
    for label, defence in [
        ("clean", "fedavg"),
        ("signflip 20%", "fedavg"),
        ("signflip 20%", "normfilter"),
        ("absent 20%", "fedavg"),
    ]:
        cfg = run_config(o, {**cells[label], "strategy.name": defence}, 0)
        cfg = cfg.replace(**{"resources.num_actors": 2})
        assert cfg.attack.boost == 10.0 and cfg.method.name == "student"
        out = tmp_path / f"{defence}-{label}"
        summary = run(cfg, out=str(out), console=Console(file=io.StringIO()))
        acc[defence, label] = summary["final"]["accuracy"]
        final[defence, label] = checkpoint.load(out)[1]  # the last round's global tensors
        if defence == "normfilter":
            records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            assert [r["strategy_excluded"] for r in records] == [1.0] * 4  # the attacker
    assert acc["fedavg", "clean"] >= 0.3, acc  # the clean federation learns (chance: 0.1) ...
    assert acc["fedavg", "signflip 20%"] <= acc["fedavg", "clean"] - 0.15, acc  # ... undone
    floor, kept = final["fedavg", "absent 20%"], final["normfilter", "signflip 20%"]
    assert sorted(floor) == sorted(kept)
    for key in floor:
        np.testing.assert_array_equal(kept[key], floor[key])
    assert acc["normfilter", "signflip 20%"] == acc["fedavg", "absent 20%"]


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
            f"fedavg{SEP}absent 20%": [0.86, 0.78],  # the floor: 3 points below clean
        },
    )
    table = attack_table(accs, names, cells)
    s = table["signflip 20%"]
    assert s["floor_drop_points"] == pytest.approx(3.0)
    assert s["floor_accuracy"] == pytest.approx(0.82)
    # median 0.89 / 0.79 against the floor 0.86 / 0.78: 2 points above it on average
    assert s["defences"]["median"]["beyond_floor_points"] == pytest.approx(-2.0)
    assert s["defences"]["krum"]["beyond_floor_points"] == pytest.approx(7.0)
    ipm_floor = "without the attackers' data FedAvg itself loses 3.0 (the floor)"
    assert ipm_floor in table["ipm 20%"]["verdict"]
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
        f"fedavg{SEP}absent 10%",  # the floors: FedAvg without the attackers, every fraction
        f"fedavg{SEP}absent 20%",
        f"fedavg{SEP}absent 30%",
        f"fedavg{SEP}alie 10%",
        f"fedavg{SEP}alie 30%",
        f"median{SEP}clean",
        f"median{SEP}alie 10%",
        f"median{SEP}alie 30%",
        f"median{SEP}signflip 20%",
    ]
    assert rest[1]["attack.kind"] == "absent" and rest[1]["attack.fraction"] == 0.2
    _, rest, skipped = arms({**o, "clients": 11, "defences": ["bulyan", "multikrum"]})
    assert not skipped and any(a["strategy.name"] == "bulyan" for a in rest)
    mk = next(a for a in rest if a["label"] == f"multikrum{SEP}clean")
    assert mk["strategy.name"] == "krum" and mk["strategy.multi_krum"] == 11 - 2  # n - f
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


def test_done_carries_each_sweeps_own_rows_by_name_arm_and_seed(tmp_path: Path) -> None:
    """The stored file holds both sweeps' trials (their names both start at t000): each sweep
    takes only the rows that are its own trials, a row without a configuration hash gets its
    trial's, and one with a hash keeps it (so a changed configuration is still caught)."""
    import csv

    from fedrs.benchmarks.robustness import carried, sweep_spec
    from fedrs.orchestrator.sweep.spec import expand, parse_sweep
    from fedrs.orchestrator.sweep.store import config_sha

    o = options(defences="median", attacks="signflip", fractions=0.2, seeds="0,1")
    first, rest, _ = arms(o)
    pre, grid = sweep_spec(o, first), sweep_spec(o, rest)
    pre_trials, grid_trials = expand(parse_sweep(pre)), expand(parse_sweep(grid))
    assert pre_trials[0].name[:4] == grid_trials[0].name[:4] == "t000"
    rows = [
        {
            "trial": t.name,
            "arm": t.axes["arm"]["label"],
            "federation.seed": t.axes["federation.seed"],
        }
        | {"status": "finished", "final_accuracy": 0.5, "config_sha": ""}
        for t in pre_trials + grid_trials
    ]
    rows[1]["config_sha"] = "kept-as-is"
    rows.append(dict(rows[0], **{"federation.seed": 7}))  # a seed this sweep does not have
    done = tmp_path / "robustness.results.csv"
    with open(done, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for table, trials, folder in [(pre, pre_trials, "pre"), (grid, grid_trials, "grid")]:
        (tmp_path / folder).mkdir()
        with open(carried([str(done)], table, tmp_path / folder), newline="") as fh:
            got = list(csv.DictReader(fh))
        assert [r["trial"] for r in got] == [t.name for t in trials]
        by_name = {t.name: t for t in trials}
        for r in got:
            assert r["arm"] == by_name[r["trial"]].axes["arm"]["label"]
            want = config_sha(by_name[r["trial"]].cfg)
            assert r["config_sha"] == ("kept-as-is" if r["trial"] == rows[1]["trial"] else want)
    # a run with another defence listed first: the median cells have other indices there,
    # and still carry into this grid, renamed to its trials (the axes' digest matches)
    o2 = options(defences="trimmed_mean,median", attacks="signflip", fractions=0.2, seeds="0,1")
    wider = expand(parse_sweep(sweep_spec(o2, arms(o2)[1])))
    wide = [
        {"trial": t.name, "arm": t.axes["arm"]["label"]}
        | {"federation.seed": t.axes["federation.seed"], "status": "finished"}
        for t in wider
    ]
    moved = {r["trial"] for r in wide if "median" in r["arm"]}
    assert moved.isdisjoint(t.name for t in grid_trials)
    # two stored files (the grid's first run, then the wider one): their rows together
    wide_file = tmp_path / "wide.results.csv"
    with open(wide_file, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(wide[0]))
        writer.writeheader()
        writer.writerows(wide[:2] + [r for r in wide if "median" in r["arm"]])
    (tmp_path / "wide").mkdir()
    with open(carried([str(wide_file)], grid, tmp_path / "wide"), newline="") as fh:
        got = list(csv.DictReader(fh))
    assert sorted(r["trial"] for r in got) == sorted(t.name for t in grid_trials)
    (tmp_path / "both").mkdir()
    with open(carried([str(done), str(wide_file)], grid, tmp_path / "both"), newline="") as fh:
        got = list(csv.DictReader(fh))
    assert sorted(r["trial"] for r in got) == sorted(t.name for t in grid_trials * 2)


def test_done_files_are_read_before_any_copy_is_written(tmp_path: Path) -> None:
    """``done=A, B`` (spaces allowed): each file copied into the benchmark's folder, all read
    first, so a file that is itself an earlier copy there is not overwritten before it is read;
    a missing file is one line."""
    from fedrs.benchmarks.robustness import copy_done

    (tmp_path / "a.csv").write_text("A")
    (tmp_path / "done.results.csv").write_text("left by an earlier run")
    got = copy_done(f" {tmp_path}/a.csv , {tmp_path}/done.results.csv ", tmp_path)
    assert [Path(p).read_text() for p in got] == ["A", "left by an earlier run"]
    assert copy_done("", tmp_path) == []
    with pytest.raises(SystemExit, match="no such results file"):
        copy_done(f"{tmp_path}/missing.csv", tmp_path)


def test_an_invalid_workload_exits_1_in_one_line_before_the_grid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the attack does not hurt undefended FedAvg (here: it loses 2 points), the
    benchmark writes its JSON with ``workload_valid: false``, runs no defence and exits 1."""
    import json

    from fedrs.benchmarks import robustness

    swept: list[str] = []

    def fake_sweeps(sweeps: list, done: str | None = None) -> list[dict]:
        swept.extend(folder.name for folder, _ in sweeps)
        rows = []
        for seed in (0, 1, 2):
            for arm, acc in (("fedavg | clean", 0.80), ("fedavg | signflip 20%", 0.78)):
                rows.append(
                    {"trial": f"{arm}{seed}", "arm": arm, "federation.seed": seed}
                    | {"status": "finished", "error": None, "final_accuracy": acc + seed / 100}
                )
            rows.append(
                {"trial": f"z{seed}", "arm": "zeroshot", "federation.seed": seed}
                | {"status": "finished", "error": None, "final_accuracy": 0.1}
            )
        return rows

    monkeypatch.setattr(robustness, "run_sweeps", fake_sweeps)
    out = tmp_path / "robustness.json"
    with pytest.raises(SystemExit) as exit_:
        robustness.main(str(out), keep=str(tmp_path / "keep"))
    message = str(exit_.value.code)
    assert "the workload is invalid" in message and "\n" not in message
    assert swept == ["precondition"]  # no defence ran
    result = json.loads(out.read_text())
    assert result["workload_valid"] is False
    assert result["precondition"]["fedavg_drop_points"] == pytest.approx(2.0)
    assert "signflip_20_drop_points" not in result
