"""The method interface: what a client trains, what it sends, how the server combines it.

A method is one module with one ``Method`` subclass. Client side (inside a Ray actor, built once
per actor, frozen backbone resident):

* ``init_global(seed)``: the initial global tensors (only these ever travel);
* ``init_private(client_id, seed)``: a client's private tensors (kept in the client-state store);
* ``fit(global, private, shard, options)``: local training -> ``FitOutput``;
* ``evaluate_rows(global, private, shard, start, stop)``: a partial result over some rows of
  a test shard (classification: ``evaluate(global, private, images, labels)``'s sums).

Evaluation is spread over the actors in chunks; the driver combines the partials:

* ``reduce_eval(partials)``: the metrics of one split from its partials, in chunk order
  (classification: summed counts -> ``accuracy``, ``test_loss``; retrieval: gathered
  embeddings -> R@K); ``headline`` names the metric that progress lines, the plot and the
  summary's ``best_...`` follow (``personalized_<headline>``: its mean over clients).

Server side: ``Server``, a ``MethodServer`` built once per run in the driver actor with the
config, class names and a torch device of its own (``resources.server_num_cpus`` /
``server_num_gpus``): ``update(round, params, updates)`` runs after the strategy's aggregate
(CLIP2FL's federated features plug in here); ``state_dict`` / ``load_state_dict`` carry what
it keeps across rounds through checkpoints and ``--resume``.

What travels: every global tensor goes down (per client and round, only those of
``download_keys_for(client, round)`` when a method narrows it); clients upload the strategy's
keys, less ``download_only`` (tensors only the server writes), and, per client and round, only
those of ``upload_keys_for(client, round)`` (clients of one modality send one branch, a staged
method one stage's tensors); ``decode_upload`` restores tensors a client sent compressed (e.g.
as low-rank factors in its extras) before validation and aggregation; ``extra_keys`` name the
extra payloads (``FitOutput.extras``, e.g. per-class gradients) a client may send, and
``extras_for(client, round)`` those it sends (for ``--dry-run``), ``sent_extras(cfg)`` those
sent at all under a config (what DP must refuse). Uploads and
extras are validated (names, shapes, dtypes, finite values) and counted in ``bytes_up``.

``prompt_keys`` name the global tensors prompt averaging combines.

Nothing here assumes CLIP: ``ClipMethod`` (below) is the base of the methods on a frozen
open_clip backbone, and a method's per-shard cache (``input_cache``: frozen embeddings in
place of the pixels, or a teacher's outputs beside them) goes through one shared mechanism,
``datasets/features.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from fedrs.core.registry import all_checks, check  # noqa: F401 - methods' option checks
from fedrs.datasets.defaults import IMAGES, SyntheticDefault

if TYPE_CHECKING:
    from fedrs.core.config import RunConfig
    from fedrs.core.strategies import ClientUpdate
    from fedrs.datasets.shards import Shard
    from fedrs.models.backbone import Backbone

Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class NoOptions:
    """A method without options."""


@dataclass(frozen=True)
class TemplateOptions:
    template: str = "a satellite photo of a {}."  # the hand-written class prompt

    def __post_init__(self) -> None:
        check("{}" in self.template, "method.template must contain '{}' for the class name")


@dataclass(frozen=True)
class FitOptions:
    """Per-call local training options (from the config, the strategy and the round)."""

    round: int
    client_id: int
    seed: int
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
    max_grad_norm: float = 0.0  # clip each step's gradient to this L2 norm; 0: off
    upload_keys: tuple[str, ...] = ()
    # what this client's partner organisations shared with it this round (``share``), by
    # partner id; empty without a partner exchange
    partners: dict[int, Params] = field(default_factory=dict, compare=False)

    @classmethod
    def from_config(
        cls, cfg: RunConfig, round: int, client_id: int, strategy: Any = None
    ) -> FitOptions:
        """The options a client gets in ``round`` from ``cfg.client`` (and the strategy's
        upload keys / client options, e.g. FedProx's ``proximal_mu``)."""
        c = cfg.client
        extra = (
            {"upload_keys": strategy.upload_keys, **strategy.client_options()}
            if strategy is not None
            else {}
        )
        return cls(
            round=round,
            client_id=client_id,
            seed=cfg.federation.seed,
            epochs=c.local_epochs,
            batch_size=c.batch_size,
            lr=c.lr,
            momentum=c.momentum,
            weight_decay=c.weight_decay,
            max_grad_norm=c.max_grad_norm,
            **extra,
        )

    @property
    def rng_seed(self) -> list[int]:
        """Seed material unique to (run seed, round, client): runs replay exactly."""
        return [self.seed, self.round, self.client_id]


@dataclass
class FitOutput:
    params: Params  # the uploaded tensors (a subset of global_keys)
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    private: Params = field(default_factory=dict)  # new private state (stays client side)
    extras: Params = field(default_factory=dict)  # extra payloads (``extra_keys``) for Server


class MethodServer:
    """A method's server side (default: nothing beyond the strategy). Built in the driver
    actor; ``device`` is its own (a GPU share when ``resources.server_num_gpus`` > 0)."""

    def __init__(self, cfg: RunConfig, classes: list[str], device: str = "cpu") -> None:
        self.cfg = cfg
        self.classes = classes
        self.device = torch.device(device)
        self.metrics: dict[str, float] = {}  # of the last update, logged as server_<name>

    def update(self, round: int, params: Params, updates: list[ClientUpdate]) -> Params:
        """The new global tensors after the strategy's aggregate of ``updates``."""
        return params

    def state_dict(self) -> Params:
        """What the server keeps across rounds, as arrays (checkpointed every round)."""
        return {}

    def load_state_dict(self, state: Params) -> None:
        """Restore ``state_dict()`` (``--resume``)."""


class Method(ABC):
    """Base class of federated methods; subclasses set ``name`` and implement the hooks."""

    name: ClassVar[str]

    summary: ClassVar[str] = ""  # one line for `fedrs methods`

    # The method's own options (``method.KEY`` in TOML / --set): a frozen, validated dataclass.
    Options: ClassVar[type] = NoOptions

    def __init__(self, cfg: RunConfig, classes: list[str], device: str = "cpu") -> None:
        options = getattr(cfg.method, "options", None)
        if not isinstance(options, self.Options):
            raise TypeError(
                f"{type(self).__name__} needs method options {self.Options.__name__}, got "
                f"{type(options).__name__} (method.name={cfg.method.name!r})"
            )
        self.cfg = cfg
        self.classes = classes
        self.device = torch.device(device)

    # --- local training (in a client actor) -------------------------------------------------

    trains: ClassVar[bool] = True

    @abstractmethod
    def init_global(self, seed: int) -> Params: ...

    def init_private(self, client_id: int, seed: int) -> Params:
        return {}

    @abstractmethod
    def fit(
        self, global_params: Params, private: Params, shard: Shard, options: FitOptions
    ) -> FitOutput: ...

    def input_cache(self) -> InputCache | None:
        """What this method computes once per shard and keeps beside it (the shared cache,
        ``datasets/features.py``; ``data.feature_cache`` switches it off); None: nothing."""
        return None

    # what the data must hold, checked in preflight before Ray starts: "labels" (class
    # labels), "captions" (image-text pairs), "modalities" (co-registered HSI / LiDAR bands)
    needs: ClassVar[frozenset[str]] = frozenset({"labels"})

    # the synthetic default data a run without data.path builds for it (datasets/defaults.py):
    # IMAGES (land-cover scenes), CAPTIONS (captioned scenes), SCENE (HSI + LiDAR)
    synthetic_data: ClassVar[SyntheticDefault] = IMAGES

    # The run settings of the method's own benchmark tables (dotted run-config keys, e.g.
    # ``{"client.lr": 0.05}``): they replace the global defaults for this method, and never
    # a key the user's file or ``--set`` gives (``orchestrator.config.from_dict``).
    run_defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def check_run(cls, cfg: RunConfig) -> list[str]:
        """Settings that cannot make a meaningful run, checked in preflight: raise ConfigError
        (one line, with the fix) when the run could not mean anything; return warnings (each
        with the fix) for what rarely does. Default: none."""
        return []

    # --- exchange: what travels (orchestrator/exchange.py applies these) --------------------

    @classmethod
    def tensor_shapes(
        cls, cfg: RunConfig, model_cfg: dict[str, Any], num_classes: int
    ) -> dict[str, dict[str, tuple[int, ...]]]:
        """``{"global": {name: shape}, "private": {...}}`` from the architecture config alone,
        without building a model (``fedrs run --dry-run``); an optional ``"extras"`` scope
        gives the extra payloads a client sends at most per round (``extras_for`` narrows them per
        client)."""
        raise NotImplementedError(f"{cls.name} does not describe its tensors")

    global_keys: tuple[str, ...] = ()

    prompt_keys: tuple[str, ...] = ()

    download_only: ClassVar[tuple[str, ...]] = ()  # global tensors clients never upload

    extra_keys: ClassVar[tuple[str, ...]] = ()  # extra payload names (a trailing "/": a prefix)

    Server: ClassVar[type[MethodServer]] = MethodServer

    @classmethod
    def upload_keys_for(cls, cfg: RunConfig, client: dict[str, Any], round: int) -> Any:
        """The tensors the client described by ``client`` (its manifest record) uploads in
        ``round``; None: all the strategy asks for. FedDiff returns one branch per modality
        and one stage's tensors per round."""
        return None

    @classmethod
    def download_keys_for(cls, cfg: RunConfig, client: dict[str, Any], round: int) -> Any:
        """The global tensors the client receives in ``round``; None: all of them."""
        return None

    @classmethod
    def extras_for(cls, cfg: RunConfig, client: dict[str, Any], round: int) -> Any:
        """The extra payloads (names of ``tensor_shapes``' ``"extras"``) the client sends in
        ``round``, for ``--dry-run``; None: all of them. CLIP2FL: one per local class."""
        return None

    @classmethod
    def sent_extras(cls, cfg: RunConfig) -> tuple[str, ...]:
        """The extra payloads (of ``extra_keys``) clients send at all under ``cfg``; default:
        all of them. Under ``privacy.mode`` a method is refused when any are sent (DP clips and
        noises the tensors, not the extras)."""
        return cls.extra_keys

    @classmethod
    def wire_size(cls, cfg: RunConfig, shape: tuple[int, ...]) -> int:
        """Numbers a client sends for a tensor of ``shape`` (``--dry-run``): all of them, or
        fewer when the method compresses uploads (FedDiff's low-rank factors)."""
        return int(np.prod(shape, dtype=np.int64))

    @classmethod
    def decode_upload(
        cls, cfg: RunConfig, sent: Params, params: Params, extras: Params
    ) -> tuple[Params, Params]:
        """(params, extras) as the strategy sees them, from what a client uploaded: a method
        whose clients compress tensors (e.g. low-rank factors in ``extras``) restores them
        here, given ``sent``, the global tensors the client received. Called after the extras
        were validated; the restored params are validated next. Default: unchanged."""
        return params, extras

    @classmethod
    def extra_allowed(cls, name: str) -> bool:
        return any(name == k or (k.endswith("/") and name.startswith(k)) for k in cls.extra_keys)

    # Partner exchange (vertical / split learning): clients whose data records name
    # ``partners`` (organisations holding other modalities of the same pixels) first ``share``
    # a payload; the orchestrator checks it against ``partner_shapes``, relays it through the
    # object store and hands it to each partner's ``fit`` as ``options.partners``
    # (orchestrator/partners.py). A region whose organisation fails to share skips the round.

    @classmethod
    def partner_shapes(
        cls, cfg: RunConfig, client: dict[str, Any], round: int
    ) -> dict[str, tuple[int, ...]] | None:
        """What the client described by ``client`` sends each partner in ``round`` (float32
        arrays by name); None: nothing, no share phase (the default)."""
        return None

    def share(
        self, global_params: Params, private: Params, shard: Shard, options: FitOptions
    ) -> Params:
        """The payload of ``partner_shapes`` for this client's partners, computed from the
        global tensors it received and its training ``shard``."""
        raise NotImplementedError(f"{self.name} declares partner_shapes but no share")

    # --- evaluation -----------------------------------------------------------------------

    headline: ClassVar[str] = "accuracy"  # the metric progress, plot and summary follow

    # False: clients never share a model (local training only); the global split is then
    # evaluated only through each client's own model (federation.eval_personal_global)
    global_model: ClassVar[bool] = True

    # True: before a client's model is evaluated, ``personalize`` adapts it on the client's
    # training shard (e.g. fine-tuning the global prompt locally); see there
    personalizes: ClassVar[bool] = False

    def personalize(
        self, global_params: Params, private: Params, shard: Shard, options: FitOptions
    ) -> Params:
        """The private tensors a client evaluates with, made from the current global ones on
        its training ``shard`` (``personalizes`` methods; deterministic in ``options``)."""
        return private

    def evaluate(
        self, global_params: Params, private: Params, images: np.ndarray, labels: np.ndarray
    ) -> dict[str, float]:
        """Classification: ``{"correct", "loss_sum", "n"}`` over the given examples."""
        raise NotImplementedError(f"{self.name} evaluates through evaluate_rows")

    def evaluate_rows(
        self, global_params: Params, private: Params, shard: Any, start: int, stop: int
    ) -> dict[str, Any]:
        """A partial evaluation over rows ``start:stop`` of a test shard (pixels or cached
        features in ``shard.inputs``, and whatever else the shard holds)."""
        return self.evaluate(
            global_params, private, shard.inputs[start:stop], shard.labels[start:stop]
        )

    def predict_rows(self, global_params: Params, shard: Any, start: int, stop: int) -> np.ndarray:
        """Predicted class of rows ``start:stop`` of a test shard (a scene's classification
        map); methods that do not classify pixels need not implement it."""
        raise NotImplementedError(f"{self.name} does not predict rows")

    @classmethod
    def reduce_eval(cls, partials: list[dict[str, Any]]) -> dict[str, Any]:
        """One split's metrics from its partials (classification: summed counts): accuracy,
        loss, ``accuracy_<v>`` (and ``test_loss_<v>`` from a ``loss_<v>`` sum) for each
        ``correct_<v>`` count a method adds (another head, a
        teacher), and with per-class counts ``per_class_accuracy``, ``balanced_accuracy`` and
        (with per-class predictions) Cohen's ``kappa``; a variant with its own per-class
        counts (``class_correct_<v>``, ``class_pred_<v>``) gets ``balanced_accuracy_<v>`` and
        ``kappa_<v>`` too."""
        n = sum(p["n"] for p in partials)
        out: dict[str, Any] = {
            "accuracy": sum(p["correct"] for p in partials) / n if n else None,
            "test_loss": sum(p["loss_sum"] for p in partials) / n if n else None,
        }
        variants = {k for p in partials for k in p if k.startswith("correct_")}
        for key in sorted(variants):
            if all(key in p for p in partials):
                out["accuracy_" + key[len("correct_") :]] = (
                    sum(p[key] for p in partials) / n if n else None
                )
            loss = "loss_" + key[len("correct_") :]  # the variant's loss sum, when it has one
            if all(loss in p for p in partials):
                out["test_" + loss] = sum(p[loss] for p in partials) / n if n else None
        counted = [p for p in partials if len(p.get("class_n", ()))]  # chunks with examples
        if counted and len(counted) == sum(1 for p in partials if p["n"]):
            class_n = sum(np.asarray(p["class_n"], float) for p in counted)
            per_class = class_accuracy(
                sum(np.asarray(p["class_correct"], float) for p in counted), class_n
            )
            seen = [a for a in per_class if a is not None]
            out["per_class_accuracy"] = per_class
            out["balanced_accuracy"] = float(np.mean(seen)) if seen else None
            if all(len(p.get("class_pred", ())) for p in counted):
                out["kappa"] = cohen_kappa(
                    sum(p["correct"] for p in counted),
                    class_n,
                    sum(np.asarray(p["class_pred"], float) for p in counted),
                )
            for key in sorted(variants):
                v = key[len("correct_") :]
                if not all(f"class_correct_{v}" in p for p in counted):
                    continue
                hits = sum(np.asarray(p[f"class_correct_{v}"], float) for p in counted)
                seen_v = [a for a in class_accuracy(hits, class_n) if a is not None]
                out[f"balanced_accuracy_{v}"] = float(np.mean(seen_v)) if seen_v else None
                if all(f"class_pred_{v}" in p for p in counted):
                    out[f"kappa_{v}"] = cohen_kappa(
                        sum(p[key] for p in counted),
                        class_n,
                        sum(np.asarray(p[f"class_pred_{v}"], float) for p in counted),
                    )
        return out


# ---------------------------------------------------------------------------------------------
# Shared helpers for methods' local training


def batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Shuffled mini-batches of row indices (sorted within a batch for sequential mmap reads)."""
    perm = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield np.sort(perm[start : start + batch_size])


def to_numpy(params: dict[str, torch.Tensor]) -> Params:
    return {k: v.detach().to("cpu", torch.float32).numpy().copy() for k, v in params.items()}


def proximal_term(
    params: dict[str, nn.Parameter], anchor: dict[str, torch.Tensor], mu: float
) -> torch.Tensor:
    """FedProx's (mu / 2) * sum ||w - w_global||^2 over the given tensors."""
    total = sum(((params[k] - anchor[k]) ** 2).sum() for k in anchor)
    return 0.5 * mu * total  # type: ignore[return-value]


def cross_entropy_step(
    logits_fn: Callable[[np.ndarray], torch.Tensor], images: np.ndarray, labels: np.ndarray
) -> Callable[[np.ndarray], tuple[torch.Tensor, int]]:
    """A ``local_sgd`` step for plain classification: CE of ``logits_fn(images[rows])``."""

    def step(rows: np.ndarray) -> tuple[torch.Tensor, int]:
        logits = logits_fn(images[rows])
        y = torch.as_tensor(labels[rows], device=logits.device)
        return nn.functional.cross_entropy(logits, y), int((logits.argmax(1) == y).sum())

    return step


def local_sgd(
    params: dict[str, nn.Parameter],
    step_loss: Callable[[np.ndarray], tuple[torch.Tensor, int]],
    n: int,
    options: FitOptions,
    global_keys: Collection[str],
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
) -> dict[str, float]:
    """The local training loop every method shares: SGD over shuffled batches for ``epochs``
    (``optimizer``: another optimiser over the parameters, e.g. FedDiff's Adam).

    ``step_loss(rows)`` returns (loss, number correct) for a batch. With
    ``options.proximal_mu > 0`` FedProx's (mu / 2) ||w - w_global||^2 is added for the tensors
    named in ``global_keys`` (the ones received from the server; private tensors are never
    anchored). ``options.max_grad_norm > 0`` clips each step's gradient to that L2 norm.
    Returns mean loss / accuracy of the last epoch.
    """
    rng = np.random.default_rng(options.rng_seed)
    torch.manual_seed(int(rng.integers(2**31)))
    opt = (
        optimizer(list(params.values()))
        if optimizer is not None
        else torch.optim.SGD(
            list(params.values()),
            lr=options.lr,
            momentum=options.momentum,
            weight_decay=options.weight_decay,
        )
    )
    anchor = (
        {k: p.detach().clone() for k, p in params.items() if k in global_keys}
        if options.proximal_mu
        else {}
    )
    loss_sum = correct = seen = 0.0
    for _ in range(options.epochs):
        loss_sum = correct = seen = 0.0
        for rows in batches(n, options.batch_size, rng):
            loss, n_correct = step_loss(rows)
            if anchor:
                loss = loss + proximal_term(params, anchor, options.proximal_mu)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if options.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(list(params.values()), options.max_grad_norm)
            opt.step()
            loss_sum += float(loss.detach()) * len(rows)
            correct += n_correct
            seen += len(rows)
    return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1)}


def batched_eval(
    logits_fn: Callable[[np.ndarray], torch.Tensor],
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Sum correct predictions and cross-entropy over ``images`` in batches, with the correct
    predictions, examples and predictions per class (``class_correct``, ``class_n``,
    ``class_pred``: what Cohen's kappa needs)."""
    correct = loss_sum = 0.0
    class_correct = class_n = class_pred = np.zeros(0)
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            logits = logits_fn(images[start : start + batch_size])
            y = torch.as_tensor(labels[start : start + batch_size], device=logits.device)
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            pred = logits.argmax(dim=1)
            hit = (pred == y).cpu().numpy()
            correct += float(hit.sum())
            y_np, c = y.cpu().numpy(), logits.shape[1]
            class_correct = _add(class_correct, np.bincount(y_np, weights=hit, minlength=c))
            class_n = _add(class_n, np.bincount(y_np, minlength=c).astype(float))
            p_np = pred.cpu().numpy()
            class_pred = _add(class_pred, np.bincount(p_np, minlength=c).astype(float))
    return {
        "correct": correct,
        "loss_sum": loss_sum,
        "n": float(len(images)),
        "class_correct": class_correct,
        "class_n": class_n,
        "class_pred": class_pred,
    }


def cohen_kappa(correct: float, class_n: Any, class_pred: Any) -> float | None:
    """Cohen's kappa ``(p_o - p_e) / (1 - p_e)`` from the marginals of the confusion matrix:
    ``p_o`` the accuracy, ``p_e = sum_k true_k pred_k / n^2`` (agreement by chance)."""
    true, pred = np.asarray(class_n, float), np.asarray(class_pred, float)
    n = true.sum()
    if n == 0:
        return None
    po, pe = correct / n, float((true * pred).sum()) / (n * n)
    return float((po - pe) / (1 - pe)) if pe < 1 else 1.0


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return b if len(a) == 0 else a + b


def class_accuracy(correct: Any, n: Any) -> list[float | None]:
    """Per-class accuracy (None for a class without test examples)."""
    return [float(c / k) if k else None for c, k in zip(correct, n, strict=True)]


@dataclass(frozen=True)
class InputCache:
    """A per-shard array a method computes once (``compute``: uint8 pixels ``(n, H, W, 3)`` ->
    float32 ``(n, D)``) and that depends on nothing but the pixels and ``identity`` (the cache
    key): frozen image embeddings, a frozen teacher's logits, diffusion features. With
    ``replaces_inputs`` the method's ``fit`` / ``evaluate`` see it as ``shard.inputs`` instead of
    the pixels; otherwise as ``shard.cached`` beside them."""

    identity: dict[str, Any]
    compute: Callable[[np.ndarray], np.ndarray]
    replaces_inputs: bool = True


class ClipMethod(Method):
    """A method on a frozen open_clip backbone (``self.backbone``, loaded once per actor)."""

    backbone: Backbone
    # The image encoder never changes and nothing is inserted into it: image embeddings can be
    # computed once per shard (frozen-feature cache) and fed to ``fit`` / ``evaluate`` as
    # ``(N, D)`` float32 ``inputs`` in place of ``(N, H, W, 3)`` uint8 pixels.
    frozen_image_encoder: ClassVar[bool] = False

    def input_cache(self) -> InputCache | None:
        if not self.frozen_image_encoder:
            return None
        return InputCache(self.feature_identity(), self.encode_images)

    def feature_identity(self) -> dict[str, Any]:
        """What cached image embeddings depend on (the cache key)."""
        return self.backbone.identity()

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        """Frozen, L2-normalised image embeddings ``(n, D)`` of uint8 pixels (the cache fills
        itself with these)."""
        return self.backbone.image_embeddings(self.backbone.preprocess(images)).cpu().numpy()

    def tensor(self, value: np.ndarray, train: bool = False) -> torch.Tensor:
        """An array (a received or stored tensor) on this method's device, float32; with
        ``train`` a fresh ``nn.Parameter`` that local training may update."""
        t = torch.from_numpy(np.array(value, dtype=np.float32)).to(self.device)
        return nn.Parameter(t) if train else t

    def image_features(self, inputs: np.ndarray) -> torch.Tensor:
        """Normalised image features of a batch of ``inputs``: pixels go through the frozen
        encoder; cached embeddings (2-D float) are used as they are."""
        if inputs.ndim == 2:
            return torch.from_numpy(np.array(inputs, dtype=np.float32)).to(self.device)
        return self.backbone.image_embeddings(self.backbone.preprocess(inputs))
