"""What each defence buys against attacks that hurt: attacks x defences x attacker fraction.

    fedrs bench robustness [--set name=value ...] --json out.json

Workload: CLIP2FL's client model trained from scratch (``method`` student: ResNet-8, widths x
``scaling``, FedAvg, no teacher) on the synthetic default data (10 classes, ``per_class``,
``image_size`` px) split over ``clients`` non-IID clients (Dirichlet, ``alpha``), all of them
every round, ``rounds`` rounds of ``local_epochs`` at ``lr`` (SGD, ``momentum``), seeds
``seeds`` (each seed its own draw of the scenes and split). Clean FedAvg climbs from chance
(round 0, 0.1) to about 0.8 in 8 rounds without saturating, so an attack has something to
destroy. 120 scenes per class and sensor (2,160 for training, 540 test) over Dirichlet(1.0)
clients: the training data is large enough that losing the attackers' share of it costs
little (the floor below; at 40 per class and Dirichlet(0.5) it cost about 10 points, more than
the target), and the test split fine enough (a test image is 0.19 points) for a 2-point
target. The zero-shot arm evaluates the CLIP backbone (``arch``, ``pretrained``, or pretrained
here for ``pretrain_epochs`` epochs; random-init, the default, is at chance) on the same test
split (``zeroshot_accuracy`` beside ``clean_accuracy``). ``--set method=fullft --set
pretrain_epochs=3 --set lr=0.001`` fine-tunes a pretrained CLIP instead: there, reversed steps
barely move it from its zero-shot accuracy and the precondition below refuses it.

Attacks (``fedrs/core/attacks.py``), each at every attacker fraction (``fractions``):

* ``signflip``, boosted: ``w_g - boost (w - w_g)``; with ``boost x f > n - f`` FedAvg's step
  points against the honest mean (20 % of 10 clients, ``boost`` 10: -1.2 x the honest step);
* ``alie`` (Baruch et al., 2019): every attacker sends the honest updates' mean - z std per
  coordinate, z = ``alie_z`` (0: the paper's z_max from n and f);
* ``ipm`` (Xie et al., 2019): every attacker sends -``ipm_epsilon`` x the honest mean update.

Defences: ``defences`` (FedAvg first, the undefended reference); Krum / Multi-Krum / Bulyan
assume ``byzantine`` attackers (``multikrum``: Krum's ``multi_krum`` = clients - byzantine, the
mean of the n - f best-scored updates, Blanchard et al. 2017; Bulyan needs ``clients >= 4
byzantine + 3``, else it is left out and said so); trimmed mean cuts ``trim_fraction`` per
side; normclip's bound is ``clip_norm`` (0, the default: the median of each round's update
norms, an honest norm while attackers are under half); normfilter leaves out the updates longer
than ``filter_factor`` x that median and averages the rest.

Precondition, checked first in its own sweep (FedAvg clean and at 20 % boosted sign flip, and
zero-shot, over ``seeds``): FedAvg's drop must be at least 10 points with a 95 % Student-t
interval (paired by seed) excluding 0; else the workload cannot show what a defence is worth,
the JSON says ``workload_valid: false`` and the command exits 1 with one line. (An interval
needs two seeds or more.)

Output: per attack and fraction, FedAvg's drop against clean FedAvg of the same seed
(``fedavg_drop_points``, ``fedavg_drop_ci95`` = [low, high]) and per defence its accuracy, drop
(with interval) and ``recovered_fraction`` = (defended - attacked FedAvg) / (clean - attacked
FedAvg), on the means over seeds; a ``verdict`` line says plainly where every defence fails.
The floor: at every attacker fraction FedAvg also runs with those clients' updates left out
(``attack.kind = "absent"``), what a perfect defence aggregates; their data is lost with them,
so a defence cannot beat it: ``floor_drop_points`` per cell and, per defence,
``beyond_floor_points`` (the floor's accuracy minus the defence's, paired by seed). Headline:
``signflip_20_drop_points``, the best robust defence's drop at 20 % boosted sign flip
(target: at most 2 points), beside ``signflip_20_fedavg_drop_points`` (at least 10),
``signflip_20_floor_drop_points`` and that defence's ``signflip_20_beyond_floor_points``. A
heatmap of the drops sits beside the JSON.

Every trial is a sweep trial (``orchestrator/sweep.py``): Tune runs two at a time on 2 cores
(the default grid, 192 trials, takes hours there: about 2 minutes a trial; a cluster runs as
many at once as it has CPUs); ``--set keep=DIR`` keeps the sweeps so an interrupted
benchmark resumes; ``--set done=FILE[,FILE...]`` takes the finished trials of stored
``robustness.results.csv`` files (the same setup: axes and configurations are checked) as
they are and runs only the rest, e.g. a defence added later, or the grid after a run of its
headline cell alone.

Options (``--set``): ``method`` (student), ``scaling`` (1), ``defences`` (fedavg,median,
trimmed_mean,krum,normclip,normfilter; also multikrum, bulyan, ...), ``attacks`` (signflip,
alie,ipm; also scale, noise, labelflip, collude), ``fractions`` (0.1,0.2,0.3), ``seeds``
(0,1,2), ``rounds`` (8), ``clients`` (10), ``alpha`` (1.0), ``per_class`` (120), ``image_size``
(32), ``local_epochs`` (2), ``lr`` (0.02), ``momentum`` (0.9), ``weight_decay`` (5e-4), ``arch``
(fedrs-tiny), ``pretrained`` (""), ``pretrain_epochs`` (0), ``boost`` (10), ``alie_z`` (0),
``ipm_epsilon`` (10), ``byzantine`` (3), ``trim_fraction`` (0.3), ``clip_norm`` (0),
``filter_factor`` (3), ``keep`` (a folder for the sweeps), ``done`` (stored results files,
comma-separated).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedrs.benchmarks.common import machine_info, print_table, write_result
from fedrs.benchmarks.sweep import _list
from fedrs.io import write_bytes

log = logging.getLogger(__name__)
TARGET_POINTS = 2.0  # the best defence's drop at 20 % boosted sign flip, at most
MIN_FEDAVG_DROP = 10.0  # the precondition: FedAvg's own drop there, at least
HEADLINE = ("signflip", 0.2)
ROBUST = ("median", "trimmed_mean", "krum", "multikrum", "bulyan", "normclip", "normfilter")
RESNET8 = ("student", "creff", "clip2fl")  # methods whose client model ``scaling`` sizes
CLEAN, ZEROSHOT, SEP, ABSENT = "clean", "zeroshot", " | ", "absent"
CHANCE = 0.1  # the synthetic default's 10 balanced test classes: a diverged model's accuracy
PRETRAIN_SEED = 1000  # the pretraining draw of the synthetic scenes (runs use their own seeds)


def cell_label(kind: str, fraction: float) -> str:
    return f"{kind} {round(100 * fraction)}%"


def floor_cell(fraction: float) -> dict[str, Any]:
    """FedAvg with the attackers' updates left out (``absent``): a perfect defence's result."""
    return {
        "label": cell_label(ABSENT, fraction),
        "attack.kind": ABSENT,
        "attack.fraction": fraction,
    }


def attack_cells(attacks: list[str], fractions: list[float]) -> list[dict[str, Any]]:
    """The clean cell, then every attack at every fraction."""
    cells = [{"label": CLEAN, "attack.kind": "none", "attack.fraction": 0.0}]
    for kind in attacks:
        for f in fractions:
            cells.append({"label": cell_label(kind, f), "attack.kind": kind, "attack.fraction": f})
    return cells


def defences(o: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The defences that run, FedAvg first, and those left out (Bulyan's bound), in words."""
    kept, skipped = [], []
    for name in dict.fromkeys(["fedavg", *o["defences"]]):
        if name == "bulyan" and o["clients"] < 4 * o["byzantine"] + 3:
            skipped.append(f"bulyan needs clients >= {4 * o['byzantine'] + 3}, got {o['clients']}")
        else:
            kept.append(name)
    return kept, skipped


def strategy_of(defence: str, o: dict[str, Any]) -> dict[str, Any]:
    """The ``strategy.*`` settings of a defence: its strategy's name, or a named variant."""
    if defence == "multikrum":
        return {"strategy.name": "krum", "strategy.multi_krum": o["clients"] - o["byzantine"]}
    return {"strategy.name": defence}


def arm(defence: str, cell: dict[str, Any], o: dict[str, Any]) -> dict[str, Any]:
    """One grid bundle: a defence under an attack cell, labelled ``defence | cell``."""
    return {**cell, **strategy_of(defence, o), "label": f"{defence}{SEP}{cell['label']}"}


def arms(o: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """The precondition's arms (FedAvg clean and at 20 % boosted sign flip, zero-shot), the
    rest of the grid's, and the defences left out."""
    names, skipped = defences(o)
    cells = attack_cells(o["attacks"], o["fractions"])
    head = cell_label(*HEADLINE)
    if head not in {c["label"] for c in cells}:
        cells.append(attack_cells([HEADLINE[0]], [HEADLINE[1]])[1])
    first = [arm("fedavg", c, o) for c in cells if c["label"] in (CLEAN, head)]
    first.append({"label": ZEROSHOT, "method": {"name": "zeroshot"}})  # the backbone alone
    done = {a["label"] for a in first}
    fractions = sorted({c["attack.fraction"] for c in cells if c["label"] != CLEAN})
    rest = [arm("fedavg", floor_cell(f), o) for f in fractions]  # the floors
    rest += [arm(d, c, o) for d in names for c in cells if f"{d}{SEP}{c['label']}" not in done]
    return first, rest, skipped


def base_config(o: dict[str, Any]) -> dict[str, Any]:
    """The run configuration every trial shares (a parsed TOML table)."""
    return {
        "method": {"name": o["method"]}
        | ({"scaling": o["scaling"]} if o["method"] in RESNET8 else {}),
        "model": {"arch": o["arch"], "pretrained": o["pretrained"]},
        "data": {
            "partition": "dirichlet",
            "alpha": o["alpha"],
            "num_clients": o["clients"],
            "per_class": o["per_class"],
            "image_size": o["image_size"],
        },
        "federation": {
            "rounds": o["rounds"],
            "clients_per_round": o["clients"],
            "eval_every": o["rounds"],
        },
        # the optimiser pinned: a method's run defaults (the student's plain SGD) must not
        # change the workload under the stored results
        "client": {
            "local_epochs": o["local_epochs"],
            "lr": o["lr"],
            "momentum": o["momentum"],
            "weight_decay": o["weight_decay"],
        },
        "strategy": {
            "byzantine": o["byzantine"],
            "trim_fraction": o["trim_fraction"],
            "clip_norm": o["clip_norm"],
            "filter_factor": o["filter_factor"],
        },
        "attack": {"boost": o["boost"], "alie_z": o["alie_z"], "ipm_epsilon": o["ipm_epsilon"]},
        "resources": {"num_actors": 1, "num_cpus_per_client": 1.0},
    }


def sweep_spec(o: dict[str, Any], arm_list: list[dict[str, Any]]) -> dict[str, Any]:
    """A sweep over ``arm_list`` x seeds (as a parsed TOML table)."""
    return {
        "base": base_config(o),
        "grid": {"arm": arm_list, "federation.seed": o["seeds"]},
        "sweep": {"metric": "accuracy"},
    }


def run_config(o: dict[str, Any], bundle: dict[str, Any], seed: int, data_path: str = ""):
    """One trial's ``RunConfig`` outside a sweep (tests, a single cell by hand)."""
    from fedrs.core.config import from_dict

    base = base_config(o)
    base |= {k: v for k, v in bundle.items() if isinstance(v, dict)}  # a section replaced
    sets = {k: v for k, v in bundle.items() if k != "label" and not isinstance(v, dict)}
    sets |= {"federation.seed": seed} | ({"data.path": data_path} if data_path else {})
    return from_dict(base, [f"{k}={v}" for k, v in sets.items()])


def interval(values: list[float]) -> dict[str, Any]:
    """Mean and 95 % Student-t interval ([low, high]; None under two values)."""
    from fedrs.orchestrator.sweep.report import describe

    d = describe(values)
    if d["mean"] is None:
        return {"mean": None, "ci95": None, "n": 0}
    ci = None if d["ci95"] is None else [d["mean"] - d["ci95"], d["mean"] + d["ci95"]]
    return {"mean": d["mean"], "ci95": ci, "n": d["n"]}


def diverged(row: dict[str, Any]) -> bool:
    """A trial that failed because every update of a round was non-finite: the attack drove
    the global model to overflow, so no honest client could train it any more (or a stored
    row that says so)."""
    if str(row.get("diverged") or 0) == "1":
        return True
    return row.get("status") == "failed" and "non-finite" in str(row.get("error") or "")


def write_stored(rows: list[dict[str, Any]], path: Path) -> None:
    """Every trial of the benchmark's sweeps as one ``results.csv`` (axes ``arm`` and
    ``federation.seed``): what benchmarks/README.md's robustness tables are made from
    (``fedrs sweep report FILE --compare "arm=*:fedavg | clean"``). A diverged trial is scored as
    this benchmark scores it, at chance: ``status`` finished, ``final_accuracy`` CHANCE,
    ``diverged`` 1, its error kept. Run folders (temporary) are left out."""
    import csv

    from fedrs.io import atomic_open

    out = []
    for r in rows:
        r = {k: v for k, v in r.items() if k != "run_dir"}
        r["diverged"] = int(diverged(r))
        if r["diverged"]:
            r |= {"status": "finished", "final_accuracy": CHANCE}
        out.append(r)
    lead = ["trial", "arm", "federation.seed", "status", "error", "diverged"]
    cols = lead + sorted({k for r in out for k in r} - set(lead))
    with atomic_open(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        writer.writerows(out)


def per_seed(rows: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """Final accuracy by arm label and seed: finished trials, and diverged ones at chance."""
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        acc = r.get("final_accuracy")
        if diverged(r):
            acc = CHANCE
        elif r.get("status") != "finished" or acc is None or not math.isfinite(acc):
            continue
        out.setdefault(r["arm"], {})[int(r["federation.seed"])] = float(acc)
    return out


def drop(
    accs: dict[str, dict[int, float]], label: str, against: str = f"fedavg{SEP}{CLEAN}"
) -> dict[str, Any]:
    """An arm's accuracy and drop against ``against`` (clean FedAvg) of the same seed (points,
    paired by seed)."""
    clean = accs.get(against, {})
    mine = accs.get(label, {})
    seeds = sorted(set(clean) & set(mine))
    d = interval([100 * (clean[s] - mine[s]) for s in seeds])
    return {
        "accuracy": float(np.mean([mine[s] for s in seeds])) if seeds else None,
        "clean_accuracy": float(np.mean([clean[s] for s in seeds])) if seeds else None,
        "drop_points": d["mean"],
        "drop_ci95": d["ci95"],
        "seeds": len(seeds),
    }


def precondition(accs: dict[str, dict[int, float]]) -> dict[str, Any]:
    """FedAvg's drop at 20 % boosted sign flip: at least 10 points, interval excluding 0."""
    d = drop(accs, f"fedavg{SEP}{cell_label(*HEADLINE)}")
    lo = d["drop_ci95"][0] if d["drop_ci95"] else None
    valid = d["drop_points"] is not None and d["drop_points"] >= MIN_FEDAVG_DROP
    valid = valid and lo is not None and lo > 0
    return {
        "attack": HEADLINE[0],
        "fraction": HEADLINE[1],
        "fedavg_drop_points": d["drop_points"],
        "fedavg_drop_ci95": d["drop_ci95"],
        "seeds": d["seeds"],
        "min_points": MIN_FEDAVG_DROP,
        "valid": bool(valid),
    }


def attack_table(
    accs: dict[str, dict[int, float]], names: list[str], cells: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per attack cell: FedAvg's drop and interval, the floor's (FedAvg with the attackers'
    updates left out: what a perfect defence reaches without their data); per defence its
    drop, interval, recovered fraction and distance to the floor; a verdict in words."""
    out: dict[str, dict[str, Any]] = {}
    for cell in cells:
        label = cell["label"]
        fed = drop(accs, f"fedavg{SEP}{label}")
        floor_arm = f"fedavg{SEP}{cell_label(ABSENT, cell['attack.fraction'])}"
        floor = drop(accs, floor_arm) if label != CLEAN else {}
        entry: dict[str, Any] = {
            "attack": cell["attack.kind"],
            "fraction": cell["attack.fraction"],
            "fedavg_accuracy": fed["accuracy"],
            "fedavg_drop_points": fed["drop_points"],
            "fedavg_drop_ci95": fed["drop_ci95"],
            "floor_accuracy": floor.get("accuracy"),
            "floor_drop_points": floor.get("drop_points"),
            "floor_drop_ci95": floor.get("drop_ci95"),
            "defences": {},
        }
        for name in names:
            if name == "fedavg":
                continue
            d = drop(accs, f"{name}{SEP}{label}")
            gap = (
                None
                if fed["accuracy"] is None or fed["clean_accuracy"] is None
                else fed["clean_accuracy"] - fed["accuracy"]
            )
            rec = None
            if d["accuracy"] is not None and gap is not None and label != CLEAN and gap > 0.01:
                rec = (d["accuracy"] - fed["accuracy"]) / gap
            beyond = drop(accs, f"{name}{SEP}{label}", against=floor_arm) if floor else {}
            entry["defences"][name] = {
                "accuracy": d["accuracy"],
                "drop_points": d["drop_points"],
                "drop_ci95": d["drop_ci95"],
                "recovered_fraction": rec,
                "beyond_floor_points": beyond.get("drop_points"),
                "beyond_floor_ci95": beyond.get("drop_ci95"),
            }
        entry["verdict"] = verdict(entry) if label != CLEAN else "no attack"
        out[label] = entry
    return out


def verdict(entry: dict[str, Any]) -> str:
    """Whether the attack hurts FedAvg, and which defences keep within the target of clean."""
    fed, ci = entry["fedavg_drop_points"], entry["fedavg_drop_ci95"]
    if fed is None:
        return "no finished FedAvg trial"
    held = [
        n
        for n, d in entry["defences"].items()
        if d["drop_points"] is not None and d["drop_points"] <= TARGET_POINTS
    ]
    hurts = fed > TARGET_POINTS and (ci is None or ci[0] > 0)
    if not hurts:
        if fed > TARGET_POINTS:  # a mean drop the seeds do not establish
            return (
                f"hurts FedAvg by {fed:.1f} points on average, not established over the seeds "
                f"(interval {ci[0]:+.1f} to {ci[1]:+.1f})"
            )
        return f"does not hurt FedAvg here ({fed:+.1f} points)"
    floor = entry.get("floor_drop_points")
    if floor is not None and floor > TARGET_POINTS:
        floor_text = (
            f"; without the attackers' data FedAvg itself loses {floor:.1f} (the floor), so no "
            f"defence can keep within {TARGET_POINTS:g} of clean here"
        )
    else:
        floor_text = ""
    if not held:
        best = min(
            ((d["drop_points"], n) for n, d in entry["defences"].items() if d["drop_points"]),
            default=None,
        )
        tail = f"; the best, {best[1]}, loses {best[0]:.1f}" if best else ""
        return f"every defence fails (FedAvg loses {fed:.1f} points{tail}){floor_text}"
    return f"FedAvg loses {fed:.1f} points; within {TARGET_POINTS:g} of clean: {', '.join(held)}"


def headline(table: dict[str, dict[str, Any]]) -> tuple[float | None, str | None]:
    """The best robust defence's drop at 20 % boosted sign flip, and its name."""
    entry = table.get(cell_label(*HEADLINE), {})
    best = [
        (d["drop_points"], n)
        for n, d in entry.get("defences", {}).items()
        if n in ROBUST and d["drop_points"] is not None
    ]
    return min(best) if best else (None, None)


def heatmap(table: dict[str, dict[str, Any]], names: list[str], path: Path) -> None:
    import matplotlib

    from fedrs.io import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(table)
    grid = np.full((len(names), len(cells)), np.nan)
    for j, label in enumerate(cells):
        for i, name in enumerate(names):
            e = table[label]
            v = e["fedavg_drop_points"] if name == "fedavg" else e["defences"][name]["drop_points"]
            grid[i, j] = np.nan if v is None else v
    fig, ax = plt.subplots(figsize=(1.5 + 0.8 * len(cells), 1.2 + 0.5 * len(names)))
    im = ax.imshow(grid, cmap="magma_r", aspect="auto")
    for i in range(len(names)):
        for j in range(len(cells)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=7, color="c")
    ax.set_xticks(range(len(cells)), cells, rotation=60, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_title("drop vs clean FedAvg (points)", fontsize=9)
    fig.colorbar(im, ax=ax)
    save_figure(fig, path)


def pretrain_backbone(o: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A CLIP of ``o["arch"]`` pretrained on its own draw of the synthetic scenes, kept in
    ``folder`` (reused when a kept sweep resumes)."""
    from fedrs.datasets.partition import PartitionSpec
    from fedrs.datasets.synth import build_synthetic
    from fedrs.models.pretrain import PretrainConfig, pretrain

    ckpt = folder / f"backbone-{o['arch']}-{o['pretrain_epochs']}ep.pt"
    info = {"path": str(ckpt), "epochs": o["pretrain_epochs"], "seed": PRETRAIN_SEED}
    if ckpt.is_file():
        return info | {"reused": True}
    data = folder / "pretrain-data"
    if not data.is_dir():
        part = PartitionSpec(scheme="iid", num_clients=1, seed=PRETRAIN_SEED)
        build_synthetic(data, per_class=o["per_class"], image_size=o["image_size"], partition=part)
    t0 = time.perf_counter()
    cfg = PretrainConfig(
        data=str(data),
        out=str(ckpt),
        arch=o["arch"],
        epochs=o["pretrain_epochs"],
        batch_size=32,
        lr=1e-3,
        seed=PRETRAIN_SEED,
    )
    pretrain(cfg)
    return info | {"seconds": time.perf_counter() - t0}


DEFAULTS: dict[str, Any] = {
    "method": "student",
    "scaling": 1,
    "defences": ["fedavg", "median", "trimmed_mean", "krum", "normclip", "normfilter"],
    "attacks": ["signflip", "alie", "ipm"],
    "fractions": [0.1, 0.2, 0.3],
    "seeds": [0, 1, 2],
    "rounds": 8,
    "clients": 10,
    "alpha": 1.0,
    "per_class": 120,
    "image_size": 32,
    "local_epochs": 2,
    "lr": 0.02,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "arch": "fedrs-tiny",
    "pretrained": "",
    "pretrain_epochs": 0,
    "boost": 10.0,
    "alie_z": 0.0,
    "ipm_epsilon": 10.0,
    "byzantine": 3,
    "trim_fraction": 0.3,
    "clip_norm": 0.0,
    "filter_factor": 3.0,
    "keep": None,
    "done": None,
}


def options(**given: Any) -> dict[str, Any]:
    """The benchmark's options: ``DEFAULTS`` with ``given`` (``--set``) applied and typed."""
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    o = {**DEFAULTS, **given}
    for key in ("defences", "attacks"):
        o[key] = _list(o[key], str)
    o["fractions"], o["seeds"] = _list(o["fractions"], float), _list(o["seeds"], int)
    for key in ("rounds", "clients", "per_class", "image_size", "local_epochs", "byzantine"):
        o[key] = int(o[key])
    o["pretrain_epochs"], o["scaling"] = int(o["pretrain_epochs"]), int(o["scaling"])
    floats = ("alpha", "lr", "boost", "alie_z", "ipm_epsilon", "trim_fraction", "clip_norm")
    for key in (*floats, "filter_factor", "momentum", "weight_decay"):
        o[key] = float(o[key])
    o["pretrained"] = str(o["pretrained"] or "")
    return o


def carried(done: list[str], table: dict[str, Any], folder: Path) -> str:
    """The rows of the stored results files ``done`` that are trials of this sweep (same axes:
    ``trial_finder``, so a run of other attacks, fractions or defences carries the cells they
    share; same arm and seed), renamed to this sweep's trials, as a results file of their own
    in ``folder`` (a stored file holds every sweep's trials; the first file with a trial
    finished gives its row). A row stored before rows recorded their configuration hash is
    given its trial's: it is matched by the digest of its trial's axes, so a changed
    benchmark default goes unseen for such rows; a row with a hash is checked against it
    (``carry``)."""
    import csv

    from fedrs.io import atomic_open
    from fedrs.orchestrator.sweep.results import same_axes, trial_finder
    from fedrs.orchestrator.sweep.spec import expand, parse_sweep
    from fedrs.orchestrator.sweep.store import config_sha

    find = trial_finder(expand(parse_sweep(table)))
    cols: list[str] = []
    rows = []
    for path in done:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            cols += [c for c in reader.fieldnames or [] if c not in cols]
            for r in reader:
                t = find(r.get("trial", ""))
                if t is not None and same_axes(r, t):  # arm and seed
                    r["config_sha"] = r.get("config_sha") or config_sha(t.cfg)
                    rows.append({**r, "trial": t.name})
    cols += [] if "config_sha" in cols else ["config_sha"]
    out = folder / "carried.results.csv"
    with atomic_open(out, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
    return str(out)


def copy_done(text: str | None, root: Path) -> list[str]:
    """The ``done`` option's files (comma-separated), copied into ``root`` first: a stored file
    may be the one this run rewrites, or a copy an earlier run left there. All are read before
    any copy is written."""
    paths = [p.strip() for p in str(text or "").split(",") if p.strip()]
    for path in paths:
        if not Path(path).is_file():
            raise SystemExit(f"fedrs bench robustness: done={path}: no such results file")
    blobs = [Path(p).read_bytes() for p in paths]
    out = []
    for i, blob in enumerate(blobs):
        copy = root / f"done{i or ''}.results.csv"
        write_bytes(copy, blob)
        out.append(str(copy))
    return out


def run_sweeps(
    sweeps: list[tuple[Path, dict[str, Any]]], done: list[str] | None = None
) -> list[dict[str, Any]]:
    """Run (or resume) each sweep in turn; all their result rows. ``done``: stored results
    files whose finished trials of these sweeps are taken, not run again."""
    from rich.console import Console

    from fedrs.orchestrator.sweep.results import read_results, write_results
    from fedrs.orchestrator.sweep.run import run_sweep
    from fedrs.orchestrator.sweep.spec import SPEC, expand, parse_sweep
    from fedrs.orchestrator.sweep.store import load_trials, write_spec

    rows = []
    for folder, table in sweeps:
        if not (folder / SPEC).is_file():  # a kept sweep resumes
            sweep = parse_sweep(table)
            write_spec(folder, sweep, expand(sweep))
        stored = carried(done, table, folder) if done else None
        # a line per trial (started / finished, the best so far, the time left) on stderr
        run_sweep(resume=str(folder), console=Console(stderr=True), done=stored, round_lines=False)
        _, trials = load_trials(folder)
        write_results(folder, trials, "accuracy")
        rows += read_results(folder)
    return rows


def main(json_path: str | None = None, data: str | None = None, **given: Any) -> dict[str, Any]:
    o = options(**given)
    tmp = tempfile.TemporaryDirectory(prefix="fedrs-robust-")
    root = Path(o["keep"]) if o["keep"] else Path(tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    backbone: dict[str, Any] = {"path": o["pretrained"] or None, "epochs": 0}
    if not o["pretrained"] and o["pretrain_epochs"] > 0:
        (root / "backbone").mkdir(exist_ok=True)
        backbone = pretrain_backbone(o, root / "backbone")
        o["pretrained"] = backbone["path"]
    first, rest, skipped = arms(o)
    names, _ = defences(o)
    result: dict[str, Any] = {
        "benchmark": "robustness",
        "setup": {k: v for k, v in o.items() if k not in ("keep", "done")},
        "carried_from": o["done"],
        "backbone": backbone,
        "skipped": skipped,
    }
    done = copy_done(o["done"], root)
    rows = run_sweeps([(root / "precondition", sweep_spec(o, first))], done)
    stored = Path(json_path).with_suffix(".results.csv") if json_path else None
    if stored is not None:
        write_stored(rows, stored)
    accs = per_seed(rows)
    pre = precondition(accs)
    clean = interval(list(accs.get(f"fedavg{SEP}{CLEAN}", {}).values()))
    zeroshot = interval(list(accs.get(ZEROSHOT, {}).values()))
    result |= {
        "workload_valid": pre["valid"],
        "precondition": pre,
        "clean_accuracy": clean,
        "zeroshot_accuracy": zeroshot,  # the CLIP backbone alone (random-init: chance)
    }
    if not pre["valid"]:
        result["wall_s"] = time.perf_counter() - t0
        result["machine"] = machine_info()
        write_result(result, json_path)
        tmp.cleanup()
        ci = pre["fedavg_drop_ci95"]
        raise SystemExit(
            "fedrs bench robustness: the workload is invalid: undefended FedAvg loses "
            f"{pre['fedavg_drop_points']} points at 20 % boosted sign flip over {pre['seeds']} "
            f"seeds (interval {ci}); it must lose >= {MIN_FEDAVG_DROP:g} with an interval "
            "excluding 0"
        )
    rows += run_sweeps([(root / "grid", sweep_spec(o, rest))], done) if rest else []
    if stored is not None:
        write_stored(rows, stored)
    accs = per_seed(rows)
    cells = attack_cells(o["attacks"], o["fractions"])
    if cell_label(*HEADLINE) not in {c["label"] for c in cells}:
        cells.append(attack_cells([HEADLINE[0]], [HEADLINE[1]])[1])
    table = attack_table(accs, names, cells)
    best, best_name = headline(table)
    figure = Path(json_path).with_suffix(".png") if json_path else None
    if figure is not None:
        heatmap(table, names, figure)
    head = table[cell_label(*HEADLINE)]
    result |= {
        "signflip_20_drop_points": best,
        "signflip_20_best_defence": best_name,
        "signflip_20_fedavg_drop_points": head["fedavg_drop_points"],
        # the floor: FedAvg with the 20 % left out; how far the best defence stays above it
        "signflip_20_floor_drop_points": head["floor_drop_points"],
        "signflip_20_beyond_floor_points": (
            head["defences"][best_name]["beyond_floor_points"] if best_name else None
        ),
        "fedavg_drop_points": head["fedavg_drop_points"],
        "fedavg_drop_ci95": head["fedavg_drop_ci95"],
        "target_points": TARGET_POINTS,
        "meaning": "accuracy points lost against clean FedAvg of the same seed (mean over "
        "seeds, 95 % Student-t interval paired by seed); signflip_20_drop_points: the best "
        "robust defence at 20 % boosted sign flip (target <= 2) where FedAvg itself loses "
        "fedavg_drop_points (>= 10); recovered_fraction: (defended - attacked FedAvg) / "
        "(clean - attacked FedAvg); floor_drop_points: FedAvg with the attackers' updates left "
        "out (a perfect defence, their data lost with them); beyond_floor_points: a defence's "
        "accuracy below that floor, paired by seed",
        "attacks": table,
        "trials": len(rows),
        "failed": sum(r.get("status") == "failed" for r in rows),
        "diverged": sum(diverged(r) for r in rows),  # counted at chance accuracy
        "plot": str(figure) if figure else None,
        "results_csv": str(stored) if stored else None,
        "wall_s": time.perf_counter() - t0,
        "machine": machine_info(),
    }
    print_table(
        "robustness: drop vs clean FedAvg (points)",
        [
            {"attack": label, "defence": "fedavg", "drop_points": e["fedavg_drop_points"]}
            | {"recovered": None, "beyond_floor": None}
            for label, e in table.items()
        ]
        + [
            {"attack": label, "defence": "floor (absent)", "drop_points": e["floor_drop_points"]}
            | {"recovered": None, "beyond_floor": None}
            for label, e in table.items()
            if label != CLEAN
        ]
        + [
            {"attack": label, "defence": n, "drop_points": d["drop_points"]}
            | {"recovered": d["recovered_fraction"], "beyond_floor": d["beyond_floor_points"]}
            for label, e in table.items()
            for n, d in e["defences"].items()
        ],
    )
    for label, e in table.items():
        if label != CLEAN:
            log.info("%s: %s", label, e["verdict"])
    log.info(
        "signflip_20_drop_points %s (%s; target <= %s; %s above the floor, itself %s), "
        "FedAvg's own drop %s",
        best,
        best_name,
        TARGET_POINTS,
        result["signflip_20_beyond_floor_points"],
        result["signflip_20_floor_drop_points"],
        head["fedavg_drop_points"],
    )
    write_result(result, json_path)
    tmp.cleanup()
    return result
