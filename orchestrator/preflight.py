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
import os
import socket
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fedrs.core.config import RunConfig, from_dict
from fedrs.core.strategies import Strategy, make_strategy
from fedrs.errors import ConfigError, FedrsError, ShardIntegrityError
from fedrs.methods.base import Method

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".tar")
PROBE_TIMEOUT_S = 5.0
SYNTH_DIR = "data"  # the synthetic default dataset, inside the run directory


class ClusterError(FedrsError):
    """The cluster cannot be reached, or can never host the requested client actors."""


@dataclass(frozen=True)
class DataCheck:
    """What preflight learned about the data."""

    path: str | None  # None: the synthetic default, built inside the run directory
    partitions: int
    num_classes: int
    excluded: dict[int, str] = field(default_factory=dict)  # partition -> why it is left out
    holds: frozenset[str] | None = None  # labels / captions / modalities; None: synthetic


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
    sent_extras = method_cls.sent_extras(cfg) if cfg.privacy.mode != "none" else ()
    if sent_extras:
        raise ConfigError(
            f"privacy.mode={cfg.privacy.mode} covers the tensors a client sends; method "
            f"{method_cls.name} also sends extra payloads ({', '.join(sent_extras)}) "
            f"that would leave unprotected"
        )
    if cfg.privacy.mode == "central" and not strategy.averages:
        means = ", ".join(n for n, s in STRATEGIES.items() if s.averages)
        raise ConfigError(
            f"privacy.mode=central needs a mean aggregator ({means}): its noise is calibrated "
            f"to the mean of clipped updates, not to strategy.name={cfg.strategy.name}"
        )
    need = strategy.min_clients()
    if cfg.federation.clients_per_round < need:
        raise ConfigError(
            f"strategy {cfg.strategy.name} needs at least {need} updates per round "
            f"(strategy.byzantine={cfg.strategy.byzantine}); federation.clients_per_round is "
            f"{cfg.federation.clients_per_round}"
        )
    return method_cls, strategy, shapes


# ------------------------------------------------------------------------------- weights
def _run_bounded(fn: Callable[[], Any], timeout_s: float) -> Any:
    """``fn()`` in a daemon thread; TimeoutError if it has not returned by ``timeout_s``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout_s:.0f} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _check_checkpoint(path: Path) -> str:
    if not path.exists():
        raise ConfigError(f"model.pretrained checkpoint {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"model.pretrained {path} is not a file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ConfigError(
            f"model.pretrained {path} cannot be read: {exc.strerror or exc}"
        ) from None
    size = path.stat().st_size
    if size == 0:
        raise ConfigError(f"model.pretrained {path} is empty")
    if head.startswith(b"PK"):  # torch's zip format: its central directory sits at the end
        try:
            with zipfile.ZipFile(path) as zf:
                zf.infolist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise ConfigError(
                f"model.pretrained {path} is damaged or cut short ({exc}); {size:,} B on disk"
            ) from None
    elif path.suffix == ".safetensors":
        header = int.from_bytes(head, "little") if len(head) == 8 else -1
        try:
            with open(path, "rb") as fh:
                fh.seek(8)
                meta = json.loads(fh.read(header)) if 0 < header < size else None
            end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"))
        except (ValueError, TypeError, KeyError, OSError):
            meta, end = None, -1
        if meta is None or 8 + header + end > size:
            raise ConfigError(f"model.pretrained {path} is not a complete safetensors file")
    return f"checkpoint {path} ({size:,} B)"


def _cached_weights(pcfg: dict[str, Any]) -> str | None:
    """Where open_clip would find these pretrained weights without the network, or None."""
    hub = pcfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        names = [filename] if filename else []
        names += ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in dict.fromkeys(names):
            found = try_to_load_from_cache(repo_id=repo, filename=name)
            if isinstance(found, str) and os.path.isfile(found):
                return found
        return None
    url = pcfg.get("url", "")
    if url:
        target = Path("~/.cache/clip").expanduser() / os.path.basename(urlparse(url).path)
        return str(target) if target.is_file() else None
    return None


def _weights_host(pcfg: dict[str, Any]) -> str:
    if pcfg.get("hf_hub"):
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        return urlparse(endpoint).hostname or "huggingface.co"
    return urlparse(pcfg.get("url", "")).hostname or "?"


def _resolves(host: str) -> str | None:
    """None when ``host`` resolves within the probe time, else why not."""
    try:
        _run_bounded(lambda: socket.getaddrinfo(host, 443), PROBE_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        return getattr(exc, "strerror", None) or str(exc)
    return None


def check_weights(arch: str, pretrained: str, fetch: bool = True) -> str:
    """Check ``model.pretrained`` for ``arch``; return a short description of the weights.

    A path must be a readable, complete checkpoint. An open_clip tag must be known for the arch
    and be cached locally; otherwise it is downloaded here, once (``fetch``), unless the hub is
    unreachable or ``HF_HUB_OFFLINE`` is set: then one line says so."""
    if not pretrained:
        return "random init"
    import open_clip

    from fedrs.models.backbone import register_configs

    register_configs()
    if (
        os.sep in pretrained
        or os.path.exists(pretrained)
        or pretrained.endswith(CHECKPOINT_SUFFIXES)
    ):
        return _check_checkpoint(Path(pretrained))
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained not in tags:
        raise ConfigError(
            f"model.pretrained {pretrained!r} is neither a local checkpoint nor an open_clip "
            f"tag of {arch} (tags: {', '.join(tags) or 'none'})"
        )
    from open_clip import pretrained as oc_pretrained

    pcfg = oc_pretrained.get_pretrained_cfg(arch, pretrained)
    found = _cached_weights(pcfg)
    if found:
        return f"open_clip {arch} {pretrained} (cached: {found})"
    how = (
        "fetch them once where there is network (open_clip caches them under ~/.cache) or give "
        "model.pretrained a checkpoint path"
    )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ConfigError(
            f"model.pretrained {pretrained!r}: the {arch} weights are not in the local cache "
            f"and HF_HUB_OFFLINE is set; {how}"
        )
    host = _weights_host(pcfg)
    why = _resolves(host)
    if why is not None:
        raise ConfigError(
            f"model.pretrained {pretrained!r}: the {arch} weights are not in the local cache "
            f"and {host} cannot be reached ({why}); {how}"
        )
    if not fetch:
        return f"open_clip {arch} {pretrained} (not cached; downloaded at start)"
    log.info("downloading the %s %s weights once, before the actors start", arch, pretrained)
    try:
        path = oc_pretrained.download_pretrained(pcfg)
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"model.pretrained {pretrained!r}: download failed: {first}") from None
    return f"open_clip {arch} {pretrained} ({path})"


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

        return DataCheck(None, cfg.data.num_clients, len(SCENES))
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


# ------------------------------------------------------------------------------- cluster
def check_ray_address(address: str | None = None) -> None:
    """``RAY_ADDRESS`` (host:port, ray://host:port) must answer a TCP connect within seconds:
    a wrong address is one line, not minutes of connection retries."""
    address = address if address is not None else os.environ.get("RAY_ADDRESS", "")
    if address in ("", "auto", "local"):
        return
    target = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        host, port = target.hostname or "127.0.0.1", target.port
    except ValueError:
        port = None
    if port is None:
        raise ClusterError(f"RAY_ADDRESS={address!r} is not host:port (e.g. 127.0.0.1:6379)")
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterError(
            f"RAY_ADDRESS={address}: no Ray cluster answers there "
            f"({exc.strerror or type(exc).__name__}); start one with `ray start --head` or "
            f"unset RAY_ADDRESS to run on a local Ray"
        ) from None


def local_capacity() -> dict[str, float]:
    """What a local Ray started on this machine will offer: CPUs (affinity and cgroup quota)
    and the GPUs torch sees."""
    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1.0, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    gpus = 0.0
    try:
        import torch

        gpus = float(torch.cuda.device_count())
    except Exception:  # no usable CUDA
        pass
    return {"CPU": cpus, "GPU": gpus}


def _fits(node: dict[str, float], bundle: dict[str, float]) -> int:
    """How many bundles one node can ever hold (a fractional GPU share packs per GPU)."""
    eps = 1e-9
    n = math.inf
    for res, need in bundle.items():
        if need <= 0:
            continue
        have = float(node.get(res, 0.0))
        if res == "GPU" and need < 1:
            n = min(n, math.floor(1 / need + eps) * math.floor(have + eps))
        else:
            n = min(n, math.floor(have / need + eps))
    return int(n) if n != math.inf else 1 << 30


def _room(fits: list[int], strategy: str) -> int:
    """How many client bundles nodes with ``fits`` room each can take under ``strategy``."""
    if strategy == "STRICT_PACK":
        return max(fits, default=0)
    if strategy == "STRICT_SPREAD":
        return sum(1 for f in fits if f >= 1)
    return sum(fits)


def placement_problem(
    cfg: RunConfig, nodes: list[dict[str, float]], driver_in_group: bool = False
) -> str | None:
    """Why the client actors' placement group can never be placed on ``nodes``, or None.
    With ``driver_in_group`` (a sweep trial's one group) the driver's own reservation
    (``resources.server_num_cpus`` / ``server_num_gpus``) is a bundle of the same group: it
    needs a node too, under the same strategy."""
    res = cfg.resources
    bundle = {"CPU": res.num_cpus_per_client, "GPU": res.num_gpus_per_client}
    strategy, count = res.placement_strategy, res.num_actors
    server = {"CPU": res.server_num_cpus, "GPU": res.server_num_gpus}
    if not any(server.values()):
        possible = _room([_fits(n, bundle) for n in nodes], strategy)
    else:  # try each node as the driver's; the best choice decides
        possible = 0
        for i, host in enumerate(nodes):
            if _fits(host, server) < 1:
                continue
            left = {k: float(host.get(k, 0)) - server.get(k, 0.0) for k in ("CPU", "GPU")}
            rest = [left if j == i else n for j, n in enumerate(nodes)]
            if driver_in_group and strategy == "STRICT_SPREAD":
                rest = [n for j, n in enumerate(nodes) if j != i]
            fits = [_fits(n, bundle) for n in rest]
            if driver_in_group and strategy == "STRICT_PACK":
                fits = [_fits(left, bundle)]
            possible = max(possible, _room(fits, strategy))
    if possible >= count:
        return None
    have = {
        "CPU": sum(float(n.get("CPU", 0)) for n in nodes),
        "GPU": sum(float(n.get("GPU", 0)) for n in nodes),
    }
    asked = {k: v for k, v in bundle.items() if v > 0}
    hint = (
        "set resources.num_gpus_per_client=0 (no GPU here)"
        if bundle["GPU"] > 0 and have["GPU"] == 0
        else "lower resources.num_actors or the per-client share"
    )
    if any(server.values()):
        hint = f"the driver's { ({k: v for k, v in server.items() if v > 0}) } counted; {hint}"
    return (
        f"cannot place {count} client actors of {asked} ({strategy}): the cluster has "
        f"{len(nodes)} node(s) with {have['CPU']:g} CPU and {have['GPU']:g} GPU in all, room "
        f"for {possible}; {hint}"
    )


def cluster_nodes() -> list[dict[str, float]]:
    """Total resources of each live node of the connected Ray cluster."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def check_cluster(cfg: RunConfig, connect: Callable[[], None] | None = None) -> None:
    """Fail within seconds when the actors can never be placed. Before a local Ray starts the
    check uses this machine's capacity; after ``connect`` (or when Ray is already up), the
    cluster's live nodes. ``resources.autoscale_wait_s > 0`` asks the autoscaler for the
    bundles and waits that long for nodes that fit them."""
    import ray

    if not ray.is_initialized():
        if not os.environ.get("RAY_ADDRESS"):
            problem = placement_problem(cfg, [local_capacity()])
            if problem:
                raise ClusterError(problem)
        else:
            check_ray_address()
        if connect is None:
            return
        connect()
    problem = placement_problem(cfg, cluster_nodes())
    wait = cfg.resources.autoscale_wait_s
    if problem and wait > 0:
        res = cfg.resources
        bundle = {"CPU": res.num_cpus_per_client}
        if res.num_gpus_per_client:
            bundle["GPU"] = res.num_gpus_per_client
        from ray.autoscaler.sdk import request_resources

        log.warning(
            "%s; waiting up to %.0f s (resources.autoscale_wait_s) for the autoscaler to add "
            "nodes for %d x %s",
            problem,
            wait,
            res.num_actors,
            bundle,
        )
        request_resources(bundles=[dict(bundle) for _ in range(res.num_actors)])
        deadline = time.monotonic() + wait
        try:
            while problem and time.monotonic() < deadline:
                time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
                problem = placement_problem(cfg, cluster_nodes())
        finally:  # the actors' own demand keeps the nodes; a standing request would pin them
            request_resources(bundles=[])
        if problem:
            problem = f"{problem} (waited {wait:.0f} s for the autoscaler)"
    if problem:
        raise ClusterError(problem)


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
