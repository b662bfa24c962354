"""Heterogeneity sweeps: many fedrs runs as Ray Tune trials (``fedrs sweep``).

    fedrs sweep SWEEP.toml [--set k=v ...] [--out DIR]      # a new sweep
    fedrs sweep SWEEP.toml --set AXIS=VALUE ... --out DIR    # one cell: the sweep's own trial
    fedrs sweep --resume DIR                                 # finish an interrupted one
    fedrs sweep report DIR                                   # table, heatmap, curves

The sweep file holds ``[base]`` (a run config exactly as a ``fedrs run`` TOML), ``[grid]``
(dotted run-config keys -> lists of values; every combination is a trial), optionally
``[random]`` (keys -> ``{choice = [...]}``, ``{uniform = [lo, hi]}``, ``{loguniform = [lo, hi]}``
or ``{randint = [lo, hi]}``, drawn ``sweep.num_samples`` times per grid point), ``[build]``
(``fedrs data build`` options: ``sources``, ``image_size``, ...; each trial's partition comes
from its ``data.*`` keys and ``federation.seed``) and ``[sweep]`` (``metric``, ``mode``,
``num_samples``, ``seed``, ``max_concurrent``, ``max_retries``). A grid value may be a table
when the key is a section (``method = [{name = "A"}, {name = "B", option = 1}]``): it
replaces that section of the base; under a free name (``arm = [{label = "fedprox",
"method.name" = "student", "strategy.name" = "fedprox"}, ...]``) its keys are set together.

Trials are expanded once, deterministically, and stored in ``DIR/sweep.json``; Ray Tune only
schedules them. Each trial is a whole fedrs run (``DIR/trials/NAME``) whose driver and client
actors live in the trial's own placement group (``actors.pool.trial_bundles``: fractional GPUs
as in ``fedrs run``), so Tune starts as many trials at once as the cluster's free resources
hold. A trial that fails is recorded with its one-line error (``DIR/status/NAME.json``) and the
others go on; ``--resume`` submits only the trials that have not finished, continuing an
interrupted one from its checkpoint. Trials that need the same data build share one, built once
under a file lock in ``DIR/builds``. Results: ``DIR/results.parquet`` and ``.csv``, one row per
trial (rewritten as trials end); TensorBoard event files per trial under ``DIR/tune`` (Tune's
loggers); MLflow when asked (``--mlflow URI``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import random
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback

from fedrs.errors import ConfigError, FedrsError
from fedrs.io import fresh_path, write_json
from fedrs.orchestrator.config import RunConfig, from_dict

log = logging.getLogger(__name__)

SPEC = "sweep.json"
TRIALS, STATUS, BUILDS, TUNE = "trials", "status", "builds", "tune"
STOP = ".stop-requested"  # written by a stopped sweep: its trials end after their round
CARRIED = "carried.json"  # trials taken as done from a stored results.csv (--done)
RANDOM_KINDS = ("choice", "uniform", "loguniform", "randint")
BUILD_KEYS = {
    "sources": list,
    "image_size": int,
    "test_fraction": float,
    "class_map": str,
    "caption_classes": str,
    "min_examples": int,
    "skip_bad": bool,
    "workers": int,
    "seed": int,  # one split / partition for every trial (default: each trial's federation.seed)
    # multi-modal .mat sources (a scene or a pixel table; data.patch_size and
    # data.client_modalities come from each trial's config)
    "patch_size": list,  # ["hsi=1", "lidar=7"]: per modality, instead of data.patch_size
    "patches": list,  # ["lidar=PATH"]: a pixel table's patch matrices
    "var": list,  # ["hsi=NAME"]
    "tile_size": int,
}
MODAL_BUILD = ("patch_size", "patches", "var", "tile_size")


class SweepError(FedrsError):
    """A sweep file or sweep directory that cannot be used (one line)."""


@dataclass(frozen=True)
class SweepOptions:
    """The ``[sweep]`` table."""

    metric: str = ""  # what "best" means; "" = the base method's headline (accuracy, mR, ...)
    mode: str = "max"
    num_samples: int = 1  # draws of [random] per grid point
    seed: int = 0  # of the random draws
    max_concurrent: int = 0  # 0: as many trials as the cluster's resources hold
    max_retries: int = 0  # Tune retries of a failed trial

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise SweepError(f"sweep.mode must be 'max' or 'min', got {self.mode!r}")
        for key in ("num_samples", "max_concurrent", "max_retries"):
            if getattr(self, key) < (1 if key == "num_samples" else 0):
                raise SweepError(f"sweep.{key} is out of range: {getattr(self, key)}")


@dataclass(frozen=True)
class Trial:
    name: str
    axes: dict[str, Any]  # axis key -> this trial's value
    cfg: RunConfig

    @property
    def seed_axes(self) -> list[str]:
        return [k for k in self.axes if is_seed_axis(k)]


@dataclass(frozen=True)
class Sweep:
    base: dict[str, Any]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    random: dict[str, dict[str, Any]] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    options: SweepOptions = field(default_factory=SweepOptions)
    only: dict[str, Any] = field(default_factory=dict)  # grid axis -> the one value run
    report: dict[str, Any] = field(default_factory=dict)  # `fedrs sweep report`'s defaults

    def to_dict(self) -> dict[str, Any]:
        return (
            {
                "base": self.base,
                "grid": self.grid,
                "random": self.random,
                "build": self.build,
                "sweep": dataclasses.asdict(self.options),
            }
            | ({"only": self.only} if self.only else {})
            | ({"report": self.report} if self.report else {})
        )

    @property
    def axes(self) -> list[str]:
        return list(self.grid) + list(self.random)


@dataclass(frozen=True)
class SweepResult:
    dir: Path
    trials: int
    finished: int
    failed: int
    stopped: bool = False  # by Ctrl-C / SIGTERM: its folder resumes with --resume


def is_seed_axis(key: str) -> bool:
    """Seed axes are what a report averages over (``federation.seed``, ``...seed``)."""
    return key.rsplit(".", 1)[-1] == "seed"


# ------------------------------------------------------------------------------ the file
def parse_sweep(data: dict[str, Any], overrides: list[str] | None = None) -> Sweep:
    """Validate a sweep table (``tomllib`` output). ``overrides`` are ``--set KEY=VALUE``: for
    the base, or pinning a grid axis to one value (a random axis to a fixed one)."""
    unknown = set(data) - {"base", "grid", "random", "build", "sweep", "only", "report"}
    if unknown:
        raise SweepError(
            f"unknown sweep table(s) {sorted(unknown)}; a sweep file has [base], [grid], "
            "[random], [build], [sweep] and [report]"
        )
    base = data.get("base", {})
    grid = data.get("grid", {})
    rand = data.get("random", {})
    build = data.get("build", {})
    for name, table in (("base", base), ("grid", grid), ("random", rand), ("build", build)):
        if not isinstance(table, dict):
            raise SweepError(f"[{name}] must be a table")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"grid axis {key!r} must be a non-empty list of values")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise SweepError(f"grid axis {key!r} repeats a value: {values}")
    for key, dist in rand.items():
        if key in grid:
            raise SweepError(f"{key!r} is both a grid and a random axis")
        _check_random(key, dist)
    for key, value in build.items():
        if key not in BUILD_KEYS:
            raise SweepError(f"unknown [build] key {key!r}; known: {', '.join(sorted(BUILD_KEYS))}")
        if not isinstance(value, BUILD_KEYS[key]) or isinstance(value, bool) is not (
            BUILD_KEYS[key] is bool
        ):
            raise SweepError(f"[build] {key} must be a {BUILD_KEYS[key].__name__}, got {value!r}")
    if build and not build.get("sources"):
        raise SweepError('[build] needs sources = ["NAME=PATH", ...]')
    if build and base.get("data", {}).get("path"):
        raise SweepError("give either [build] or base data.path, not both")
    try:
        opts = SweepOptions(**data.get("sweep", {}))
    except TypeError as exc:
        raise SweepError(f"[sweep]: {exc}") from None
    if rand and opts.num_samples == 1 and "num_samples" not in data.get("sweep", {}):
        log.info("[random] without sweep.num_samples: one draw per grid point")
    base, grid, rand = (json.loads(json.dumps(t)) for t in (base, grid, rand))
    only = data.get("only", {})
    if not isinstance(only, dict):
        raise SweepError("[only] must be a table")
    only = dict(only)
    for assignment in overrides or []:
        key, sep, value = assignment.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ConfigError(f"--set {assignment!r}: expected dotted.key=value")
        if key in grid:  # one value of the axis: re-run one cell of a sweep
            pinned = _pin(key, grid[key], value)
            if _same_value(pinned, grid[key]):
                only[key] = pinned  # the full sweep's trial: its name and random draws
            else:
                grid[key] = [pinned]  # a value the sweep did not list: a new cell
        else:
            rand.pop(key, None)
            _set_dotted(base, key, value)
    for key, value in only.items():
        if not _same_value(value, grid.get(key, [])):
            raise SweepError(f"only {key}={_label(value)}: not a value of a grid axis")
    report = check_report_table(data.get("report", {}))
    return Sweep(base, grid, rand, build, opts, only, report)


REPORT_KEYS = {"x": str, "y": str, "metric": str, "also": list, "compare": list, "scale": float}


def check_report_table(table: Any) -> dict[str, Any]:
    """The ``[report]`` table: ``fedrs sweep report``'s defaults for this sweep (``x``, ``y``,
    ``metric``, ``also = [...]``, ``compare = ["AXIS=A:B", ...]``, ``scale``)."""
    if not isinstance(table, dict):
        raise SweepError("[report] must be a table")
    for key, value in table.items():
        kind = REPORT_KEYS.get(key)
        if kind is None:
            raise SweepError(f"unknown [report] key {key!r}; known: {', '.join(REPORT_KEYS)}")
        ok = isinstance(value, int | float) if kind is float else isinstance(value, kind)
        if not ok or isinstance(value, bool):
            raise SweepError(f"[report] {key} must be a {kind.__name__}, got {value!r}")
        if kind is list and not all(isinstance(v, str) for v in value):
            raise SweepError(f"[report] {key} must be a list of strings, got {value!r}")
    return dict(table)


def _same_value(value: Any, values: list[Any]) -> bool:
    return json.dumps(value, sort_keys=True) in {json.dumps(v, sort_keys=True) for v in values}


def _pin(key: str, values: list[Any], value: str) -> Any:
    """``--set AXIS=VALUE`` on a grid axis: the axis's value written ``VALUE`` (a table by its
    label), or for a config key any value (TOML syntax, else the string)."""
    for v in values:
        if _label(v) == value or json.dumps(v) == value:
            return v
    if any(isinstance(v, dict) for v in values):
        raise SweepError(
            f"--set {key}={value}: no value of grid axis {key!r} is labelled {value!r}; "
            f"it has {', '.join(_label(v) for v in values)}"
        )
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and validate a sweep file; relative paths in it become absolute (trials run in
    other processes, other folders, other nodes)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise SweepError(f"cannot read sweep file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"sweep file {path} is not valid TOML: {exc}") from None
    return absolute_paths(parse_sweep(data, overrides))


def _absolute(value: str) -> str:
    return value if not value or value.startswith("re:") else str(Path(value).resolve())


def _absolute_config_paths(data: dict[str, Any]) -> None:
    """``data.path``, and ``model.pretrained`` when it names an existing file, made absolute
    in a run-config table (in place): trials run in other folders."""
    d, m = data.get("data"), data.get("model")
    if isinstance(d, dict) and isinstance(d.get("path"), str) and d["path"]:
        d["path"] = _absolute(d["path"])
    weights = m.get("pretrained") if isinstance(m, dict) else None
    if isinstance(weights, str) and weights and Path(weights).is_file():
        m["pretrained"] = _absolute(weights)


def absolute_paths(sweep: Sweep) -> Sweep:
    """``[build]`` sources / class files and the base's ``data.path`` made absolute, and
    ``model.pretrained`` when it names an existing file (else it is an open_clip tag)."""
    from fedrs.datasets.sources import parse_source_arg

    build = dict(sweep.build)
    if "sources" in build:
        build["sources"] = [
            f"{n}={_absolute(p)}" for n, p in (parse_source_arg(str(s)) for s in build["sources"])
        ]
    for key in ("class_map", "caption_classes"):
        if key in build:
            build[key] = _absolute(build[key])
    if "patches" in build:  # MOD=PATH[:K]
        from fedrs.datasets.multimodal import parse_patch_files

        build["patches"] = [
            f"{m}={_absolute(p)}" + (f":{k}" if k else "")
            for m, (p, k) in parse_patch_files([str(v) for v in build["patches"]]).items()
        ]
    base = json.loads(json.dumps(sweep.base))
    _absolute_config_paths(base)
    return dataclasses.replace(sweep, base=base, build=build)


def _check_random(key: str, dist: Any) -> None:
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in RANDOM_KINDS:
        raise SweepError(
            f"random axis {key!r} must be one of {{choice = [...]}}, {{uniform = [lo, hi]}}, "
            f"{{loguniform = [lo, hi]}}, {{randint = [lo, hi]}}; got {dist!r}"
        )
    kind, arg = next(iter(dist.items()))
    if not isinstance(arg, list) or not arg:
        raise SweepError(f"random axis {key!r}: {kind} needs a non-empty list")
    if kind != "choice":
        ok = len(arg) == 2 and all(isinstance(a, int | float) for a in arg) and arg[0] < arg[1]
        if not ok or (kind == "loguniform" and arg[0] <= 0):
            raise SweepError(f"random axis {key!r}: {kind} needs [lo, hi] with lo < hi")


def _draw(dist: dict[str, Any], rng: random.Random) -> Any:
    kind, arg = next(iter(dist.items()))
    if kind == "choice":
        return arg[rng.randrange(len(arg))]
    if kind == "uniform":
        return rng.uniform(arg[0], arg[1])
    if kind == "loguniform":
        return math.exp(rng.uniform(math.log(arg[0]), math.log(arg[1])))
    return rng.randint(int(arg[0]), int(arg[1]))


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part!r} is not a section")
    if isinstance(value, dict) and len(parts) == 1:
        data[key] = json.loads(json.dumps(value))  # a whole section replaced
    else:
        node[parts[-1]] = value


def is_bundle_axis(key: str, value: Any) -> bool:
    """A grid axis named freely (not a config key or section) whose values are tables of
    dotted keys set together: ``arm = [{label = "fedprox", "method.name" = "student",
    "strategy.name" = "fedprox"}, ...]``."""
    from fedrs.orchestrator.config import RunConfig

    sections = {f.name for f in dataclasses.fields(RunConfig)}
    return isinstance(value, dict) and "." not in key and key not in sections


def _label(value: Any) -> str:
    if isinstance(value, dict):
        if "label" in value:
            return str(value["label"])
        name = value.get("name")
        rest = {k: v for k, v in value.items() if k != "name"}
        return (str(name) if name else "") + (
            ("+" + ",".join(f"{k}={v}" for k, v in sorted(rest.items()))) if rest else ""
        )
    if isinstance(value, float):
        return f"{value:.4g}"
    if value == "":
        return '""'
    return str(value)


def expand(sweep: Sweep) -> list[Trial]:
    """Every trial of ``sweep``, each with a validated run config (a bad value is one line
    naming the trial's axes before anything runs). Names are stable: index + value hash."""
    rng = random.Random(sweep.options.seed)
    points = list(itertools.product(*sweep.grid.values())) or [()]
    # random draws are made once per point of the non-seed axes and shared by its seeds, so a
    # report can average a configuration over its seeds
    draws: dict[tuple, list[dict[str, Any]]] = {}
    trials = []
    index = 0  # counts the trials ``only`` skips too: a pinned cell keeps its full-sweep name
    for point in points:
        grid_axes = dict(zip(sweep.grid, point, strict=True))
        key = tuple(json.dumps(v) for k, v in grid_axes.items() if not is_seed_axis(k))
        if key not in draws:
            draws[key] = [
                {k: _draw(d, rng) for k, d in sweep.random.items()}
                for _ in range(sweep.options.num_samples if sweep.random else 1)
            ]
        for drawn in draws[key]:
            axes = grid_axes | drawn
            index += 1
            if any(not _same_value(axes[k], [v]) for k, v in sweep.only.items()):
                continue
            data = json.loads(json.dumps(sweep.base))
            for key_, value in axes.items():
                if is_bundle_axis(key_, value):  # several keys set together
                    for k, v in value.items():
                        if k != "label":
                            _set_dotted(data, k, v)
                else:
                    _set_dotted(data, key_, value)
            _absolute_config_paths(data)
            try:
                cfg = from_dict(data)
            except ConfigError as exc:
                raise ConfigError(f"trial {_axes_text(axes)}: {exc}") from None
            digest = hashlib.sha256(json.dumps(axes, sort_keys=True).encode()).hexdigest()[:6]
            trials.append(Trial(f"t{index - 1:03d}-{digest}", axes, cfg))
    return trials


def _axes_text(axes: dict[str, Any], short: bool = False) -> str:
    """``data.alpha=0.1, method.name=promptfl`` (``short``: ``alpha=0.1, name=promptfl``)."""
    return (
        ", ".join(f"{k.rsplit('.', 1)[-1] if short else k}={_label(v)}" for k, v in axes.items())
        or "(base)"
    )


# ------------------------------------------------------------------------------ data builds
def build_key(cfg: RunConfig, build: dict[str, Any]) -> str | None:
    """Which data build a trial needs (None: it names ``data.path`` itself). Trials with the
    same key share one build: sources and their options, partition, seed, image size."""
    if cfg.data.path:
        return None
    part = dataclasses.asdict(_partition(cfg, build))
    what = {"build": build} if build else {"synthetic": [cfg.data.per_class, cfg.data.image_size]}
    from fedrs.methods import method_class

    d = cfg.data
    if not build and method_class(cfg.method.name).synthetic_data == "scene":
        what = {"scene": [d.image_size, d.patch_size, d.client_modalities]}
    elif build and _mat_build(build):
        what["modal"] = [d.patch_size, d.client_modalities]
    blob = json.dumps({**what, "partition": part}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _mat_build(build: dict[str, Any]) -> bool:
    from fedrs.datasets.multimodal import is_mat_source
    from fedrs.datasets.sources import parse_source_arg

    return any(is_mat_source(parse_source_arg(s)[1]) for s in build.get("sources", []))


def _build_mat(cfg: RunConfig, build: dict[str, Any], out: Path, part: Any) -> None:
    """A [build] of one .mat source (scene or pixel table) with the trial's modal keys."""
    from fedrs.datasets import multimodal as mm
    from fedrs.datasets.sources import parse_source_arg

    if len(build["sources"]) != 1:
        raise SweepError("[build]: a .mat source (scene or pixel table) is built on its own")
    groups = cfg.data.client_modalities
    spec = mm.ModalBuildSpec(
        out=str(out),
        partition=part,
        test_fraction=build.get("test_fraction", 0.2),
        patch=mm.parse_patch_sizes(build.get("patch_size") or [str(cfg.data.patch_size)]),
        client_modalities=mm.parse_client_modalities(groups) if groups else (),
        tile=build.get("tile_size", 0),
    )
    names = dict(v.split("=", 1) for v in build.get("var", []))
    patches = mm.parse_patch_files(build.get("patches", []))
    mm.build_from_mat(*parse_source_arg(build["sources"][0]), spec, names, patches)


def _partition(cfg: RunConfig, build: dict[str, Any]) -> Any:
    """The trial's partition: its data.* keys, seeded by [build] seed or federation.seed."""
    from fedrs.orchestrator.runner import data_partition

    part = data_partition(cfg, build.get("min_examples", 5))
    return dataclasses.replace(part, seed=build["seed"]) if "seed" in build else part


def ensure_build(cfg: RunConfig, build: dict[str, Any], builds: Path) -> str:
    """The data path of a trial: ``data.path``, or its shared build (made now, once: the
    first trial to need it builds it under a file lock, the others wait and reuse it)."""
    key = build_key(cfg, build)
    if key is None:
        return str(Path(cfg.data.path).resolve())
    from filelock import FileLock

    from fedrs.datasets.manifest import MANIFEST

    out = builds / key
    builds.mkdir(parents=True, exist_ok=True)
    with FileLock(str(builds / f"{key}.lock")):
        if not (out / MANIFEST).is_file():
            part = _partition(cfg, build)
            if build and _mat_build(build):
                _build_mat(cfg, build, out, part)
            elif build:
                from fedrs.datasets.builder import BuildSpec
                from fedrs.datasets.builder import build as build_data

                skip = ("sources", "min_examples", "seed", *MODAL_BUILD)
                options = {k: v for k, v in build.items() if k not in skip}
                build_data(
                    BuildSpec.from_args(build["sources"], str(out), partition=part, **options)
                )
            else:
                from fedrs.orchestrator.runner import build_synthetic_default

                build_synthetic_default(cfg, out, part)
            log.info("built %s", out)
    return str(out.resolve())


# ------------------------------------------------------------------------------ one trial
def trial_status(sweep_dir: Path, name: str) -> dict[str, Any]:
    path = sweep_dir / STATUS / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {"status": "pending"}


def config_sha(cfg: RunConfig) -> str:
    """A trial's configuration, hashed as a stored row records it: paths reduced to their
    file names (a study re-run on another machine keeps its hashes)."""
    data = cfg.to_dict()
    for section, key in (("data", "path"), ("model", "pretrained")):
        data[section][key] = Path(data[section][key]).name if data[section][key] else ""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def carried_rows(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """The rows taken as done from a stored results table, by trial name (``--done``)."""
    try:
        return json.loads((sweep_dir / CARRIED).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def carry(trials: list[Trial], stored: str | Path) -> dict[str, dict[str, Any]]:
    """The finished rows of a stored ``results.csv`` that are trials of this sweep: the same
    name, axes and configuration (``config_sha``); a finished row of the same name with
    another configuration is a SweepError (the sweep file changed since)."""
    from fedrs.orchestrator.sweep_report import read_stored

    rows, _, _ = read_stored(stored)
    by_name = {t.name: t for t in trials}
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        trial = by_name.get(str(row["trial"]))
        if trial is None or row.get("status") != "finished":
            continue
        if row.get("config_sha") != config_sha(trial.cfg):
            raise SweepError(
                f"--done {stored}: trial {trial.name} ({_axes_text(trial.axes)}) was run with "
                f"another configuration (config_sha {row.get('config_sha') or 'missing'}, now "
                f"{config_sha(trial.cfg)}); run it again"
            )
        out[trial.name] = row
    return out


def is_finished(sweep_dir: Path, trial: Trial) -> bool:
    from fedrs.orchestrator.checkpoint import latest_round
    from fedrs.orchestrator.runner import finished_summary

    if trial.name in carried_rows(sweep_dir):
        return True
    run_dir = sweep_dir / TRIALS / trial.name
    try:
        return finished_summary(run_dir, trial.cfg, latest_round(run_dir)) is not None
    except FedrsError:  # a damaged checkpoint: the trial runs again and says why
        return False


class RunClock:
    """Where a run's wall time goes, from the moments its round records arrive: ``start_s``
    (preflight, driver and actor spawn, backbone, first parameters: before round 1 began),
    ``rounds_s`` (the rounds themselves, as the driver timed them), ``finish_s`` (summary,
    plot, actor shutdown); ``data_s`` is set by the caller."""

    def __init__(self, report: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.t0 = time.perf_counter()
        self.report = report
        self.marks: list[tuple[float, float]] = []  # (arrival since t0, the round's wall_s)
        self.data_s = 0.0

    def on_round(self, rec: dict[str, Any]) -> None:
        self.marks.append((time.perf_counter() - self.t0, float(rec.get("wall_s") or 0.0)))
        if self.report is not None:
            self.report(rec)

    def split(self) -> dict[str, float]:
        total = time.perf_counter() - self.t0
        if not self.marks:
            return {"total_s": total, "data_s": self.data_s}
        first_arrival, first_wall = self.marks[0]
        return {
            "total_s": total,
            "data_s": self.data_s,
            "start_s": max(0.0, first_arrival - first_wall - self.data_s),
            "rounds_s": sum(w for _, w in self.marks),
            "finish_s": total - self.marks[-1][0],
        }


def _report_round(rec: dict[str, Any]) -> None:
    from ray import tune

    tune.report({k: v for k, v in rec.items() if _is_number(v)})


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def run_trial(
    config: dict[str, Any], sweep_dir: str, trials: dict[str, Trial], build: dict[str, Any]
) -> None:
    """Tune's trainable: one fedrs run in the trial's placement group."""
    import ray
    from rich.console import Console

    from fedrs.actors.pool import Placement, trial_bundles
    from fedrs.orchestrator.checkpoint import latest_round
    from fedrs.orchestrator.runner import StoppedByUser, run

    root = Path(sweep_dir)
    if (root / STOP).exists():  # the sweep is stopping: a trial not yet started stays pending
        _report_round({"not_started": 1})  # (a result, so that Tune prints nothing of its own)
        return
    trial = trials[config["trial"]]
    status = root / STATUS / f"{trial.name}.json"
    clock = RunClock(_report_round)
    record: dict[str, Any] = {"status": "running", "started": time.time(), "node": os.uname()[1]}
    stop, ended = threading.Event(), threading.Event()
    threading.Thread(target=_watch_stop, args=(root / STOP, stop, ended), daemon=True).start()
    try:
        write_json(status, record)
        data_path = ensure_build(trial.cfg, build, root / BUILDS)
        cfg = trial.cfg.replace(**{"data.path": data_path})
        clock.data_s = time.perf_counter() - clock.t0
        pg = ray.util.get_current_placement_group()
        placement = None
        if pg is not None:
            _, first = trial_bundles(cfg)
            placement = Placement(pg, driver_bundle=0, first_client_bundle=first)
            record["placement_group_id"] = pg.id.hex()
        run_dir = root / TRIALS / trial.name
        resume = latest_round(run_dir) > 0
        summary = run(
            None if resume else cfg,
            out=None if resume else str(run_dir),
            resume=str(run_dir) if resume else None,
            overwrite=not resume and run_dir.is_dir(),
            placement=placement,
            on_round=clock.on_round,
            console=Console(quiet=True),
            stop=stop,
        )
        record |= {
            "status": "finished",
            "resumed": resume,
            "actors": summary.get("actors", []),
            "driver_placement_group_id": summary.get("driver_placement_group_id"),
        }
    except StoppedByUser:  # the sweep was stopped: summary and checkpoint of the last round
        record |= {"status": "stopped", "rounds_completed": latest_round(run_dir)}
    except BaseException as exc:
        text = str(exc).strip().splitlines()
        record |= {
            "status": "failed",
            "error": f"{type(exc).__name__}: {text[-1] if text else ''}".rstrip(": "),
        }
        raise
    finally:
        ended.set()
        timing = clock.split()
        record |= {"wall_s": timing["total_s"], "timing": timing}
        write_json(status, record)


def _watch_stop(marker: Path, stop: threading.Event, ended: threading.Event) -> None:
    """Set ``stop`` when the sweep's stop marker appears (polled), until the trial ``ended``."""
    while not ended.wait(0.25):
        if marker.exists():
            stop.set()
            return


# ------------------------------------------------------------------------------ the sweep
def new_sweep_dir(out: str | None, source: str | None) -> Path:
    if not out:
        return fresh_path("sweeps", Path(source).stem if source else "sweep")
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        hint = f"; continue it with --resume {out}" if (path / SPEC).is_file() else ""
        raise SweepError(f"--out {out} exists and is not empty{hint}")
    return path


def write_spec(sweep_dir: Path, sweep: Sweep, trials: list[Trial]) -> None:
    """``DIR/sweep.json``: the sweep and its expanded trials (what ``--resume`` reads)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        sweep_dir / SPEC,
        {
            "spec": sweep.to_dict(),
            "trials": [{"name": t.name, "axes": t.axes, "config": t.cfg.to_dict()} for t in trials],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )


def load_trials(sweep_dir: Path) -> tuple[Sweep, list[Trial]]:
    """The sweep and trials stored in ``sweep_dir`` (as first expanded)."""
    if not Path(sweep_dir).exists():
        raise SweepError(f"{sweep_dir}: missing (no such sweep directory)")
    try:
        stored = json.loads((sweep_dir / SPEC).read_text())
    except (OSError, json.JSONDecodeError):
        raise SweepError(f"{sweep_dir} holds no sweep ({SPEC} missing or damaged)") from None
    sweep = parse_sweep(stored["spec"])
    trials = [Trial(t["name"], t["axes"], from_dict(t["config"])) for t in stored["trials"]]
    return sweep, trials


def run_sweep(
    path: str | None = None,
    out: str | None = None,
    resume: str | None = None,
    overrides: list[str] | None = None,
    mlflow: str | None = None,
    console: Any = None,
    done: str | None = None,
) -> SweepResult:
    """Run (or resume) a sweep; return where it is and how many trials finished or failed.
    Results are written as trials end. ``done``: a stored ``results.csv`` of this sweep (a
    study run across machines) whose finished trials are taken as they are, not run again."""
    from ray import tune
    from rich.console import Console

    from fedrs.orchestrator.preflight import ClusterError, cluster_nodes, placement_problem
    from fedrs.orchestrator.runner import connect_ray
    from fedrs.orchestrator.sweep_report import write_results

    console = console or Console()
    if mlflow:
        try:
            import mlflow as _
            from ray.air.integrations.mlflow import MLflowLoggerCallback
        except ImportError:
            raise SweepError("--mlflow needs MLflow: pip install 'fedrs[mlflow]'") from None
        try:  # a store MLflow refuses is one line now, not a traceback from inside Tune
            _.set_tracking_uri(mlflow)
            _.search_experiments(max_results=1)
        except Exception as exc:
            first = str(exc).strip().split(". ")[0]
            raise SweepError(f"--mlflow {mlflow}: {first}") from None
    if resume:
        sweep_dir = Path(resume)
        sweep, trials = load_trials(sweep_dir)
        if overrides:
            raise SweepError("--resume continues the stored sweep: drop --set")
    else:
        if path is None:
            raise SweepError("give a sweep file (SWEEP.toml) or --resume DIR")
        sweep = load_sweep(path, overrides)
        trials = expand(sweep)
        sweep_dir = new_sweep_dir(out, path)
    carried = carry(trials, done) if done else {}
    if carried:
        write_json(sweep_dir / CARRIED, carried)
    todo = [t for t in trials if not is_finished(sweep_dir, t)]
    from fedrs.orchestrator.preflight import check_weights

    for arch, weights in dict.fromkeys((t.cfg.model.arch, t.cfg.model.pretrained) for t in todo):
        check_weights(arch, weights)  # a missing checkpoint is one line, not a failed trial each
    if todo:  # before anything is written: a trial no node can host is one line now
        connect_ray()
        nodes = cluster_nodes()
        for t in todo:
            problem = placement_problem(t.cfg, nodes, driver_in_group=True)
            if problem:
                raise ClusterError(f"trial {t.name} ({_axes_text(t.axes)}): {problem}")
    if not resume:
        write_spec(sweep_dir, sweep, trials)
    sweep_dir = sweep_dir.resolve()
    done = len(trials) - len(todo)
    console.print(
        f"[bold]fedrs sweep[/] {len(trials)} trials over {', '.join(sweep.axes) or 'no axes'}"
        + (f"; {done} already finished, {len(todo)} to run" if done else "")
        + f" -> {sweep_dir}",
        soft_wrap=True,
    )
    metric = sweep.options.metric or _headline(trials[0].cfg)
    if not todo:
        write_results(sweep_dir, trials, metric)
        return SweepResult(sweep_dir, len(trials), len(trials), 0)
    from fedrs.actors.pool import trial_bundles

    by_name = {t.name: t for t in todo}

    def resources(spec: dict[str, Any]) -> Any:
        cfg = by_name[spec["trial"]].cfg
        bundles, _ = trial_bundles(cfg)
        # an empty head bundle: Tune's trainable (which only waits on the driver) reserves
        # nothing, so a trial costs exactly what `fedrs run` would
        return tune.PlacementGroupFactory([{}, *bundles], strategy=cfg.resources.placement_strategy)

    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, sweep_dir=str(sweep_dir), trials=by_name, build=sweep.build
        ),
        resources,
    )
    attempt = 1 + sum(1 for _ in (sweep_dir / TUNE).glob("attempt-*"))
    callbacks: list[Any] = [SweepProgress(console, trials, sweep_dir, metric, sweep.options.mode)]
    if mlflow:
        callbacks.append(MLflowLoggerCallback(tracking_uri=mlflow, experiment_name=sweep_dir.name))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no Tune banner: the lines above say it
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Ctrl-C is ours: trials end gracefully
    (sweep_dir / STOP).unlink(missing_ok=True)  # a stop of an earlier attempt is over
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search([t.name for t in todo])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=sweep.options.max_concurrent or None,
            reuse_actors=True,  # a trainable process (imports done) serves trial after trial
            trial_dirname_creator=lambda tr: tr.config["trial"],
            trial_name_creator=lambda tr: tr.config["trial"],
        ),
        run_config=tune.RunConfig(
            name=f"attempt-{attempt}",
            storage_path=str(sweep_dir / TUNE),
            failure_config=tune.FailureConfig(max_failures=sweep.options.max_retries),
            verbose=0,
            callbacks=callbacks,
        ),
    )
    quiet = logging.getLogger("ray.tune")  # our progress lines say it; tracebacks: error.txt
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        with _stop_on_signal(sweep_dir / STOP, console):
            tuner.fit()
    finally:
        quiet.setLevel(level)
        stopped = (sweep_dir / STOP).exists()
        (sweep_dir / STOP).unlink(missing_ok=True)
        rows = write_results(sweep_dir, trials, metric)
    failed = [r for r in rows if r["status"] == "failed"]
    finished = sum(r["status"] == "finished" for r in rows)
    cut = sum(r["status"] == "stopped" for r in rows)
    left = len(trials) - finished - len(failed)
    console.print(
        (
            f"sweep done: {finished} finished, {len(failed)} failed of {len(trials)}"
            if not left
            else f"sweep stopped{' by Ctrl-C / SIGTERM' if stopped else ''}: {finished} finished, "
            f"{len(failed)} failed, {cut} stopped after a complete round, {left - cut} not run "
            f"of {len(trials)}; continue with fedrs sweep --resume {sweep_dir}"
        )
        + f"; results in {sweep_dir / 'results.csv'}",
        soft_wrap=True,
    )
    for r in failed:
        console.print(
            f"  [red]failed[/] {r['trial']} ({_axes_text(_row_axes(r, sweep))}): {r['error']}",
            soft_wrap=True,
        )
    return SweepResult(sweep_dir, len(trials), finished, len(failed), stopped)


@contextlib.contextmanager
def _stop_on_signal(marker: Path, console: Any) -> Any:
    """While Tune runs: the first Ctrl-C / SIGTERM writes the stop ``marker`` (each running
    trial then ends after its round in flight, with summary and checkpoint; trials not yet
    started stay pending); a second one exits at once."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        if marker.exists():
            raise KeyboardInterrupt
        write_json(marker, {"signal": signum, "time": time.time()})
        console.print(
            "stopping the sweep: running trials end after their round in flight, the rest "
            "stay pending (Ctrl-C again to exit at once)"
        )

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in previous:
            signal.signal(sig, handler)
    except ValueError:  # not the main thread: signals stay as they are
        previous = {}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _row_axes(row: dict[str, Any], sweep: Sweep) -> dict[str, Any]:
    return {k: row.get(k) for k in sweep.axes}


def _headline(cfg: RunConfig) -> str:
    from fedrs.methods import method_class

    return method_class(cfg.method.name).headline


class SweepProgress(Callback):
    """Console progress from Tune's trial events: done / running / failed and best so far."""

    def __init__(
        self, console: Any, trials: list[Trial], sweep_dir: Path, metric: str, mode: str
    ) -> None:
        self.console, self.total, self.metric, self.mode = console, len(trials), metric, mode
        self.sweep_dir = sweep_dir
        self.axes = {t.name: t.axes for t in trials}
        self.trials = trials
        self.done = sum(is_finished(sweep_dir, t) for t in trials)
        self.running: set[str] = set()
        self.failed = 0
        self.best: tuple[float, str] | None = None
        for t in trials:  # a resumed sweep: the best round of the trials already finished
            if is_finished(sweep_dir, t):
                with contextlib.suppress(OSError, ValueError):
                    for line in (sweep_dir / TRIALS / t.name / "metrics.jsonl").open():
                        self.seen(t.name, json.loads(line))

    def seen(self, name: str, result: dict[str, Any]) -> None:
        value = result.get(self.metric)
        if _is_number(value) and (
            self.best is None or (value > self.best[0]) == (self.mode == "max")
        ):
            self.best = (float(value), name)

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks; a console won't
        return {k: v for k, v in self.__dict__.items() if k != "console"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from rich.console import Console

        self.__dict__.update(state)
        self.console = Console()

    def line(self, what: str) -> None:
        best = (
            f"best {self.metric} {self.best[0]:.4f} "
            f"({_axes_text(self.axes[self.best[1]], short=True)})"
            if self.best
            else f"best {self.metric} -"
        )
        self.console.print(
            f"[{self.done}/{self.total} done, {len(self.running)} running, {self.failed} failed] "
            f"{what} | {best}",
            soft_wrap=True,
            highlight=False,
        )

    def _table(self) -> None:
        """Rewrite the results table as each trial ends (an interrupted sweep keeps it)."""
        from fedrs.orchestrator.sweep_report import write_results

        try:
            write_results(self.sweep_dir, self.trials, self.metric)
        except OSError as exc:  # a full disk must not stop the trials still running
            log.warning("could not update the results table: %s", exc)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.config["trial"])
        self.line(f"started {trial.config['trial']}")

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        name = trial.config["trial"]
        self.seen(name, result)
        if result.get("round") is not None:
            self.line(f"{name} round {int(result['round'])}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        name = trial.config["trial"]
        self.running.discard(name)
        state = trial_status(self.sweep_dir, name).get("status")
        if state == "finished":
            self.done += 1
        what = {"finished": "finished", "stopped": "stopped"}.get(state, "not started")
        self.line(f"{what} {name}")
        self._table()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        name = trial.config["trial"]
        self.running.discard(name)
        self.failed += 1
        status = trial_status(self.sweep_dir, name)
        if status.get("status") != "failed":  # its process died: it could not say so itself
            lines = str(getattr(trial, "error_msg", "") or "").strip().splitlines()
            last = next((x for x in reversed(lines) if x.strip()), "the trial's process died")
            write_json(
                self.sweep_dir / STATUS / f"{name}.json",
                {**status, "status": "failed", "error": last.strip()[:500]},
            )
        self.line(
            f"[red]FAILED[/] {name}: {trial_status(self.sweep_dir, name).get('error')} "
            f"(traceback: {Path(trial.path or '.') / 'error.txt'})"
        )
        self._table()
