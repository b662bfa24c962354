"""A sweep file and its trials: parsing, validation, expansion into named trials (stable
names: index + hash of the axes), the sweep folder's layout and each trial's status."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import random
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedrs.core.config import RunConfig, from_dict
from fedrs.errors import ConfigError, FedrsError

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
    # multi-modal .mat sources (a scene or a pixel table; data.modal.patch_size and
    # data.modal.client_modalities come from each trial's config)
    "patch_size": list,  # ["hsi=1", "lidar=7"]: per modality, instead of data.modal.patch_size
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
    warm: bool = True  # a trial takes over the actors of the last one in its placement group

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise SweepError(f"sweep.mode must be 'max' or 'min', got {self.mode!r}")
        if not isinstance(self.warm, bool):
            raise SweepError(f"sweep.warm must be true or false, got {self.warm!r}")
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
    if isinstance(base, dict):
        base = _spread_dotted(base)
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
            raise SweepError(f"only {key}={label(value)}: not a value of a grid axis")
    report = check_report_table(data.get("report", {}))
    return Sweep(base, grid, rand, build, opts, only, report)


REPORT_KEYS = {
    "x": str,
    "y": str,
    "metric": str,
    "also": list,
    "compare": list,
    "compare_also": list,
    "scale": float,
}


def check_report_table(table: Any) -> dict[str, Any]:
    """The ``[report]`` table: ``fedrs sweep report``'s defaults for this sweep (``x``, ``y``,
    ``metric``, ``also = [...]``, ``compare = ["AXIS=A:B", ...]``, ``compare_also = [...]``:
    the metrics besides the headline that comparisons pair, when not all of ``also``,
    ``scale``)."""
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
        if label(v) == value or json.dumps(v) == value:
            return v
    if any(isinstance(v, dict) for v in values):
        raise SweepError(
            f"--set {key}={value}: no value of grid axis {key!r} is labelled {value!r}; "
            f"it has {', '.join(label(v) for v in values)}"
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
    if value.startswith("folder:"):
        return "folder:" + str(Path(value[len("folder:") :]).resolve())
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


def _spread_dotted(table: dict[str, Any]) -> dict[str, Any]:
    """``table`` with its quoted dotted keys (``"federation.rounds" = 2``, as grid axes are
    written) set as the paths they name, like TOML's bare dotted keys."""
    out = json.loads(json.dumps({k: v for k, v in table.items() if "." not in k}))
    for key, value in table.items():
        if "." in key:
            node: Any = out
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                raise SweepError(f"[base] {key} is set twice (dotted and in its section)")
            try:
                _set_dotted(out, key, json.loads(json.dumps(value)))
            except ConfigError as exc:
                raise SweepError(f"[base] {exc}") from None
    return out


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
    from fedrs.core.config import RunConfig

    sections = {f.name for f in dataclasses.fields(RunConfig)}
    return isinstance(value, dict) and "." not in key and key not in sections


def label(value: Any) -> str:
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
                raise ConfigError(f"trial {axes_text(axes)}: {exc}") from None
            digest = hashlib.sha256(json.dumps(axes, sort_keys=True).encode()).hexdigest()[:6]
            trials.append(Trial(f"t{index - 1:03d}-{digest}", axes, cfg))
    return trials


def axes_text(axes: dict[str, Any], short: bool = False) -> str:
    """``data.alpha=0.1, method.name=promptfl`` (``short``: ``alpha=0.1, name=promptfl``)."""
    return (
        ", ".join(f"{k.rsplit('.', 1)[-1] if short else k}={label(v)}" for k, v in axes.items())
        or "(base)"
    )


def headline(cfg: RunConfig) -> str:
    from fedrs.methods import method_class

    return method_class(cfg.method.name).headline
