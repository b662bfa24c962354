"""`fedrs sweep`: the sweep file, trial expansion, shared builds, the report's statistics, and
a small sweep on the session's 2-node cluster (placement, a failing trial, resume)."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import threading
from pathlib import Path

import pytest
from rich.console import Console

from fedrs.errors import ConfigError
from fedrs.orchestrator.sweep.builds import build_key, ensure_build
from fedrs.orchestrator.sweep.report import (
    _whole_cells,
    describe,
    group_rows,
    line_styles,
    markdown,
)
from fedrs.orchestrator.sweep.spec import SweepError, expand, label, parse_sweep

BASE = {
    "model": {"arch": "fedrs-tiny"},
    "data": {"num_clients": 3, "per_class": 4, "image_size": 32, "partition": "iid"},
    "federation": {"rounds": 2, "clients_per_round": 2},
    "client": {"local_epochs": 1},
    "resources": {"num_actors": 1, "num_cpus_per_client": 0.5},
}


def test_grid_expands_to_every_combination_with_stable_names() -> None:
    spec = {"base": BASE, "grid": {"data.alpha": [0.1, 0.5], "federation.seed": [0, 1, 2]}}
    trials = expand(parse_sweep(spec))
    assert len(trials) == 6
    assert {(t.cfg.data.alpha, t.cfg.federation.seed) for t in trials} == {
        (a, s) for a in (0.1, 0.5) for s in (0, 1, 2)
    }
    assert [t.name for t in trials] == [t.name for t in expand(parse_sweep(spec))]
    assert len({t.name for t in trials}) == 6
    assert trials[0].seed_axes == ["federation.seed"]


def test_base_keys_may_be_written_dotted_as_grid_axes_are() -> None:
    """``"federation.rounds" = 3`` in [base] (a quoted dotted key, as grid axes are written)
    sets the path it names, beside the section it belongs to; the same trials as nested."""
    dotted = {**BASE, "federation": {"clients_per_round": 2}, "federation.rounds": 3}
    nested = {**BASE, "federation": {"clients_per_round": 2, "rounds": 3}}
    grid = {"federation.seed": [0, 1]}
    a = expand(parse_sweep({"base": dotted, "grid": grid}))
    b = expand(parse_sweep({"base": nested, "grid": grid}))
    assert [t.cfg.federation.rounds for t in a] == [3, 3]
    assert [(t.name, t.cfg) for t in a] == [(t.name, t.cfg) for t in b]
    with pytest.raises(SweepError, match="not a section"):
        parse_sweep({"base": {**BASE, "client.local_epochs.x": 1}})
    with pytest.raises(SweepError, match=r"federation\.rounds is set twice"):
        parse_sweep({"base": {**nested, "federation.rounds": 4}})


def test_random_axes_are_drawn_reproducibly_within_bounds() -> None:
    spec = {
        "base": BASE,
        "grid": {"federation.seed": [0, 1]},
        "random": {
            "client.lr": {"loguniform": [1e-4, 1e-1]},
            "client.batch_size": {"choice": [8, 16]},
        },
        "sweep": {"num_samples": 3, "seed": 7},
    }
    a, b = expand(parse_sweep(spec)), expand(parse_sweep(spec))
    assert len(a) == 6
    assert [t.cfg.client.lr for t in a] == [t.cfg.client.lr for t in b]
    assert all(1e-4 <= t.cfg.client.lr <= 1e-1 for t in a)
    assert {t.cfg.client.batch_size for t in a} <= {8, 16}
    other = expand(parse_sweep({**spec, "sweep": {"num_samples": 3, "seed": 8}}))
    assert [t.cfg.client.lr for t in other] != [t.cfg.client.lr for t in a]
    # the seeds of a configuration share its draws: a report averages them
    by_seed = {s: [t.cfg.client.lr for t in a if t.cfg.federation.seed == s] for s in (0, 1)}
    assert by_seed[0] == by_seed[1] and len(set(by_seed[0])) == 3


def test_a_section_axis_replaces_the_method_table() -> None:
    spec = {
        "base": {**BASE, "method": {"name": "promptfl", "n_ctx": 8}},
        "grid": {"method": [{"name": "promptfl", "n_ctx": 8}, {"name": "zeroshot"}]},
    }
    trials = expand(parse_sweep(spec))
    assert [t.cfg.method.name for t in trials] == ["promptfl", "zeroshot"]
    assert trials[0].cfg.method.options.n_ctx == 8
    # a free-named axis sets several keys together (a method with its strategy)
    arms = [
        {"label": "avg", "method.name": "promptfl"},
        {"label": "prox", "method.name": "promptfl", "strategy.name": "fedprox"},
        {"method": {"name": "zeroshot"}, "federation.rounds": 1},
    ]
    trials = expand(parse_sweep({"base": BASE, "grid": {"arm": arms}}))
    got = [(t.cfg.method.name, t.cfg.strategy.name, t.cfg.federation.rounds) for t in trials]
    base_rounds = trials[0].cfg.federation.rounds
    assert got == [
        ("promptfl", "fedavg", base_rounds),
        ("promptfl", "fedprox", base_rounds),
        ("zeroshot", "fedavg", 1),
    ]
    assert [label(a) for a in arms][:2] == ["avg", "prox"]
    with pytest.raises(ConfigError, match=r"strategy\.nope"):
        expand(parse_sweep({"base": BASE, "grid": {"arm": [{"strategy.nope": 1}]}}))


def test_set_on_a_grid_axis_runs_one_cell_of_the_sweep() -> None:
    arms = [
        {"label": "avg", "method.name": "promptfl"},
        {"label": "prox", "method.name": "promptfl", "strategy.name": "fedprox"},
    ]
    spec = {
        "base": BASE,
        "grid": {"data.alpha": [0.1, 0.5], "federation.seed": [0, 1], "arm": arms},
        "random": {"client.lr": {"loguniform": [1e-3, 1e-1]}},
    }
    full = expand(parse_sweep(spec))
    (twin,) = [
        t
        for t in full
        if (t.cfg.data.alpha, t.cfg.federation.seed, t.cfg.strategy.name) == (0.5, 1, "fedprox")
    ]
    pins = ["data.alpha=0.5", "arm=prox", "federation.seed=1"]
    sweep = parse_sweep(spec, pins)
    (cell,) = expand(sweep)
    # the full sweep's trial: same name, same random draw, same config
    assert len(full) == 8 and (cell.name, cell.axes, cell.cfg) == (twin.name, twin.axes, twin.cfg)
    assert cell.name != full[0].name
    # stored as the sweep's spec, it expands the same way again (what --resume reads)
    assert [t.name for t in expand(parse_sweep(sweep.to_dict()))] == [twin.name]
    # a random axis set is fixed; a config-key axis takes a value it did not list
    (fixed,) = expand(parse_sweep(spec, [*pins, "client.lr=0.02"]))
    assert fixed.cfg == dataclasses.replace(
        twin.cfg, client=dataclasses.replace(twin.cfg.client, lr=0.02)
    )
    (other,) = expand(parse_sweep(spec, ["data.alpha=2", "arm=avg", "federation.seed=0"]))
    assert other.cfg.data.alpha == 2.0 and other.cfg.strategy.name == "fedavg"
    # a table axis takes only one of its labels
    with pytest.raises(SweepError, match=r"labelled 'fedprox'; it has avg, prox$"):
        parse_sweep(spec, ["arm=fedprox"])


def test_curves_give_every_group_its_own_look_and_an_arm_one_colour() -> None:
    arms = ["fedavg", "fedprox", "creff", "clip2fl"]
    groups = [(f, a) for f in (10, 50, 100) for a in arms]
    styles = line_styles(groups)
    looks = {(str(s["color"]), s["linestyle"], s["marker"]) for s in styles.values()}
    assert len(looks) == 12  # matplotlib's own cycle repeats after 10
    for a in arms:
        assert len({str(styles[(f, a)]["color"]) for f in (10, 50, 100)}) == 1
    assert len({styles[(f, "creff")]["linestyle"] for f in (10, 50, 100)}) == 3
    many = line_styles([(i,) for i in range(25)])  # one axis, more values than colours
    assert len({(str(s["color"]), s["linestyle"]) for s in many.values()}) == 25
    assert line_styles([()])[()]["linestyle"] == "-"


@pytest.mark.parametrize(
    ("spec", "error", "words"),
    [
        ({"base": BASE, "grid": {"data.alpha": [0.1, -1.0]}}, ConfigError, "data.alpha=-1"),
        ({"base": BASE, "grid": {"data.nope": [1]}}, ConfigError, "data.nope"),
        ({"base": BASE, "grids": {}}, SweepError, "unknown sweep table"),
        ({"base": BASE, "grid": {"data.alpha": []}}, SweepError, "non-empty list"),
        ({"base": BASE, "random": {"client.lr": {"normal": [0, 1]}}}, SweepError, "loguniform"),
        ({"base": BASE, "random": {"client.lr": {"uniform": [1, 0]}}}, SweepError, "lo < hi"),
        ({"base": BASE, "build": {"sources": []}}, SweepError, "sources"),
        ({"base": BASE, "build": {"sizes": 3}}, SweepError, "unknown [build] key"),
        ({"base": BASE, "sweep": {"mode": "best"}}, SweepError, "sweep.mode"),
    ],
)
def test_bad_sweep_files_are_one_line_errors(spec: dict, error: type, words: str) -> None:
    with pytest.raises(error) as info:
        expand(parse_sweep(spec))
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_trials_share_a_build_when_sources_partition_seed_and_size_agree() -> None:
    spec = {
        "base": {**BASE, "data": {**BASE["data"], "partition": "dirichlet"}},
        "grid": {
            "method.name": ["promptfl", "zeroshot"],
            "data.alpha": [0.1, 0.5],
            "federation.seed": [0, 1],
        },
    }
    trials = expand(parse_sweep(spec))
    keys = {}
    for t in trials:
        keys.setdefault(build_key(t.cfg, {}), set()).add((t.cfg.data.alpha, t.cfg.federation.seed))
    assert len(keys) == 4  # alpha x seed; the method does not change the data
    assert all(len(v) == 1 for v in keys.values())
    with_path = trials[0].cfg.replace(**{"data.path": "/somewhere"})
    assert build_key(with_path, {}) is None
    # [build] seed: one split for every run seed (the alphas still differ)
    pinned = {t.cfg.data.alpha: build_key(t.cfg, {"seed": 7}) for t in trials}
    assert len({build_key(t.cfg, {"seed": 7}) for t in trials}) == len(pinned) == 2


def test_a_shared_build_is_made_once_under_concurrency(tmp_path: Path, monkeypatch) -> None:
    import fedrs.datasets.synth as synth

    calls = []
    real = synth.build_synthetic

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "build_synthetic", counted)
    cfg = expand(parse_sweep({"base": BASE}))[0].cfg
    paths: list[str] = []
    threads = [
        threading.Thread(target=lambda: paths.append(ensure_build(cfg, {}, tmp_path / "b")))
        for _ in range(3)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(calls) == 1
    assert len(set(paths)) == 1 and (Path(paths[0]) / "manifest.json").is_file()


def test_report_statistics_match_hand_computed_values() -> None:
    rows = [
        {"method.name": "a", "federation.seed": 0, "status": "finished", "final_accuracy": 0.5},
        {"method.name": "a", "federation.seed": 1, "status": "finished", "final_accuracy": 0.6},
        {"method.name": "a", "federation.seed": 2, "status": "finished", "final_accuracy": 0.7},
        {"method.name": "b", "federation.seed": 0, "status": "finished", "final_accuracy": 0.2},
        {"method.name": "b", "federation.seed": 1, "status": "failed", "final_accuracy": None},
    ]
    groups = group_rows(rows, ["method.name", "federation.seed"], ["final_accuracy"])
    a = next(g for g in groups if g["method.name"] == "a")
    b = next(g for g in groups if g["method.name"] == "b")
    assert a["final_accuracy"]["n"] == 3
    assert a["final_accuracy"]["mean"] == pytest.approx(0.6)
    assert a["final_accuracy"]["std"] == pytest.approx(0.1)  # sqrt(((.1)^2 * 2) / 2)
    # t(0.975, 2 dof) = 4.302653
    assert a["final_accuracy"]["ci95"] == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert (b["trials"], b["failed"], b["final_accuracy"]["n"]) == (2, 1, 1)
    assert b["final_accuracy"]["std"] is None
    text = markdown(groups, ["method.name"], ["final_accuracy"])
    assert "| a | 0.6000 ± 0.1000" in text and "(n=3)" in text
    assert "| b | 0.2000 (n=1) | 2 | 1 |" in text
    assert describe([]) == {"n": 0, "mean": None, "std": None, "ci95": None}
    # a figure only some finished seeds of a cell have (older trials) is left out of the table
    assert _whole_cells(rows, ["method.name"], "final_accuracy")
    rows[1]["final_balanced_accuracy"] = 0.4
    assert not _whole_cells(rows, ["method.name"], "final_balanced_accuracy")
    for r in rows[:3]:
        r["final_balanced_accuracy"] = 0.4
    assert _whole_cells(rows, ["method.name"], "final_balanced_accuracy")


@pytest.mark.slow
def test_a_sweep_places_trials_records_failures_and_resumes(ray_cluster, tmp_path: Path) -> None:
    import tomllib

    from fedrs.orchestrator.sweep.report import report
    from fedrs.orchestrator.sweep.results import read_results
    from fedrs.orchestrator.sweep.run import run_sweep
    from fedrs.orchestrator.sweep.spec import STATUS, TRIALS

    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text(
        """
[base]
model.arch = "fedrs-tiny"
data.partition = "iid"
data.per_class = 4
data.image_size = 32
federation.rounds = 2
federation.clients_per_round = 2
client.local_epochs = 1
resources.num_actors = 2
resources.num_cpus_per_client = 0.5
resources.num_gpus_per_client = 0.5

[grid]
"data.num_clients" = [3, 500]      # 500 clients cannot be built from this data: the trial fails
"federation.seed" = [0, 1]
"""
    )
    assert tomllib.loads(sweep_file.read_text())["grid"]
    out = tmp_path / "sweep"
    run_sweep(str(sweep_file), out=str(out))
    rows = {r["trial"]: r for r in read_results(out)}
    assert len(rows) == 4
    good = [r for r in rows.values() if r["data.num_clients"] == 3]
    failed = [r for r in rows.values() if r["data.num_clients"] == 500]
    assert [r["status"] for r in good] == ["finished", "finished"]
    assert [r["status"] for r in failed] == ["failed", "failed"]
    assert all("too many clients" in r["error"] and "\n" not in r["error"] for r in failed)
    assert all(r["final_accuracy"] is not None and r["bytes_up"] > 0 for r in good)
    # each finished trial's actors ran in that trial's own placement group
    groups = set()
    for r in good:
        status = json.loads((out / STATUS / f"{r['trial']}.json").read_text())
        pg = status["placement_group_id"]
        assert {a["placement_group_id"] for a in status["actors"]} == {pg}
        assert status["driver_placement_group_id"] == pg  # the driver actor too
        assert {a["gpu_ids"] != [] for a in status["actors"]} == {True}  # fractional GPUs
        groups.add(pg)
    assert len(groups) == 2
    # one build per seed of the good partition; the failed builds left nothing behind
    assert len(list((out / "builds").glob("*/manifest.json"))) == 2
    assert len([p for p in (out / "builds").iterdir() if p.is_dir()]) == 2

    # --resume re-runs nothing that finished; the failed trials are tried again
    before = {
        r["trial"]: (out / TRIALS / r["trial"] / "metrics.jsonl").stat().st_mtime_ns for r in good
    }
    run_sweep(resume=str(out))
    after = {t: (out / TRIALS / t / "metrics.jsonl").stat().st_mtime_ns for t in before}
    assert before == after
    assert len(list((out / "tune").glob("attempt-*"))) == 2
    paths = report(out)
    text = paths["report"].read_text()
    assert "2 finished, 2 failed" in text and "(n=2)" in text  # both seeds of the good row
    assert paths["curves"].stat().st_size > 0


def test_a_trial_reserves_its_driver_and_clients_in_one_group() -> None:
    from fedrs.actors.placement import trial_bundles

    cfg = expand(parse_sweep({"base": BASE}))[0].cfg
    assert trial_bundles(cfg) == ([{"CPU": 0.5}], 0)  # the driver only coordinates: no bundle
    cfg = cfg.replace(
        **{
            "resources.num_actors": 3,
            "resources.num_gpus_per_client": 0.25,
            "resources.server_num_cpus": 1.0,
        }
    )
    bundles, first = trial_bundles(cfg)
    assert first == 1
    assert bundles == [{"CPU": 1.0}] + [{"CPU": 0.5, "GPU": 0.25}] * 3


def test_relative_paths_in_a_sweep_file_become_absolute(tmp_path: Path, monkeypatch) -> None:
    from fedrs.orchestrator.sweep.spec import load_sweep

    (tmp_path / "w.pt").write_bytes(b"x")
    (tmp_path / "s.toml").write_text(
        '[base]\nmodel.pretrained = "w.pt"\n\n[build]\nsources = ["ucm=data/ucm", "rs/rsscn7"]\n'
        'caption_classes = "re:(\\\\d+)"\nclass_map = "map.csv"\n'
    )
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep("s.toml")
    assert sweep.base["model"]["pretrained"] == str(tmp_path / "w.pt")
    assert sweep.build["sources"] == [f"ucm={tmp_path}/data/ucm", f"rsscn7={tmp_path}/rs/rsscn7"]
    assert sweep.build["caption_classes"] == "re:(\\d+)"  # a rule, not a path
    assert sweep.build["class_map"] == str(tmp_path / "map.csv")
    tag = load_sweep("s.toml", ["model.pretrained=openai"])
    assert tag.base["model"]["pretrained"] == "openai"  # an open_clip tag stays a tag


def test_a_trial_whose_process_died_is_recorded_as_failed(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from fedrs.io import write_json
    from fedrs.orchestrator.sweep.progress import SweepProgress
    from fedrs.orchestrator.sweep.spec import STATUS
    from fedrs.orchestrator.sweep.store import trial_status

    trials = expand(parse_sweep({"base": BASE, "grid": {"federation.seed": [0, 1]}}))
    write_json(tmp_path / STATUS / f"{trials[0].name}.json", {"status": "running"})
    progress = SweepProgress(Console(file=io.StringIO()), trials, tmp_path, "accuracy", "max")
    dead = SimpleNamespace(
        config={"trial": trials[0].name},
        error_msg="Traceback ...\nray.exceptions.ActorDiedError: The actor died unexpectedly",
        path=None,
    )
    progress.on_trial_error(0, [], dead)
    status = trial_status(tmp_path, trials[0].name)
    assert status["status"] == "failed" and "ActorDiedError" in status["error"]
    assert progress.failed == 1


def test_progress_says_the_time_left_at_the_rate_trials_end(tmp_path: Path) -> None:
    """Nothing before a trial finishes; then the trials left at the rate trials finish in
    this process (2 running side by side, one finished after 600 s: 3 left take 30 min)."""
    from types import SimpleNamespace

    from fedrs.io import write_json
    from fedrs.orchestrator.sweep.progress import SweepProgress
    from fedrs.orchestrator.sweep.spec import STATUS

    trials = expand(parse_sweep({"base": BASE, "grid": {"federation.seed": [0, 1, 2, 3]}}))
    out = io.StringIO()
    tmp = tmp_path
    progress = SweepProgress(Console(file=out, width=300), trials, tmp, "accuracy", "max")
    now = [100.0]
    progress.clock = lambda: now[0]
    for t in trials[:2]:
        progress.on_trial_start(0, [], SimpleNamespace(config={"trial": t.name}))
    assert "left" not in out.getvalue()
    now[0] = 700.0
    write_json(tmp / STATUS / f"{trials[0].name}.json", {"status": "finished"})
    progress.on_trial_complete(0, [], SimpleNamespace(config={"trial": trials[0].name}))
    assert out.getvalue().splitlines()[-1].endswith("| ~30 min left")
    now[0] = 800.0  # a quick failure is no rate: 1 finished in 700 s, 2 left
    progress.on_trial_error(
        0, [], SimpleNamespace(config={"trial": trials[1].name}, error_msg="boom", path=None)
    )
    assert out.getvalue().splitlines()[-1].endswith("| ~23 min left")
    # round lines: by default one per trial round; off (a long benchmark's log), none
    running = SimpleNamespace(config={"trial": trials[2].name})
    progress.on_trial_result(0, [], running, {"round": 1, "accuracy": 0.5})
    assert out.getvalue().splitlines()[-1].startswith("[1/4 done, 0 running, 1 failed] t002")
    quiet = io.StringIO()
    terse = SweepProgress(Console(file=quiet), trials, tmp, "accuracy", "max", round_lines=False)
    terse.on_trial_result(0, [], running, {"round": 1, "accuracy": 0.5})
    assert quiet.getvalue() == "" and terse.best == (0.5, trials[2].name)


def test_the_driver_bundle_counts_when_a_trial_is_placed() -> None:
    from fedrs.orchestrator.preflight import placement_problem

    cfg = expand(parse_sweep({"base": BASE}))[0].cfg.replace(
        **{
            "resources.num_actors": 4,
            "resources.num_cpus_per_client": 1.0,
            "resources.server_num_cpus": 1.0,
        }
    )
    assert "room for 3" in placement_problem(cfg, [{"CPU": 4}], driver_in_group=True)
    assert placement_problem(cfg, [{"CPU": 5}], driver_in_group=True) is None
    spread = cfg.replace(
        **{"resources.placement_strategy": "STRICT_SPREAD", "resources.num_actors": 2}
    )
    assert placement_problem(spread, [{"CPU": 4}, {"CPU": 4}], driver_in_group=True)
    assert placement_problem(spread, [{"CPU": 4}, {"CPU": 4}]) is None  # driver outside
    assert placement_problem(spread, [{"CPU": 4}] * 3, driver_in_group=True) is None


def test_a_stored_config_sha_that_reads_as_a_number_still_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hash of hex digits only ("418061091865", about 1 in 300 trials) or one that reads as
    a float ("123e45678901") is text when a stored results table is read back: --done
    carries the trial instead of calling its own configuration another one."""
    import csv

    from fedrs.orchestrator.sweep import results

    spec = {"base": BASE, "grid": {"federation.seed": [0, 1]}}
    trials = expand(parse_sweep(spec))
    sha = {0: "418061091865", 1: "123e45678901"}
    monkeypatch.setattr(results, "config_sha", lambda cfg: sha[cfg.federation.seed])
    stored = tmp_path / "s.results.csv"
    with stored.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["trial", "federation.seed", "status", "config_sha"])
        writer.writeheader()
        writer.writerows(
            {"trial": t.name, "federation.seed": i, "status": "finished", "config_sha": sha[i]}
            for i, t in enumerate(trials)
        )
    rows, _, _ = results.read_stored(stored)
    assert [r["config_sha"] for r in rows] == ["418061091865", "123e45678901"]
    assert list(results.carry(trials, stored)) == [t.name for t in trials]


def test_done_carries_finished_trials_of_a_stored_table_and_refuses_changed_ones(
    tmp_path: Path,
) -> None:
    """``fedrs sweep FILE --done STORED.results.csv``: a study continued on a fresh machine
    takes the stored finished trials as they are (same name, axes and config_sha), runs the
    rest, and refuses a stored row whose configuration the sweep file has since changed."""
    import csv

    from fedrs.orchestrator.sweep.results import carry
    from fedrs.orchestrator.sweep.run import run_sweep
    from fedrs.orchestrator.sweep.store import config_sha

    def toml(base: dict) -> str:
        keys = [f"{s}.{k} = {json.dumps(v)}" for s, t in base.items() for k, v in t.items()]
        return "[base]\n" + "\n".join(keys) + '\n[grid]\n"federation.seed" = [0, 1]\n'

    spec = {"base": BASE, "grid": {"federation.seed": [0, 1]}}
    (tmp_path / "s.toml").write_text(toml(BASE))
    trials = expand(parse_sweep(spec))
    rows = [
        {
            "trial": t.name,
            "federation.seed": i,
            "status": "finished",
            "final_accuracy": 0.5 + i,
            "best_accuracy": 0.5 + i,
            "config_sha": config_sha(t.cfg),
        }
        for i, t in enumerate(trials)
    ]
    stored = tmp_path / "s.results.csv"

    def store(rows: list[dict]) -> None:
        with stored.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    store([{**rows[0], "status": "pending"}, rows[1]])
    assert list(carry(trials, stored)) == [trials[1].name]  # only finished rows carry
    store(rows)
    # a value added to the grid before them moves their index: still theirs, by the axes'
    # digest in the name, and renamed to the new sweep's trials
    grown = expand(parse_sweep({**spec, "grid": {"federation.seed": [5, 0, 1]}}))
    moved = carry(grown, stored)
    assert [n.split("-")[0] for n in moved] == ["t001", "t002"]
    assert [r["trial"] for r in moved.values()] == [t.name for t in grown[1:]]
    assert [r["final_accuracy"] for r in moved.values()] == [0.5, 1.5]
    # several stored files (--done repeated): the first that has a trial finished gives it
    first = tmp_path / "first.results.csv"
    with first.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerow({**rows[0], "final_accuracy": 9.0})
    both = carry(trials, [first, stored])
    assert [r["final_accuracy"] for r in both.values()] == [9.0, 1.5]
    # a row of another cell whose digest is the same (6 hex digits can collide) is not it
    other = {**rows[0], "trial": "t009-" + trials[1].name.split("-")[1], "config_sha": "x"}
    with first.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerow(other)  # federation.seed 0 under seed 1's digest
    assert list(carry(trials, first)) == []
    # `fedrs sweep --done A --done B` hands both files on
    from fedrs.cli import build_parser

    args = build_parser().parse_args(["sweep", "s.toml", "--done", "a.csv", "--done", "b.csv"])
    assert args.done == ["a.csv", "b.csv"]
    quiet = Console(file=io.StringIO())
    result = run_sweep(
        str(tmp_path / "s.toml"), out=str(tmp_path / "sw"), done=str(stored), console=quiet
    )
    assert (result.trials, result.finished, result.failed) == (2, 2, 0)  # nothing ran
    got = list(csv.DictReader((tmp_path / "sw" / "results.csv").open()))
    assert [float(r["final_accuracy"]) for r in got] == [0.5, 1.5]
    assert [r["config_sha"] for r in got] == [config_sha(t.cfg) for t in trials]
    (tmp_path / "s.toml").write_text(toml({**BASE, "client": {"local_epochs": 2}}))
    with pytest.raises(SweepError, match=r"was run with another configuration"):
        run_sweep(
            str(tmp_path / "s.toml"), out=str(tmp_path / "sw2"), done=str(stored), console=quiet
        )
