"""Run configuration: frozen, validated dataclasses loaded from TOML plus ``--set`` overrides.

    fedrs run exp.toml --set strategy.name=fedprox --set strategy.mu=0.01

Unknown sections or keys and ill-typed or out-of-range values are ConfigErrors (one line).
The resolved configuration is written to ``RUN_DIR/config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedrs.core.modal import ModalOptions
from fedrs.core.partition import DIRICHLET_ALPHA, PartitionSpec
from fedrs.core.registry import all_checks, method_class, methods
from fedrs.errors import ConfigError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def method_options_class(name: str) -> type:
    """The options dataclass of the method registered as ``name`` (one-line error if none)."""
    return method_class(name).Options


@dataclass(frozen=True)
class MethodConfig:
    """What clients train and send (``methods/``): the method's name and its own options, a
    frozen dataclass the method defines (``Method.Options``). In TOML and ``--set`` the
    options sit beside the name (``method.n_ctx = 8``); code reads them typed, one way:
    ``cfg.method.options.n_ctx``."""

    name: str = "promptfl"
    options: Any = None  # the method's Options instance; None: its defaults

    def __post_init__(self) -> None:
        if self.options is None:
            object.__setattr__(self, "options", method_options_class(self.name)())

    def to_dict(self, changed_only: bool = False) -> dict[str, Any]:
        """``{"name", **options}``; ``changed_only``: just the options not at their default."""
        values = dataclasses.asdict(self.options)
        if changed_only:
            defaults = dataclasses.asdict(type(self.options)())
            values = {k: v for k, v in values.items() if v != defaults[k]}
        return {"name": self.name, **values}


def _build_method(data: dict[str, Any]) -> MethodConfig:
    name = _coerce(data.get("name", MethodConfig.name), str, "method.name")
    options_cls = method_options_class(name)
    known = {f.name for f in dataclasses.fields(options_cls)}
    for key in data:
        if key != "name" and key not in known:
            raise ConfigError(
                f"unknown config key 'method.{key}': method {name!r} has "
                + (f"the options {', '.join(sorted(known))}" if known else "no options")
                + " (`fedrs methods` lists them)"
            )
    with all_checks() as problems:  # every failed option check, in one message
        try:
            options = _build(options_cls, {k: v for k, v in data.items() if k != "name"}, "method")
        except ConfigError as exc:
            problems.append(str(exc))
        except (TypeError, ValueError, ZeroDivisionError):
            if not problems:  # a check already named the bad value that caused this
                raise
    if problems:
        raise ConfigError("; ".join(dict.fromkeys(problems)))
    return MethodConfig(name, options)


def _strategy_fields() -> list[tuple[str, Any, Any]]:
    """Every strategy's options (its ``Options`` dataclass), each key once: a key two
    strategies read (``byzantine``, ``server_lr``) must have one default."""
    from fedrs.core.strategies import STRATEGIES

    seen: dict[str, tuple[Any, Any]] = {}
    for cls in STRATEGIES.values():
        hints = typing.get_type_hints(cls.Options)
        for f in dataclasses.fields(cls.Options):
            if f.name in seen and seen[f.name][1] != f.default:
                raise TypeError(f"strategy option {f.name!r} is declared with two defaults")
            seen.setdefault(f.name, (hints[f.name], f.default))
    return [(key, typ, field(default=value)) for key, (typ, value) in seen.items()]


def _check_strategy_options(self: Any) -> None:
    from fedrs.core.strategies import STRATEGIES

    for cls in STRATEGIES.values():  # each strategy's own checks, on its own keys
        cls.options_from(self)


# How the server combines updates (``fedrs/core/strategies/``): ``name`` and every strategy's
# options side by side (``strategy.mu = 0.1``), made from the strategies' ``Options``
# dataclasses, where each key is declared with its default and its check (`fedrs strategies`).
StrategyConfig = dataclasses.make_dataclass(
    "StrategyConfig",
    [("name", str, field(default="fedavg")), *_strategy_fields()],
    frozen=True,
    namespace={
        "__module__": __name__,
        "__doc__": "How the server combines updates: strategy.name and the strategies' options.",
        "__post_init__": _check_strategy_options,
    },
)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "fedrs-tiny"
    pretrained: str = ""  # open_clip tag or local checkpoint path; "" = random init


@dataclass(frozen=True)
class DataConfig:
    """A built dataset (``data.path``) or, when empty, the synthetic default built in the run."""

    path: str = ""
    # how the synthetic default (and a sweep's builds) are partitioned: core/partition.py
    # declares these options and their defaults once
    partition: str = PartitionSpec.scheme
    alpha: float = DIRICHLET_ALPHA
    num_clients: int = PartitionSpec.num_clients
    classes_per_client: int = PartitionSpec.classes_per_client
    imbalance_factor: float = PartitionSpec.imbalance_factor
    per_class: int = 40  # synthetic default: images per class of the largest sensor
    image_size: int = 64  # synthetic default: image size (a scene's side)
    # the multi-modal data kind's own options ([data.modal]; fedrs/core/modal.py)
    modal: ModalOptions = field(default_factory=ModalOptions)
    # Frozen-feature cache: for methods that never change the image encoder (PromptFL,
    # zero-shot), image embeddings are computed once per shard and stored beside it.
    feature_cache: bool = True
    # A client whose shard is damaged (preflight checks sizes and sha256): "stop" the run
    # before it starts, or "exclude" that client (warned, counted in summary.json).
    bad_shards: str = "stop"

    def __post_init__(self) -> None:
        _check(self.num_clients >= 1, f"data.num_clients must be >= 1, got {self.num_clients}")
        _check(self.alpha > 0, f"data.alpha must be > 0, got {self.alpha}")
        _check(
            self.bad_shards in ("stop", "exclude"),
            f"data.bad_shards must be 'stop' or 'exclude', got {self.bad_shards!r}",
        )


@dataclass(frozen=True)
class ClientConfig:
    """Local training on each client."""

    local_epochs: int = 5
    batch_size: int = 32
    lr: float = 0.005  # CoOp uses 0.002 on pretrained CLIP; the random tiny default wants more
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # clip each local step's gradient to this L2 norm (over the trained tensors); 0: no clipping
    max_grad_norm: float = 0.0

    def __post_init__(self) -> None:
        _check(self.local_epochs >= 1, "client.local_epochs must be >= 1")
        _check(
            self.max_grad_norm >= 0, f"client.max_grad_norm must be >= 0, got {self.max_grad_norm}"
        )
        _check(self.batch_size >= 1, "client.batch_size must be >= 1")
        _check(self.lr > 0, f"client.lr must be > 0, got {self.lr}")


POLICIES = ("sync", "deadline", "overselect", "fedbuff", "fedasync")
ASYNC_POLICIES = ("fedbuff", "fedasync")


@dataclass(frozen=True)
class FederationConfig:
    rounds: int = 20
    clients_per_round: int = 6
    # Registered (virtual) clients. 0: one per data partition. N > partitions: client c trains
    # on partition c mod P, with its own private state (scale benchmarks: 100k clients).
    num_clients: int = 0
    seed: int = 0
    min_clients: int = 1  # fewer successful reports than this fails the run
    round_timeout_s: float = 600.0  # a client still running then is a dropout
    faults: str = ""  # chaos runs only: injected faults (fedrs/faults.py); "" = none
    eval_every: int = 1
    # also evaluate every client's personalised model (its private state) on the global test
    # split: personalized_global_<headline>, the mean over clients (clients x test-split cost)
    eval_personal_global: bool = False
    # long-tail groups of classes by their training examples (summed over the clients):
    # many-shot above many_shot_above, few-shot below few_shot_below, medium-shot in between
    many_shot_above: int = 100
    few_shot_below: int = 20
    # how a round ends on the virtual clock (fedrs/core/system.py): sync (every sampled client
    # that finishes), deadline (those done by deadline_s), overselect (sample
    # ceil(clients_per_round x overselect), keep the first clients_per_round to finish),
    # fedbuff (asynchronous: clients_per_round train at once, the server aggregates every
    # `buffer` arrivals, 0: clients_per_round; a round is one aggregation), fedasync (a
    # buffer of one)
    policy: str = "sync"
    deadline_s: float = 0.0
    overselect: float = 1.3
    buffer: int = 0

    def __post_init__(self) -> None:
        _check(self.rounds >= 1, f"federation.rounds must be >= 1, got {self.rounds}")
        _check(
            self.policy in POLICIES,
            f"federation.policy {self.policy!r}: one of {', '.join(POLICIES)}",
        )
        _check(
            self.policy != "deadline" or self.deadline_s > 0,
            "federation.policy=deadline needs federation.deadline_s > 0 (virtual seconds)",
        )
        _check(self.overselect >= 1, f"federation.overselect must be >= 1, got {self.overselect}")
        _check(self.buffer >= 0, f"federation.buffer must be >= 0, got {self.buffer}")
        _check(
            0 <= self.few_shot_below <= self.many_shot_above + 1,
            "federation.few_shot_below must be >= 0 and <= federation.many_shot_above + 1",
        )
        _check(self.clients_per_round >= 1, "federation.clients_per_round must be >= 1")
        _check(self.num_clients >= 0, "federation.num_clients must be >= 0")
        _check(self.min_clients >= 1, "federation.min_clients must be >= 1")
        _check(self.round_timeout_s > 0, "federation.round_timeout_s must be > 0")
        if self.faults:
            from fedrs.faults import parse

            parse(self.faults)
        _check(self.eval_every >= 1, "federation.eval_every must be >= 1")


@dataclass(frozen=True)
class ResourcesConfig:
    """Ray resources: one bundle per client actor in a placement group."""

    num_actors: int = 2
    num_cpus_per_client: float = 1.0
    num_gpus_per_client: float = 0.0
    placement_strategy: str = "PACK"  # PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    max_actor_restarts: int = 3
    placement_timeout_s: float = 120.0  # a placement group not placed by then is an error
    # Actors that no node of the cluster could ever host fail the run at once; on an
    # autoscaling cluster, this long is waited for the autoscaler to add nodes that can.
    autoscale_wait_s: float = 0.0
    # client actors keep freed heap memory for the next step (glibc malloc; actors/allocator.py)
    retain_freed_memory: bool = True
    # the driver actor, where the strategy and the method's server side run (0: it only
    # coordinates; a server that trains every round, like CLIP2FL's, wants a share)
    server_num_cpus: float = 0.0
    server_num_gpus: float = 0.0
    # where the driver actor runs outside a placement group: "local", on the node that started
    # the run (the head node under `ray job submit`) when it asks for no resources (the
    # default), so losing a worker node never takes the run's state with it; "any", or a driver
    # with server_num_cpus / server_num_gpus: wherever Ray places it
    driver_node: str = "local"
    # on a cluster that outlives the run (RAY_ADDRESS, `ray job submit`): keep the driver and
    # client actors and their placement group this many seconds after a clean run, for the
    # next run of the same shape, backbone and code to take over re-initialised in place
    # (orchestrator/warm.py); 0: end them with the run. Sweep trials keep theirs anyway.
    keep_warm_s: float = 0.0

    def __post_init__(self) -> None:
        _check(self.num_actors >= 1, f"resources.num_actors must be >= 1, got {self.num_actors}")
        _check(self.num_cpus_per_client > 0, "resources.num_cpus_per_client must be > 0")
        _check(self.placement_timeout_s > 0, "resources.placement_timeout_s must be > 0")
        _check(self.autoscale_wait_s >= 0, "resources.autoscale_wait_s must be >= 0")
        _check(self.keep_warm_s >= 0, "resources.keep_warm_s must be >= 0")
        _check(self.server_num_cpus >= 0, "resources.server_num_cpus must be >= 0")
        _check(
            self.driver_node in ("local", "any"),
            f"resources.driver_node {self.driver_node!r} is not one of local, any",
        )
        _check(
            0 <= self.server_num_gpus <= 1 or float(self.server_num_gpus).is_integer(),
            "resources.server_num_gpus must be a fraction in [0, 1] or a whole number",
        )
        _check(
            0 <= self.num_gpus_per_client <= 1 or float(self.num_gpus_per_client).is_integer(),
            "resources.num_gpus_per_client must be a fraction in [0, 1] or a whole number",
        )
        _check(
            self.placement_strategy in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
            f"resources.placement_strategy {self.placement_strategy!r} is not one of "
            "PACK, SPREAD, STRICT_PACK, STRICT_SPREAD",
        )


# "absent": the attackers' updates left out, the floor a defence is measured by
ATTACKS = (
    "none",
    "signflip",
    "scale",
    "noise",
    "labelflip",
    "nan",
    "collude",
    "alie",
    "ipm",
    "absent",
)


@dataclass(frozen=True)
class AttackConfig:
    """Simulated Byzantine clients (``fedrs/core/attacks.py``): a deterministic
    ``fraction`` of the registered clients (drawn from ``seed``) tamper with what they send."""

    kind: str = "none"  # none | signflip | scale | noise | labelflip | nan | collude | alie | ipm
    fraction: float = 0.0
    scale: float = 10.0  # scale: the update times this; collude: the shared update's size
    noise_std: float = 1.0  # noise: Gaussian added to every sent value
    boost: float = 1.0  # signflip: w_g - boost (w - w_g) (1: the update reversed)
    alie_z: float = 0.0  # alie: mean - z std of the honest updates; 0: Baruch et al.'s z_max
    ipm_epsilon: float = 0.5  # ipm: every attacker sends -epsilon x the honest mean update
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.kind in ATTACKS, f"attack.kind {self.kind!r}: choose from {ATTACKS}")
        _check(0 <= self.fraction <= 1, f"attack.fraction must be in [0, 1], got {self.fraction}")
        _check(self.noise_std >= 0, f"attack.noise_std must be >= 0, got {self.noise_std}")
        _check(self.boost > 0, f"attack.boost must be > 0, got {self.boost}")
        _check(self.alie_z >= 0, f"attack.alie_z must be >= 0 (0: z_max), got {self.alie_z}")
        _check(self.ipm_epsilon > 0, f"attack.ipm_epsilon must be > 0, got {self.ipm_epsilon}")


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy at the client level (``fedrs/core/privacy.py``): ``central``
    (the server clips each update to ``clip_norm`` and adds Gaussian noise to the mean) or
    ``local`` (each client clips and noises what it sends); (epsilon, delta) per round from
    Opacus's accountant. Its other keys set while ``mode`` is none are a ConfigError."""

    mode: str = "none"  # none | central | local
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"  # rdp | prv (Opacus)

    def __post_init__(self) -> None:
        _check(
            self.mode in ("none", "central", "local"),
            f"privacy.mode {self.mode!r}: none, central or local",
        )
        _check(self.clip_norm > 0, f"privacy.clip_norm must be > 0, got {self.clip_norm}")
        _check(
            self.noise_multiplier >= 0,
            f"privacy.noise_multiplier must be >= 0, got {self.noise_multiplier}",
        )
        _check(0 < self.delta < 1, f"privacy.delta must be in (0, 1), got {self.delta}")
        _check(
            self.accountant in ("rdp", "prv"), f"privacy.accountant {self.accountant!r}: rdp or prv"
        )


@dataclass(frozen=True)
class SystemConfig:
    """Clients' systems on a virtual clock (``fedrs/core/system.py``): compute speed (every
    client ``gflops``, a log-normal spread of sigma ``spread`` around it, or a ``trace`` CSV
    ``client,gflops[,up_mbps,down_mbps]``), link bandwidth (0: unlimited) and availability
    (always; ``onoff``: on a fraction ``on_fraction`` of the time, in cycles of ``cycle_s``
    virtual seconds on average; or ``trace``: a CSV ``client,start_s,end_s`` of on
    intervals), all drawn from the run's seed. ``target_accuracy``: the
    summary's time to reach it. Left at these defaults with ``federation.policy = sync``,
    there is no clock."""

    speed: str = "equal"  # equal | lognormal | trace
    gflops: float = 10.0
    spread: float = 0.0
    trace: str = ""
    up_mbps: float = 0.0
    down_mbps: float = 0.0
    availability: str = "always"  # always | onoff | trace
    availability_trace: str = ""  # CSV client,start_s,end_s: each client's on intervals
    on_fraction: float = 0.7
    cycle_s: float = 600.0
    target_accuracy: float = 0.0

    def __post_init__(self) -> None:
        _check(
            self.speed in ("equal", "lognormal", "trace"),
            f"system.speed {self.speed!r}: equal, lognormal or trace",
        )
        _check(self.speed != "trace" or bool(self.trace), "system.speed=trace needs system.trace")
        _check(self.gflops > 0, f"system.gflops must be > 0, got {self.gflops}")
        _check(self.spread >= 0, f"system.spread must be >= 0, got {self.spread}")
        _check(
            self.up_mbps >= 0 and self.down_mbps >= 0, "system.*_mbps must be >= 0 (0: no limit)"
        )
        _check(
            self.availability in ("always", "onoff", "trace"),
            f"system.availability {self.availability!r}: always, onoff or trace",
        )
        _check(
            self.availability != "trace" or bool(self.availability_trace),
            "system.availability=trace needs system.availability_trace",
        )
        _check(0 < self.on_fraction <= 1, "system.on_fraction must be in (0, 1]")
        _check(self.cycle_s > 0, "system.cycle_s must be > 0")
        _check(0 <= self.target_accuracy <= 1, "system.target_accuracy must be in [0, 1]")


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation across deployed sites (Flower's SecAgg+, ``actors/secagg.py``): the
    server learns only the example-weighted mean of the sites' updates. Each site sends its
    clients' mean ``update - global`` quantized over ``[-clip, clip]`` in ``quantization``
    levels; a client update with a value outside that range is rejected at its site (never
    clipped silently). ``shares``: the fraction of the round's sites each shares its keys with;
    ``threshold``: the fraction of those shares that recovers a site that drops out."""

    enabled: bool = False
    clip: float = 1.0
    quantization: int = 1 << 22
    shares: float = 1.0
    threshold: float = 0.5

    def __post_init__(self) -> None:
        _check(self.clip > 0, f"secagg.clip must be > 0, got {self.clip}")
        _check(
            0 < self.quantization < 1 << 30,
            f"secagg.quantization must be in [1, 2^30), got {self.quantization}",
        )
        _check(0 < self.shares <= 1, f"secagg.shares must be in (0, 1], got {self.shares}")
        _check(0 < self.threshold <= 1, f"secagg.threshold must be in (0, 1], got {self.threshold}")


@dataclass(frozen=True)
class RunConfig:
    method: MethodConfig = field(default_factory=MethodConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    system: SystemConfig = field(default_factory=SystemConfig)

    @property
    def clocked(self) -> bool:
        """Whether the run keeps a virtual clock (``[system]`` or a round policy set)."""
        return self.system != SystemConfig() or self.federation.policy != "sync"

    def __post_init__(self) -> None:
        f = self.federation
        _check(
            f.min_clients <= f.clients_per_round,
            f"federation.min_clients ({f.min_clients}) exceeds clients_per_round "
            f"({f.clients_per_round})",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts, every key present (``config.json``, ``fedrs config``)."""
        out = {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return out | {"method": self.method.to_dict()}

    def replace(self, **overrides: Any) -> RunConfig:
        """A copy with dotted-key overrides: ``cfg.replace(**{"federation.rounds": 3})``. Method
        options left at their defaults do not follow a change of ``method.name``."""
        data = self.to_dict() | {"method": self.method.to_dict(changed_only=True)}
        return from_dict(data, [f"{k}={v}" for k, v in overrides.items()])


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert a TOML / CLI value to the field's type, or raise ConfigError."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key)
    if origin is tuple:  # tuple[X, ...]: a TOML list, or "a,b" on the command line
        (item, *_) = typing.get_args(typ)
        if isinstance(value, str):
            value = [v.strip() for v in value.strip("[]()").split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: {value!r} is not a list")
        return tuple(_coerce(v, item, key) for v in value)
    try:
        if typ is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError(value)
            out = float(value)
            if out != out or out in (float("inf"), float("-inf")):
                raise ValueError(value)
            return out
        if typ is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {value!r} is not a valid {typ.__name__}") from None
    raise ConfigError(f"{key}: unsupported field type {typ}")  # pragma: no cover


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown config key {where!r}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        typ = hints[name]
        where = f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ConfigError(f"{where} must be a table of keys, got {value!r}")
            sub = _build_method(value) if typ is MethodConfig else _build(typ, value, where)
            kwargs[name] = sub
        else:
            kwargs[name] = _coerce(value, typ, where)
    return cls(**kwargs)


def _apply_override(data: dict[str, Any], assignment: str) -> None:
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected dotted.key=value")
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: {part!r} is not a section")
    node[parts[-1]] = value.strip()


def with_data_path(cfg: RunConfig, path: str) -> RunConfig:
    """``cfg`` naming the data it runs on (the synthetic default's folder included), so a
    method can read what the build holds (e.g. FedDiff its modalities' bands)."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(path)))


def _unused_privacy(cfg: RunConfig, overrides: list[str]) -> None:
    """A ConfigError when ``privacy.*`` keys are set while ``privacy.mode`` is none (no DP
    would run): any such key given with ``--set``, or set to another value than its default
    (a full dump at the defaults, ``config.json`` or ``fedrs config``'s, loads back)."""
    if cfg.privacy.mode != "none":
        return
    named = {a.partition("=")[0].strip() for a in overrides}
    default = PrivacyConfig()
    keys = [
        f"privacy.{k}"
        for k in (f.name for f in dataclasses.fields(PrivacyConfig))
        if k != "mode"
        and (f"privacy.{k}" in named or getattr(cfg.privacy, k) != getattr(default, k))
    ]
    _check(
        not keys,
        f"{', '.join(keys)} set while privacy.mode is 'none', so no DP would run: set "
        "privacy.mode=central or local, or leave them out",
    )


def _method_run_defaults(data: dict[str, Any]) -> None:
    """Fill in the chosen method's ``run_defaults`` (the settings of its benchmark tables)
    for every key that ``data`` (the user's file and ``--set``) leaves out."""
    method = data.get("method")
    name = method.get("name", MethodConfig.name) if isinstance(method, dict) else MethodConfig.name
    if not isinstance(name, str) or name not in methods():
        return  # _build names the unknown method
    for key, value in methods()[name].run_defaults.items():
        *sections, last = key.split(".")
        node = data
        for part in sections:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break  # a malformed section: _build names it
        else:
            node.setdefault(last, value)


def from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """A validated run config from a file's table and ``--set`` overrides; keys left out take
    the method's ``run_defaults``, then the dataclasses' defaults."""
    data = json.loads(json.dumps(data))  # deep copy
    for assignment in overrides or []:
        _apply_override(data, assignment)
    _method_run_defaults(data)
    cfg = _build(RunConfig, data, "")
    _unused_privacy(cfg, overrides or [])
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML file (optional) and apply ``--set`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    return from_dict(data, overrides)


def to_toml(cfg: RunConfig) -> str:
    """The config as TOML, every key present (what ``fedrs config`` prints; loads back)."""
    lines: list[str] = []

    def table(name: str, values: dict[str, Any]) -> None:
        lines.append(f"[{name}]")
        for key, value in values.items():
            if not isinstance(value, dict):
                text = str(value).lower() if isinstance(value, bool) else json.dumps(value)
                lines.append(f"{key} = {text}")
        lines.append("")
        for key, value in values.items():  # a sub-table ([data.modal]) after its section's keys
            if isinstance(value, dict):
                table(f"{name}.{key}", value)

    for section, values in cfg.to_dict().items():
        table(section, values)
    return "\n".join(lines)
