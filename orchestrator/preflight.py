"""Preflight: every check a run can make before Ray starts, each failure one line.

Shared by ``fedrs run``, ``--resume``, ``--dry-run`` and everything that launches runs
(``runner.spawn_driver``, the benchmarks). In order, cheapest first:

1. names: ``method.name``, ``strategy.name`` (and that it fits the method), ``model.arch``;
2. federation: clients per round against the clients that can be sampled;
3. weights: a checkpoint path exists, is readable and not cut short; an open_clip tag is in the
   local cache, or is fetched once here (never by every actor at once), or the host it comes
   from cannot be reached and the run stops with one line;
4. data: the manifest, and every shard's size always and its sha256 once per build (the result
   is cached beside the manifest). A damaged global test shard stops the run; a damaged client
   shard stops it too unless ``data.bad_shards = "exclude"``, which leaves that client out
   (warned and counted in ``summary.json``);
5. cluster: ``RAY_ADDRESS`` answers within seconds, and the client actors' bundles can ever be
   placed on the cluster's nodes (on this machine before a local Ray starts; on the joined
   cluster after connecting). On an autoscaling cluster ``resources.autoscale_wait_s`` bounds
   the wait for nodes that could host them.

``resume_config`` decides what ``--resume`` may change: what the checkpoints mean may not.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedrs.core.config import RunConfig, from_dict
from fedrs.core.strategies import Strategy, make_strategy
from fedrs.errors import ConfigError, ShardIntegrityError
from fedrs.methods.base import Method
from fedrs.orchestrator.cluster import (  # noqa: F401  (checked here in order; also exported)
    ClusterError,
    check_cluster,
    check_ray_address,
    cluster_nodes,
    local_capacity,
    placement_problem,
)
from fedrs.orchestrator.weights import check_weights

log = logging.getLogger(__name__)

SYNTH_DIR = "data"  # the synthetic default dataset, inside the run directory


@dataclass(frozen=True)
class DataCheck:
    """What preflight learned about the data."""

    path: str | None  # None: the synthetic default, built inside the run directory
    partitions: int
    num_classes: int
    excluded: dict[int, str] = field(default_factory=dict)  # partition -> why it is left out
    holds: frozenset[str] | None = None  # labels / captions / modalities; None: synthetic
    regions: int = 0  # partner organisations ('hsi|lidar'): the regions they share; 0: none


@dataclass(frozen=True)
class Checked:
    """A configuration that passed preflight, with what the checks resolved."""

    cfg: RunConfig
    method_cls: type[Method]
    strategy: Strategy
    data: DataCheck
    registered: int
    weights: str


# ------------------------------------------------------------------------------- names
def resolve_names(
    cfg: RunConfig, num_classes: int, method_cls: type[Method] | None = None
) -> tuple[type[Method], Strategy, dict[str, Any]]:
    """The method class, the strategy in effect and the method's tensor shapes; one-line
    ConfigErrors for unknown names or a strategy that does not fit the method."""
    from fedrs.methods import method_class
    from fedrs.models.backbone import model_config

    method_cls = method_cls or method_class(cfg.method.name)
    from fedrs.core.strategies import STRATEGIES

    if cfg.strategy.name not in STRATEGIES:
        raise ConfigError(
            f"unknown strategy.name {cfg.strategy.name!r}; choose from {sorted(STRATEGIES)} "
            f"(`fedrs strategies` describes them)"
        )
    shapes = method_cls.tensor_shapes(cfg, model_config(cfg.model.arch), num_classes)
    from fedrs.orchestrator.exchange import uploadable

    strategy = make_strategy(
        cfg.strategy.name,
        options=cfg.strategy,
        global_keys=uploadable(method_cls, tuple(shapes["global"])),
        prompt_keys=method_cls.prompt_keys,
    )
    check_composition(cfg, method_cls, type(strategy))
    need = strategy.min_clients()
    if cfg.federation.clients_per_round < need:
        raise ConfigError(
            f"strategy {cfg.strategy.name} needs at least {need} updates per round "
            f"(strategy.byzantine={cfg.strategy.byzantine}); federation.clients_per_round is "
            f"{cfg.federation.clients_per_round}"
        )
    return method_cls, strategy, shapes


def check_composition(
    cfg: RunConfig, method_cls: type[Method], strategy_cls: type[Strategy]
) -> None:
    """What may run together (one-line ConfigErrors): DP and secure aggregation cover the
    tensors a client sends, not a method's extra payloads; central DP's noise and a secure
    sum both stand for the round's mean, so both need a mean aggregator
    (``Strategy.averages``); central DP clips each update at the server, which a secure sum
    never shows it."""
    from fedrs.core.strategies import STRATEGIES

    means = ", ".join(n for n, s in STRATEGIES.items() if s.averages)
    covers = {"privacy.mode=" + cfg.privacy.mode: cfg.privacy.mode != "none"}
    covers["secagg.enabled"] = cfg.secagg.enabled
    sent_extras = method_cls.sent_extras(cfg) if any(covers.values()) else ()
    if sent_extras:
        what = " and ".join(k for k, on in covers.items() if on)
        raise ConfigError(
            f"{what} covers the tensors a client sends; method {method_cls.name} also sends "
            f"extra payloads ({', '.join(sent_extras)}) that would leave unprotected"
        )
    if cfg.privacy.mode == "central" and not strategy_cls.averages:
        raise ConfigError(
            f"privacy.mode=central needs a mean aggregator ({means}): its noise is calibrated "
            f"to the mean of clipped updates, not to strategy.name={cfg.strategy.name}"
        )
    policy = cfg.federation.policy
    if cfg.privacy.mode != "none" and policy in ("overselect", "fedbuff", "fedasync"):
        raise ConfigError(
            f"privacy.mode={cfg.privacy.mode} with federation.policy={policy}: the accountant "
            "assumes each round's clients are Poisson-sampled at clients_per_round / "
            "registered, which over-selection and asynchronous rounds are not (sync and "
            "deadline are: a deadline only drops clients, which the bound still covers)"
        )
    if not cfg.secagg.enabled:
        return
    if policy in ("fedbuff", "fedasync"):
        raise ConfigError(
            f"secagg.enabled with federation.policy={policy}: stale updates are weighted "
            "one by one, which a secure sum never shows the server"
        )
    if not strategy_cls.averages:
        raise ConfigError(
            f"secagg.enabled: a secure sum gives the server only the round's mean, which "
            f"strategy.name={cfg.strategy.name} cannot use; choose a mean aggregator ({means})"
        )
    if cfg.privacy.mode == "central":
        raise ConfigError(
            "secagg.enabled with privacy.mode=central: central DP clips each update at the "
            "server, which secure aggregation never shows it; use privacy.mode=local"
        )


# ------------------------------------------------------------------------------- data
def check_data(cfg: RunConfig, run_dir: Path | None) -> DataCheck:
    """The dataset's manifest and shards; damaged client shards stop the run or are excluded
    (``data.bad_shards``)."""
    from fedrs.datasets.manifest import MANIFEST, FedDataset

    path = cfg.data.path
    if not path and run_dir is not None and (run_dir / SYNTH_DIR / MANIFEST).is_file():
        path = str(run_dir / SYNTH_DIR)  # a resumed run's synthetic data
    if not path:
        from fedrs.datasets.synth import SCENES

        modal = cfg.data.modal  # a multi-modal default split across partner organisations
        orgs = len(modal.groups()) if modal.partners else 1
        regions = cfg.data.num_clients if modal.partners else 0
        return DataCheck(None, cfg.data.num_clients * orgs, len(SCENES), regions=regions)
    if not (Path(path) / MANIFEST).is_file():
        raise ConfigError(
            f"data.path {path!r} holds no {MANIFEST}; build it with `fedrs data build` (or leave "
            f"data.path empty for the synthetic default)"
        )
    ds = FedDataset(path, verify=False)
    damaged = ds.check_shards()
    if ds.test.shard in damaged:
        raise ShardIntegrityError(
            f"the global test shard is damaged: {damaged[ds.test.shard]}; rebuild the dataset"
        )
    excluded: dict[int, str] = {}
    for c in ds.clients:
        for entry in (c.train, c.local_test):
            if entry.shard in damaged and c.id not in excluded:
                excluded[c.id] = damaged[entry.shard]
    if excluded and cfg.data.bad_shards == "stop":
        cid, why = next(iter(excluded.items()))
        more = f" (and {len(excluded) - 1} more)" if len(excluded) > 1 else ""
        raise ShardIntegrityError(
            f"client {cid}'s shard is damaged: {why}{more}; rebuild the dataset, or set "
            f"data.bad_shards=exclude to run without the damaged clients"
        )
    if len(excluded) == ds.num_clients:
        raise ShardIntegrityError(f"every client shard of {path} is damaged; rebuild the dataset")
    for cid, why in excluded.items():
        log.warning("client %d left out of the run (data.bad_shards=exclude): %s", cid, why)
    manifest = ds.manifest
    holds = {
        "labels": bool(manifest.get("classes")),
        "captions": manifest.get("kind") == "captions",
        "modalities": bool(manifest.get("modalities")),
    }
    return DataCheck(
        str(Path(path).resolve()),
        ds.num_clients,
        ds.num_classes,
        excluded,
        frozenset(k for k, v in holds.items() if v),
        len(manifest.get("partners") or []),
    )


DATA_HINTS = {
    "labels": "a classification build (ImageFolder sources), or a caption build given "
    "--caption-classes",
    "captions": "a caption build (`fedrs data build --source NAME=DIR` of a dataset.json "
    "caption dataset)",
    "modalities": "a multi-modal build (`fedrs data synth --multimodal`, or .mat sources)",
}


def check_method_fit(cfg: RunConfig, data: DataCheck, method_cls: type[Method]) -> None:
    """The data kind the method needs, then its own rules for meaningless runs
    (``Method.check_run``: errors raise; warnings are said, loudly). Runs and plans alike."""
    check_data_kind(cfg, data, method_cls)
    # partner organisations are sampled region by region and exchange features beside
    # their updates: neither is what the accountant and the clipping cover yet
    if data.regions and cfg.privacy.mode != "none":
        raise ConfigError(
            f"privacy.mode={cfg.privacy.mode} with partner organisations ('hsi|lidar' data) is "
            f"not supported: regions are sampled as units and partners exchange features "
            f"that DP does not cover; use data without partners, or no DP"
        )
    for warning in method_cls.check_run(cfg):
        log.warning("%s", warning)


def check_data_kind(cfg: RunConfig, data: DataCheck, method_cls: type[Method]) -> None:
    """The data holds what the method needs (``Method.needs``): a caption build for retrieval,
    class labels for classifiers, co-registered modalities for FedDiff; one line naming the
    fix, before anything starts."""
    # data.holds None: the synthetic default the method asks for
    holds = set(method_cls.synthetic_data.holds if data.holds is None else data.holds)
    missing = sorted(method_cls.needs - holds)
    if missing:
        where = f"data.path {cfg.data.path}" if data.path else "the synthetic default data"
        raise ConfigError(
            f"method {cfg.method.name} needs {' and '.join(missing)}; {where} holds "
            f"{', '.join(sorted(holds)) or 'neither'}: use "
            + "; ".join(DATA_HINTS[m] for m in missing)
        )


# ------------------------------------------------------------------------------- federation
ROOM_SLACK = 16 << 20  # metrics, summary, plots, config: well under this


def room_needed(cfg: RunConfig, shapes: dict[str, Any], registered: int) -> dict[str, int]:
    """Bytes a run's folder needs at its peak, by rule: 3 global checkpoints (2 kept + the
    one being written), 2 versions of private state for every client that can train
    (``min(registered, rounds x clients_per_round)``), plus ``ROOM_SLACK``; float32. Server
    state beyond the tensors (e.g. CLIP2FL's synthetic features) comes on top."""
    size = {
        scope: 4 * sum(math.prod(s) for s in shapes.get(scope, {}).values())
        for scope in ("global", "private")
    }
    fed = cfg.federation
    trained = min(registered, fed.rounds * fed.clients_per_round)
    need = 3 * size["global"] + 2 * size["private"] * trained + ROOM_SLACK
    return {"global": size["global"], "private": size["private"], "clients": trained, "need": need}


def check_room(cfg: RunConfig, out: Path, shapes: dict[str, Any], registered: int) -> None:
    """A ConfigError when the filesystem of ``out`` has less free space than the run needs."""
    import shutil

    where = out.absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return  # cannot tell: writing will say
    room = room_needed(cfg, shapes, registered)
    if room["need"] > free:
        mb = 1 << 20
        raise ConfigError(
            f"--out {out}: the run needs about {room['need'] / mb:,.0f} MB (3 checkpoints of "
            f"{room['global'] / mb:,.1f} MB, 2 versions of {room['private'] / mb:,.2f} MB of "
            f"private state for each of {room['clients']:,} clients, logs) but its filesystem "
            f"has {free / mb:,.0f} MB free"
        )


def check_federation(cfg: RunConfig, data: DataCheck) -> int:
    """Registered clients; clients per round may not exceed those that can be sampled."""
    from fedrs.core.sampling import registered_clients

    registered = registered_clients(cfg, data.partitions)
    usable = usable_clients(registered, data.partitions, data.excluded)
    fed = cfg.federation
    if data.regions:  # partner organisations join a round together, region by region
        if registered != data.partitions:
            raise ConfigError(
                f"federation.num_clients={fed.num_clients}: the data's partner organisations "
                f"are its {data.partitions} clients; use 0"
            )
        if fed.clients_per_round > data.regions:
            raise ConfigError(
                f"federation.clients_per_round={fed.clients_per_round} exceeds the data's "
                f"{data.regions} regions (with partner organisations it counts regions, each "
                f"joining with all its organisations); set it to {data.regions} or less"
            )
        return registered
    left_out = f" ({registered - usable} left out with damaged shards)" if data.excluded else ""
    if fed.clients_per_round > usable:
        raise ConfigError(
            f"federation.clients_per_round={fed.clients_per_round} exceeds the {usable} "
            f"registered clients{left_out}; lower it, or register more with "
            f"federation.num_clients"
        )
    return registered


def usable_clients(registered: int, partitions: int, excluded: dict[int, str]) -> int:
    """Registered clients whose partition (c mod P) is not excluded."""
    full, rest = divmod(registered, partitions)
    return registered - sum(full + (p < rest) for p in excluded)


# ------------------------------------------------------------------------------- all of it
def preflight(
    cfg: RunConfig,
    run_dir: Path | None = None,
    method_cls: type[Method] | None = None,
    connect: Callable[[], None] | None = None,
    fetch_weights: bool = True,
    out: Path | None = None,
) -> Checked:
    """Every check, cheapest first (module docstring); Ray is joined or started (``connect``)
    only once everything else has passed. ``out``: the run directory, checked for room."""
    data = check_data(cfg, run_dir)
    method_cls, strategy, shapes = resolve_names(cfg, data.num_classes, method_cls)
    check_method_fit(cfg, data, method_cls)
    registered = check_federation(cfg, data)
    if out is not None:
        check_room(cfg, out, shapes, registered)
    weights = check_weights(cfg.model.arch, cfg.model.pretrained, fetch=fetch_weights)
    if cfg.secagg.enabled:
        raise ConfigError(
            "secagg.enabled: secure aggregation runs between sites on Flower's runtime "
            "(`fedrs deploy local` / `fedrs deploy app`); a Ray run holds every update itself"
        )
    check_cluster(cfg, connect)
    return Checked(cfg, method_cls, strategy, data, registered, weights)


# ------------------------------------------------------------------------------- resume
# Keys --resume may change: they do not change what the checkpoints and private state mean.
SAFE_ON_RESUME = (
    "federation.rounds",
    "federation.round_timeout_s",
    "federation.faults",
    "federation.min_clients",
    "federation.eval_every",
    "federation.eval_personal_global",
    "resources.",
    "data.feature_cache",
    "data.bad_shards",
)


def _leaves(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out |= _leaves(v, key + ".") if isinstance(v, dict) else {key: v}
    return out


def resume_config(run_dir: Path, overrides: list[str] | None) -> tuple[RunConfig, int]:
    """The resumed run's config (saved one + the safe overrides) and its completed rounds.
    An override that would make the checkpoints mean something else is a ConfigError naming
    the key."""
    from fedrs.orchestrator import checkpoint

    saved = run_dir / "config.json"
    if not saved.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.json there (not a fedrs run directory)")
    try:
        data = json.loads(saved.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--resume {run_dir}: cannot read config.json: {exc}") from None
    old = from_dict(data)
    new = from_dict(data, overrides)
    before, after = _leaves(old.to_dict()), _leaves(new.to_dict())
    for key, value in after.items():
        if value != before.get(key) and not key.startswith(SAFE_ON_RESUME):
            raise ConfigError(
                f"--resume cannot change {key} ({before.get(key)!r} -> {value!r}): the "
                f"checkpoints in {run_dir} were made with {before.get(key)!r}; start a new run "
                f"(--out) to change it"
            )
    completed = checkpoint.latest_round(run_dir)
    if completed < new.federation.rounds:  # rounds to run: their start must be sound
        checkpoint.load(run_dir)  # a truncated or tampered checkpoint: one line, now
    if new.federation.rounds < completed:
        raise ConfigError(
            f"federation.rounds={new.federation.rounds} is below the {completed} rounds "
            f"{run_dir} already completed"
        )
    return new, completed
