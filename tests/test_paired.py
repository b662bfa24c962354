"""Paired comparisons (`fedrs sweep report --compare`) against hand-computed values, a stored
study's `results.csv` read back, and markdown tables regenerated from it (`fedrs sweep tables`)."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fedrs.benchmarks.tables import blocks, regenerate
from fedrs.orchestrator.sweep.paired import CompareError, Comparison, paired_differences
from fedrs.orchestrator.sweep.report import stored_report
from fedrs.orchestrator.sweep.results import read_stored
from fedrs.orchestrator.sweep.spec import SweepError, is_seed_axis

T975 = {1: 12.706205, 2: 4.302653}  # two-sided 95 % Student-t quantiles, by degrees of freedom
AXES = ["data.alpha", "arm", "federation.seed"]


def _row(alpha, arm, seed, acc, status="finished", kappa=None):
    return {
        "trial": f"t-{alpha}-{arm}-{seed}",
        "data.alpha": alpha,
        "arm": arm,
        "federation.seed": seed,
        "status": status,
        "error": "boom" if status == "failed" else None,
        "final_accuracy": acc,
        "final_kappa": kappa,
        "best_accuracy": acc,
    }


def rows() -> list[dict]:
    return [
        # alpha 0.1: three seeds on both sides; creff - fedavg = -0.040, -0.027, -0.013
        _row(0.1, "creff", 0, 0.200, kappa=0.5),
        _row(0.1, "creff", 1, 0.273, kappa=0.6),
        _row(0.1, "creff", 2, 0.287, kappa=0.7),
        _row(0.1, "fedavg", 0, 0.240, kappa=0.4),
        _row(0.1, "fedavg", 1, 0.300, kappa=0.45),
        _row(0.1, "fedavg", 2, 0.300, kappa=0.5),
        # alpha 0.5: seed 2 failed on the fedavg side, seed 3 only on creff -> n = 2
        _row(0.5, "creff", 0, 0.50),
        _row(0.5, "creff", 1, 0.60),
        _row(0.5, "creff", 2, 0.70),
        _row(0.5, "creff", 3, 0.70),
        _row(0.5, "fedavg", 0, 0.45),
        _row(0.5, "fedavg", 1, 0.45),
        _row(0.5, "fedavg", 2, None, status="failed"),
        _row(0.5, "other", 0, 0.1),
    ]


def _by_alpha(results, metric="final_accuracy"):
    return {r["group"]["data.alpha"]: r for r in results if r["metric"] == metric}


def test_paired_differences_match_hand_computed_values() -> None:
    out = _by_alpha(
        paired_differences(
            rows(), AXES, Comparison.parse("arm=creff:fedavg"), ["final_accuracy"], is_seed_axis
        )
    )
    a = out["0.1"]
    assert [p["diff"] for p in a["pairs"]] == pytest.approx([-0.040, -0.027, -0.013])
    assert a["n"] == 3 and a["positive"] == 0 and a["unpaired"] == []
    assert a["mean"] == pytest.approx(-0.08 / 3)
    # sample sd of (-.040, -.027, -.013) is 0.013503; half-width t(2) sd / sqrt(3) = 0.033544,
    # not the sd itself (0.0135): the interval includes 0
    assert a["std"] == pytest.approx(0.0135031, rel=1e-5)
    assert a["ci95"] == pytest.approx(T975[2] * 0.0135031 / math.sqrt(3), rel=1e-5)
    assert a["ci95"] == pytest.approx(0.033544, abs=1e-6)
    assert not a["excludes_zero"]
    b = out["0.5"]  # n = 2: 0.05 and 0.15; the failed and the one-sided seeds are named
    assert [p["diff"] for p in b["pairs"]] == pytest.approx([0.05, 0.15])
    assert b["mean"] == pytest.approx(0.10) and b["positive"] == 2
    assert b["ci95"] == pytest.approx(T975[1] * math.sqrt(0.005) / math.sqrt(2), rel=1e-5)
    assert len(b["unpaired"]) == 2
    assert "federation.seed=2" in b["unpaired"][0] and "fedavg failed" in b["unpaired"][0]
    assert "federation.seed=3" in b["unpaired"][1] and "fedavg absent" in b["unpaired"][1]


def test_a_clear_difference_excludes_zero_and_the_sign_follows_a_minus_b() -> None:
    data = [_row(0.1, "x", s, 0.5 + 0.01 * s) for s in range(4)]
    data += [_row(0.1, "y", s, 0.3 + 0.012 * s) for s in range(4)]
    (xy,) = paired_differences(
        data, AXES, Comparison.parse("arm=x:y"), ["final_accuracy"], is_seed_axis
    )
    (yx,) = paired_differences(
        data, AXES, Comparison.parse("arm=y:x"), ["final_accuracy"], is_seed_axis
    )
    assert xy["excludes_zero"] and xy["positive"] == 4 and xy["mean"] == pytest.approx(0.197)
    assert yx["mean"] == pytest.approx(-xy["mean"]) and yx["ci95"] == pytest.approx(xy["ci95"])


def test_a_star_compares_every_arm_with_the_baseline() -> None:
    out = paired_differences(
        rows(), AXES, Comparison.parse("arm=*:fedavg"), ["final_accuracy"], is_seed_axis
    )
    assert [(r["compare"], r["group"]["data.alpha"]) for r in out] == [
        ("arm=creff:fedavg", "0.1"),
        ("arm=creff:fedavg", "0.5"),
        ("arm=other:fedavg", "0.5"),
    ]
    assert out[2]["n"] == 1 and out[2]["mean"] == pytest.approx(0.1 - 0.45)
    assert out[2]["ci95"] is None and not out[2]["excludes_zero"]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("arm=creff", "expected AXIS=A:B"),
        ("arm=creff:creff", "two different values"),
        ("nope=creff:fedavg", "not an axis"),
        ("arm=creff:fedprox", "has no value 'fedprox'"),
    ],
)
def test_bad_comparisons_are_one_line_errors(spec: str, words: str) -> None:
    with pytest.raises(CompareError, match=words):
        paired_differences(rows(), AXES, Comparison.parse(spec), ["final_accuracy"], is_seed_axis)


def _write_csv(path: Path, data: list[dict]) -> None:
    cols = list(dict.fromkeys(k for r in data for k in r))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(data)


def test_a_stored_results_csv_reports_groups_and_comparisons(tmp_path: Path) -> None:
    path = tmp_path / "study.results.csv"
    _write_csv(path, rows())
    (tmp_path / "study.toml").write_text(
        '[sweep]\nmetric = "accuracy"\n[report]\ncompare = ["arm=creff:fedavg"]\nscale = 100.0\n'
    )
    data, axes, settings = read_stored(path)
    assert axes == AXES and data[0]["data.alpha"] == 0.1 and data[0]["federation.seed"] == 0
    assert settings["report"]["compare"] == ["arm=creff:fedavg"]
    text = stored_report(path, also=["kappa"])
    assert "95 % Student-t half-width of the mean paired difference" in text
    assert "95 % Student-t half-width of the mean]" in text  # the groups table says it too
    # accuracy in points (scale 100): -2.6667 ± 3.3544, not ± the sd (1.35)
    assert "| creff - fedavg | 0.1 | final_accuracy | -2.6667 ± 3.3544 | 3 | 0/3 |" in text
    assert "**+10.0000 ± 63.5310**" not in text  # n = 2: wide, includes 0, not bold
    assert "+10.0000 ± 63.5310" in text
    # kappa: +0.10 / +0.15 / +0.20: 15 ± t(2) 5 / sqrt(3) = 12.4207 points, excludes 0
    assert "final_kappa | **+15.0000 ± 12.4207** | 3 | 3/3 |" in text
    # at alpha 0.5 no trial reports kappa: that metric is not compared there (not "unpaired")
    assert "| 0.5 | final_kappa" not in text and "has no final_kappa" not in text
    assert "federation.seed=3 (fedavg absent)" in text
    # [report] compare_also: the comparisons pair the headline alone; kappa stays a column
    (tmp_path / "study.toml").write_text(
        '[sweep]\nmetric = "accuracy"\n[report]\ncompare = ["arm=creff:fedavg"]\n'
        'also = ["kappa"]\ncompare_also = []\nscale = 100.0\n'
    )
    text = stored_report(path)
    assert "| creff - fedavg | 0.1 | final_accuracy | -2.6667 ± 3.3544 | 3 | 0/3 |" in text
    groups, paired = text.split("Paired comparisons")
    assert "final_kappa" in groups and "final_kappa" not in paired


def test_tables_regenerate_from_stored_results_and_a_hand_edit_fails_the_check(
    tmp_path: Path,
) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "sweeps").mkdir()
    _write_csv(tmp_path / "sweeps" / "s.results.csv", rows())
    cmd = "fedrs sweep report sweeps/s.results.csv --compare arm=creff:fedavg --scale 100"
    doc = tmp_path / "docs" / "README.md"
    doc.parent.mkdir()
    doc.write_text(f"# Study\n\n<!-- table: {cmd} -->\nold text\n<!-- /table -->\n\nafter\n")
    assert blocks(doc) == [cmd]
    assert regenerate(doc, check=True) == [cmd]  # the typed text differs
    assert "old text" in doc.read_text()  # --check changes nothing
    assert regenerate(doc) == [cmd]
    text = doc.read_text()
    assert "-2.6667 ± 3.3544" in text and text.endswith("<!-- /table -->\n\nafter\n")
    assert regenerate(doc, check=True) == []
    doc.write_text(text.replace("-2.6667 ± 3.3544", "-2.6667 ± 1.3500"))  # edited by hand
    assert regenerate(doc, check=True) == [cmd]
    fedrs = [sys.executable, "-m", "fedrs.cli"]
    proc = subprocess.run(
        [*fedrs, "sweep", "tables", str(doc), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("fedrs: error: 1 of 1 tables")
    proc = subprocess.run([*fedrs, "sweep", "tables", str(doc)], capture_output=True, text=True)
    assert proc.returncode == 0 and "-2.6667 ± 3.3544" in doc.read_text()
    proc = subprocess.run(
        [*fedrs, "sweep", "report", str(tmp_path / "missing.results.csv")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "missing" in proc.stderr.strip().splitlines()[-1]


def test_results_of_two_sweep_files_pool_into_one_study(tmp_path: Path) -> None:
    """An arm run later in its own sweep file: `fedrs sweep report A.csv B.csv` pairs it with
    the first file's arms on the shared axes; different axes or a trial twice are refused."""
    first = [r for r in rows() if r["arm"] == "fedavg"]
    later = [r for r in rows() if r["arm"] == "creff"]
    _write_csv(tmp_path / "a.results.csv", first)
    _write_csv(tmp_path / "b.results.csv", later)
    (tmp_path / "a.toml").write_text('[report]\ncompare = ["arm=creff:fedavg"]\nscale = 100.0\n')
    text = stored_report([tmp_path / "a.results.csv", tmp_path / "b.results.csv"])
    # the same pairs as from one file: alpha 0.1, -4.0 / -2.7 / -1.3 points
    assert "creff - fedavg | 0.1 | final_accuracy | -2.6667 ± 3.3544 | 3 | 0/3" in text
    with pytest.raises(CompareError, match="has no value 'creff'"):  # one file: one side only
        stored_report(tmp_path / "a.results.csv")
    bad = tmp_path / "c.results.csv"  # another axis: "extra"
    _write_csv(bad, [{"trial": r["trial"], "extra": 1, **r} for r in later])
    with pytest.raises(SweepError, match="differ from"):
        stored_report([tmp_path / "a.results.csv", bad])
    (tmp_path / "pyproject.toml").write_text("")  # a README table of the pooled study
    doc = tmp_path / "README.md"
    doc.write_text(
        "<!-- table: fedrs sweep report a.results.csv b.results.csv -->\n<!-- /table -->\n"
    )
    assert regenerate(doc) and "-2.6667 ± 3.3544" in doc.read_text()
    with pytest.raises(SweepError, match="in the results twice"):
        stored_report([tmp_path / "a.results.csv", tmp_path / "a.results.csv"])


def test_a_report_table_in_the_sweep_file_is_validated() -> None:
    from fedrs.orchestrator.sweep.spec import parse_sweep

    spec = {"grid": {"federation.seed": [0, 1]}, "report": {"compare": ["arm=a:b"], "x": "k"}}
    assert parse_sweep(spec).report == {"compare": ["arm=a:b"], "x": "k"}
    with pytest.raises(SweepError, match="unknown \\[report\\] key"):
        parse_sweep({"report": {"comprae": []}})
    with pytest.raises(SweepError, match="list of strings"):
        parse_sweep({"report": {"compare": [1]}})


def test_the_readme_tables_match_their_stored_results() -> None:
    readme = Path(__file__).resolve().parents[1] / "benchmarks" / "README.md"
    assert blocks(readme), "benchmarks/README.md has no regenerated table"
    assert regenerate(readme, check=True) == []
    with pytest.raises(SweepError, match="missing"):
        stored_report(readme.parent / "sweeps" / "no-such.results.csv")


def test_a_label_holding_colon_space_is_one_arm() -> None:
    """A:B splits at the first colon not followed by whitespace, so labels such as
    "split: feddiff" compare as written."""
    from fedrs.orchestrator.sweep.paired import Comparison

    c = Comparison.parse("arm=split: feddiff:split: HSI only")
    assert (c.axis, c.a, c.b) == ("arm", "split: feddiff", "split: HSI only")
    assert (Comparison.parse("arm=creff:fedavg").a, Comparison.parse("x=*:b").a) == ("creff", "*")


def test_points_scale_fractions_and_leave_bytes_as_they_are() -> None:
    from fedrs.orchestrator.sweep.paired import paired_markdown

    data = [{**_row(0.1, "x", s, 0.5), "final_bytes": 1000.0 + s} for s in range(3)]
    data += [{**_row(0.1, "y", s, 0.4), "final_bytes": 400.0} for s in range(3)]
    results = paired_differences(
        data, AXES, Comparison.parse("arm=x:y"), ["final_accuracy", "final_bytes"], is_seed_axis
    )
    text = paired_markdown(results, scale=100.0)
    acc, nbytes = (line for line in text.splitlines() if line.startswith("| x - y"))
    assert "+10.0000" in acc  # 0.1 of accuracy: 10 points
    assert "+601.0000" in nbytes and "60100" not in nbytes  # bytes: not x100
    assert "bytes and counts as they are" in text


def test_bench_tables_come_from_stored_json_and_a_hand_edit_fails_the_check(
    tmp_path: Path,
) -> None:
    import json

    from fedrs.errors import ConfigError

    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "results").mkdir()
    for name, eff, ratio in (("new", [0.52, 0.55], 0.044), ("old", [0.51, 0.49], 1.7)):
        record = {
            "benchmark": "startup",
            "ratios": {"warm": ratio},
            "summary": [{"partition": "iid", "eff": eff, "total": {"s": 2.0 / 3.0}}],
            "attacks": {
                "ipm 20%": {"defences": {"median": {"drop": ratio}}},
                "clean": {"defences": {"median": {"drop": None}}},
            },
        }
        (tmp_path / "results" / f"{name}.json").write_text(json.dumps(record))
    rows = (
        "fedrs bench table results/new.json results/old.json --rows summary "
        "--columns partition,eff,total.s"
    )
    target = "fedrs bench table results/new.json --target ratios.warm<=1.5 --target ratios.warm>1"
    values = "fedrs bench table results/new.json results/old.json --values ratios.warm,benchmark"
    # records by name (a first column of names), a column headed by its label
    named = (
        "fedrs bench table results/new.json --rows attacks "
        "--columns 'the median=defences.median.drop'"
    )
    doc = tmp_path / "README.md"
    doc.write_text(
        f"<!-- table: {rows} -->\n<!-- /table -->\n<!-- table: {target} -->\n<!-- /table -->\n"
        f"<!-- table: {values} -->\n<!-- /table -->\n"
    )
    assert regenerate(doc) == [rows, target, values]
    text = doc.read_text()
    doc.write_text(text + f"<!-- table: {named} -->\n<!-- /table -->\n")
    assert regenerate(doc) == [named]
    table = "| attacks | the median |\n|---|---|\n| ipm 20% | 0.044 |\n| clean |  |\n"
    assert table in doc.read_text()
    doc.write_text(text)
    assert "| figure | new | old |" in text and "| ratios.warm | 0.044 | 1.7 |" in text
    assert "| benchmark | startup | startup |" in text
    assert "| result | partition | eff | total.s |" in text
    assert (
        "| new | iid | 0.52, 0.55 | 0.6667 |" in text
        and "| old | iid | 0.51, 0.49 | 0.6667 |" in text
    )
    assert "| ratios.warm | 0.044 | <= 1.5 | yes |" in text
    assert "| ratios.warm | 0.044 | > 1 | no |" in text
    assert regenerate(doc, check=True) == []
    doc.write_text(text.replace("| 0.044 | <= 1.5 | yes |", "| 0.044 | <= 1.5 | no |"))
    assert regenerate(doc, check=True) == [target]
    # the stored result changed: the table no longer matches it
    regenerate(doc)
    (tmp_path / "results" / "new.json").write_text(
        json.dumps({"benchmark": "startup", "ratios": {"warm": 2.0}, "summary": []})
    )
    assert regenerate(doc, check=True) == [rows, target, values]
    for bad, message in (
        ("fedrs bench table results/new.json --values ratios.cold", "no value at"),
        ("fedrs bench table results/new.json --values a --target b<=1", "give one of"),
        ("fedrs bench table results/none.json --target a<=1", "missing"),
        ("fedrs bench table results/new.json --target ratios.cold<=1", "no value at"),
        ("fedrs bench table results/new.json --target ratios.warm=1", "expected PATH<=VALUE"),
        ("fedrs bench table results/new.json --rows summary", "needs --columns"),
    ):
        doc.write_text(f"<!-- table: {bad} -->\n<!-- /table -->\n")
        with pytest.raises(ConfigError, match=message):
            regenerate(doc)
