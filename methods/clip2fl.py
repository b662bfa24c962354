"""CLIP2FL (AAAI 2024) and CReFF (IJCAI 2022): a small client model, a balanced classifier
re-trained on the server from federated features; CLIP2FL adds CLIP as teacher and prototype.

As ../shared/METHODS.md section 3 gives the authors' code:

* client model: ``models/student.py`` (ResNet-8 -> ``feature_dim`` -> Linear(C));
* teacher (CLIP2FL): a frozen CLIP (``model.arch`` / ``model.pretrained``), logits
  ``teacher_scale * cos(image, text(template))``, computed once per shard through the shared
  input cache (``shard.cached``; the teacher never runs again) on the un-augmented pixels. The
  paper's 100 is CLIP's learned logit scale (OpenAI CLIP's sits at its clamp, 100);
  ``teacher_scale = 0`` takes the teacher's own learned scale instead, the calibrated reading
  for a teacher trained to another temperature;
* client loss ``CE + kd_alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))``;
* before training, with the received backbone and the previous round's re-trained classifier,
  per local class ``grad_repeats`` x ``grad_batch_size`` augmented samples, the CE gradient
  w.r.t. the classifier's W and b only, averaged: extra payloads ``class_grad/<c>``
  (``(C, D + 1)``: W's gradient with b's as last column), validated and counted in ``bytes_up``;
* server (``Clip2FLServer``, after the strategy's FedAvg of the student): per-class gradient
  mean over the clients that sent it; federated features F (``features_per_class`` x D per
  class, kept across rounds, checkpointed) updated by ``feature_steps`` SGD steps (lr
  ``feature_lr``) on ``sum_c D(grad CE(h(F_c), c), g_c) + lambda_pcl * L_PCL(F)``, D = sum over
  rows of (1 - cos) for W plus (1 - cos) for b, h the previous re-trained classifier, L_PCL
  cross-entropy of cos(F, text) / ``pcl_temperature`` against the class's CLIP text embedding;
  then a fresh ``Linear(D, C)`` trained on (F, labels) for ``retrain_epochs`` (batch
  ``retrain_batch_size``, SGD lr ``retrain_lr``): ``classifier.weight`` / ``.bias``, sent down,
  never uploaded;
* evaluation: the FedAvg backbone with the re-trained classifier (``accuracy``); beside it
  ``accuracy_fedavg_head`` (the FedAvg classifier) and, when the teacher's logits are cached,
  ``accuracy_teacher`` (CLIP zero-shot on the same split).

``creff`` = the same without distillation and without L_PCL (no CLIP loaded anywhere);
``student`` = the plain student, CE only, no re-training (FedAvg or, with
``strategy.name=fedprox``, FedProx). The features' width is the teacher's embedding width
(512 for ViT-B CLIPs, the paper's) for all three, so they share one student.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch.nn import functional as F

from fedrs.methods.base import (
    FitOptions,
    FitOutput,
    InputCache,
    Method,
    MethodServer,
    Params,
    batched_eval,
    check,
    local_sgd,
)
from fedrs.models.student import Student

if TYPE_CHECKING:
    from fedrs.core.config import RunConfig
    from fedrs.core.strategies import ClientUpdate
    from fedrs.datasets.shards import Shard

PREFIX = "student."
HEAD_W, HEAD_B = "classifier.weight", "classifier.bias"  # the re-trained classifier
GRAD = "class_grad/"
EVAL_BATCH = 256


@dataclass(frozen=True)
class Clip2FLOptions:
    template: str = "a photo of a {}."  # the teacher's class prompt
    input_size: int = 32  # the student's input (pixels are resized)
    scaling: int = 4  # ResNet-8 widths 16/32/64 x scaling
    kd_alpha: float = 1.0  # weight of the distillation term (0: no teacher)
    kd_temperature: float = 3.0
    teacher_scale: float = 100.0  # teacher logits = scale * cos (0: the teacher's logit_scale)
    retrain: bool = True  # federated features + re-trained classifier (CReFF's server)
    grad_repeats: int = 10
    grad_batch_size: int = 32
    features_per_class: int = 100
    feature_steps: int = 100
    feature_lr: float = 0.1
    lambda_pcl: float = 0.001  # prototype contrastive loss against CLIP's text (0: off)
    pcl_temperature: float = 0.1
    retrain_epochs: int = 300
    retrain_batch_size: int = 32
    retrain_lr: float = 0.01

    def __post_init__(self) -> None:
        check("{}" in self.template, "method.template must contain '{}' for the class name")
        for name in (
            "input_size",
            "scaling",
            "grad_repeats",
            "grad_batch_size",
            "features_per_class",
            "retrain_batch_size",
        ):
            check(getattr(self, name) >= 1, f"method.{name} must be >= 1")
        for name in ("kd_alpha", "lambda_pcl", "feature_steps", "teacher_scale"):
            check(getattr(self, name) >= 0, f"method.{name} must be >= 0")
        check(
            not self.retrain or self.retrain_epochs >= 1,
            "method.retrain_epochs must be >= 1 (0 would evaluate an untrained classifier)",
        )
        for name in ("kd_temperature", "pcl_temperature", "feature_lr", "retrain_lr"):
            check(getattr(self, name) > 0, f"method.{name} must be > 0")
        check(
            self.retrain or self.lambda_pcl == 0,
            "method.lambda_pcl acts on the federated features: it needs method.retrain=true",
        )

    @property
    def uses_teacher(self) -> bool:
        """Clients need the teacher's logits only to distil (L_PCL is the server's)."""
        return self.kd_alpha > 0


@dataclass(frozen=True)
class CReFFOptions(Clip2FLOptions):
    kd_alpha: float = 0.0
    lambda_pcl: float = 0.0


@dataclass(frozen=True)
class StudentOptions(Clip2FLOptions):
    kd_alpha: float = 0.0
    lambda_pcl: float = 0.0
    retrain: bool = False


# ---------------------------------------------------------------------------------------------
# The losses, as small pure functions (tested against hand-computed values)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, mean over the batch."""
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student / t, dim=1),
        F.log_softmax(teacher / t, dim=1),
        reduction="none",
        log_target=True,
    )
    return kl.sum(1).mean() * t * t


def classifier_grad(
    feats: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of mean CE(feats W^T + b, labels) w.r.t. W and b, in closed form
    (``(P - Y)^T feats / n`` and the mean of ``P - Y``); differentiable in ``feats``. A leading
    batch dimension is allowed (one class per slice)."""
    probs = torch.softmax(feats @ weight.t() + bias, dim=-1)
    diff = (probs - F.one_hot(labels, weight.shape[0]).to(probs)) / feats.shape[-2]
    return diff.transpose(-1, -2) @ feats, diff.sum(-2)


def match_distance(
    gw: torch.Tensor, gb: torch.Tensor, target_w: torch.Tensor, target_b: torch.Tensor
) -> torch.Tensor:
    """CReFF's D: sum over W's rows of (1 - cos) plus (1 - cos) of the bias vectors (a leading
    batch dimension is summed over)."""
    rows = 1 - F.cosine_similarity(gw, target_w, dim=-1, eps=1e-6)
    bias = 1 - F.cosine_similarity(gb, target_b, dim=-1, eps=1e-6)
    return rows.sum() + bias.sum()


def prototype_contrastive(
    feats: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, temperature: float
) -> torch.Tensor:
    """L_PCL: cross-entropy of ``cos(f, t_c) / temperature`` over the classes' L2-normalised
    text embeddings, each feature's own class the positive; mean over features."""
    logits = F.normalize(feats, dim=-1) @ F.normalize(text, dim=-1).t() / temperature
    return F.cross_entropy(logits, labels)


@torch.no_grad()
def retrain_classifier(
    feats: torch.Tensor, labels: torch.Tensor, num_classes: int, opts: Clip2FLOptions, seed: list
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh ``Linear(D, C)`` trained on (feats, labels) by plain SGD on mini-batches: the
    balanced classifier. The linear layer's CE gradient is taken in closed form
    (``classifier_grad``): the same steps as autograd + ``torch.optim.SGD``, without their
    per-step overhead (this loop is most of the server's time per round)."""
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
    bound = 1.0 / feats.shape[1] ** 0.5  # nn.Linear's default initialisation
    weight = ((torch.rand(num_classes, feats.shape[1], generator=gen) * 2 - 1) * bound).to(feats)
    bias = ((torch.rand(num_classes, generator=gen) * 2 - 1) * bound).to(feats)
    n, lr = len(feats), opts.retrain_lr
    for _ in range(opts.retrain_epochs):
        perm = torch.randperm(n, generator=gen).to(feats.device)
        for start in range(0, n, opts.retrain_batch_size):
            rows = perm[start : start + opts.retrain_batch_size]
            gw, gb = classifier_grad(feats[rows], labels[rows], weight, bias)
            weight.sub_(gw, alpha=lr)
            bias.sub_(gb, alpha=lr)
    return weight, bias


def _tensor(value: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A (possibly read-only, memory-mapped) array as a float32 tensor on ``device``."""
    return torch.from_numpy(np.array(value, dtype=np.float32)).to(device)


def _normal(shape: tuple[int, ...], seed: list[int]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
    return torch.randn(*shape, generator=gen)


def _teacher_text(cfg: RunConfig, classes: list[str], device: torch.device) -> Any:
    from fedrs.models.backbone import load_backbone
    from fedrs.models.prompt import zero_shot_text_features

    backbone = load_backbone(cfg.model.arch, cfg.model.pretrained, device)
    return backbone, zero_shot_text_features(backbone, classes, cfg.method.options.template)


def _embed_dim(cfg: RunConfig) -> int:
    from fedrs.models.backbone import model_config

    return int(model_config(cfg.model.arch)["embed_dim"])


# ---------------------------------------------------------------------------------------------
# The server side


class Clip2FLServer(MethodServer):
    """Federated features and the re-trained classifier (nothing when ``retrain`` is off)."""

    def __init__(self, cfg: RunConfig, classes: list[str], device: str = "cpu") -> None:
        super().__init__(cfg, classes, device)
        self.opts: Clip2FLOptions = cfg.method.options
        dim, k = _embed_dim(cfg), self.opts.features_per_class
        self.labels = torch.arange(len(classes), device=self.device).repeat_interleave(k)
        self.features = _normal((len(classes) * k, dim), [cfg.federation.seed, 7]).to(self.device)
        self.text = None
        if self.opts.retrain and self.opts.lambda_pcl > 0:
            self.text = _teacher_text(cfg, classes, self.device)[1].float()

    def update(self, round: int, params: Params, updates: list[ClientUpdate]) -> Params:
        self.metrics = {}
        if not self.opts.retrain:
            return params
        targets = class_gradient_means(updates, len(self.classes))
        if not targets:
            return params
        weight, bias = (_tensor(params[k], self.device) for k in (HEAD_W, HEAD_B))
        loss = self.update_features(targets, weight, bias)
        w, b = retrain_classifier(
            self.features,
            self.labels,
            len(self.classes),
            self.opts,
            [self.cfg.federation.seed, round],
        )
        self.metrics = {"feature_loss": loss, "classes_matched": float(len(targets))}
        return {**params, HEAD_W: w.cpu().numpy(), HEAD_B: b.cpu().numpy()}

    def update_features(
        self, targets: dict[int, torch.Tensor], weight: torch.Tensor, bias: torch.Tensor
    ) -> float:
        """``feature_steps`` SGD steps of gradient matching (+ L_PCL) on the features."""
        c, k = len(self.classes), self.opts.features_per_class
        classes = torch.tensor(sorted(targets), device=self.device)
        target = torch.stack([targets[int(i)] for i in classes]).to(self.device)
        feats = self.features.clone().requires_grad_(True)
        opt = torch.optim.SGD([feats], lr=self.opts.feature_lr)
        loss = torch.zeros(())
        for _ in range(self.opts.feature_steps):
            per_class = feats.view(c, k, -1)[classes]
            gw, gb = classifier_grad(per_class, classes[:, None].expand(-1, k), weight, bias)
            loss = match_distance(gw, gb, target[..., :-1], target[..., -1])
            if self.text is not None:
                loss = loss + self.opts.lambda_pcl * prototype_contrastive(
                    feats, self.labels, self.text, self.opts.pcl_temperature
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.features = feats.detach()
        return float(loss.detach())

    def state_dict(self) -> Params:
        return {"features": self.features.cpu().numpy().copy()}

    def load_state_dict(self, state: Params) -> None:
        if "features" in state:
            self.features = _tensor(state["features"], self.device)


def class_gradient_means(updates: list[ClientUpdate], num_classes: int) -> dict[int, torch.Tensor]:
    """Per class, the mean of the clients' ``class_grad/<c>`` payloads (clients holding c)."""
    sums: dict[int, list[np.ndarray]] = {}
    for u in updates:
        for name, value in u.extras.items():
            if name.startswith(GRAD):
                sums.setdefault(int(name[len(GRAD) :]), []).append(np.asarray(value))
    return {
        c: torch.from_numpy(np.mean(v, axis=0).astype(np.float32))
        for c, v in sorted(sums.items())
        if 0 <= c < num_classes
    }


# ---------------------------------------------------------------------------------------------
# The client side


class CLIP2FL(Method):
    name = "clip2fl"
    summary = "ResNet-8 clients distilled from CLIP; federated features + re-trained classifier"
    Options = Clip2FLOptions
    Server = Clip2FLServer
    # the schedule of the CLIP2FL tables (benchmarks/sweeps/clip2fl_longtail.toml): 20 rounds
    # of 8 clients x 1 local epoch, plain SGD lr 0.1
    run_defaults: ClassVar[dict[str, Any]] = {
        "federation.rounds": 20,
        "federation.clients_per_round": 8,
        "client.local_epochs": 1,
        "client.lr": 0.1,
        "client.momentum": 0.0,
        "client.weight_decay": 0.0,
    }
    download_only = (HEAD_W, HEAD_B)
    extra_keys = (GRAD,)

    @classmethod
    def check_run(cls, cfg: RunConfig) -> list[str]:
        """Rule: a teacher with random weights (no ``model.pretrained``) teaches chance; when
        the clients distil from it or the server aligns to its text features, say so loudly."""
        opts = cfg.method.options
        if cfg.model.pretrained or not (opts.kd_alpha > 0 or opts.lambda_pcl > 0):
            return []
        return [
            f"{cfg.method.name} distils from its CLIP teacher ({cfg.model.arch}), which has "
            "random weights (model.pretrained is empty): its targets are at chance. Give "
            "model.pretrained (a `fedrs pretrain` checkpoint or an open_clip tag), or set "
            "method.kd_alpha=0 and method.lambda_pcl=0 to train without it"
        ]

    def __init__(self, cfg: RunConfig, classes: list[str], device: str = "cpu") -> None:
        super().__init__(cfg, classes, device)
        self.opts: Clip2FLOptions = cfg.method.options
        self.student = Student(
            len(classes), _embed_dim(cfg), self.opts.scaling, self.opts.input_size
        ).to(self.device)
        self.teacher = self.text = None
        self.teacher_scale = self.opts.teacher_scale
        if self.opts.uses_teacher:
            self.teacher, self.text = _teacher_text(cfg, classes, self.device)
            if not self.teacher_scale:
                self.teacher_scale = float(self.teacher.model.logit_scale.exp())
        heads = (HEAD_W, HEAD_B) if self.opts.retrain else ()  # the student arm: no re-training
        self.global_keys = (*self._student_state(), *heads)

    @classmethod
    def extra_names(cls, num_classes: int) -> list[str]:
        return [f"{GRAD}{c}" for c in range(num_classes)]

    @classmethod
    def extras_for(cls, cfg: RunConfig, client: dict[str, Any], round: int) -> Any:
        """One gradient per class the client's shard holds (its manifest's class counts)."""
        counts = client.get("class_counts")
        if counts is None or not cfg.method.options.retrain:
            return None
        return {f"{GRAD}{c}" for c, n in enumerate(counts) if n}

    @classmethod
    def tensor_shapes(
        cls, cfg: RunConfig, model_cfg: dict[str, Any], num_classes: int
    ) -> dict[str, dict[str, tuple[int, ...]]]:
        opts: Clip2FLOptions = cfg.method.options
        dim = int(model_cfg["embed_dim"])
        with torch.device("meta"):  # shapes only, no memory
            state = Student(num_classes, dim, opts.scaling).state_dict()
        shapes = {PREFIX + k: tuple(v.shape) for k, v in state.items() if v.is_floating_point()}
        extras = {}
        if opts.retrain:  # the re-trained classifier goes down; per-class gradients come up
            shapes |= {HEAD_W: (num_classes, dim), HEAD_B: (num_classes,)}
            extras = {name: (num_classes, dim + 1) for name in cls.extra_names(num_classes)}
        return {"global": shapes, "private": {}, "extras": extras}

    def _student_state(self) -> dict[str, torch.Tensor]:
        """The student's float tensors (weights and BatchNorm statistics), by global name."""
        return {
            PREFIX + k: v for k, v in self.student.state_dict().items() if v.is_floating_point()
        }

    def init_global(self, seed: int) -> Params:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            fresh = Student(len(self.classes), _embed_dim(self.cfg), self.opts.scaling)
        self.student.load_state_dict(fresh.state_dict())
        out = {k: v.detach().cpu().numpy().copy() for k, v in self._student_state().items()}
        if self.opts.retrain:  # re-trained = the FedAvg head until the server's first step
            out[HEAD_W] = out[PREFIX + "head.weight"].copy()
            out[HEAD_B] = out[PREFIX + "head.bias"].copy()
        return out

    def _load(self, params: Params) -> None:
        with torch.no_grad():
            for name, tensor in self._student_state().items():
                tensor.copy_(_tensor(params[name], tensor.device))

    def _generator(
        self, options: FitOptions, salt: int
    ) -> tuple[torch.Generator, np.random.Generator]:
        seq = np.random.SeedSequence([*options.rng_seed, salt])
        gen = torch.Generator().manual_seed(int(seq.generate_state(1)[0]))
        return gen, np.random.default_rng(seq)

    def fit(
        self, global_params: Params, private: Params, shard: Shard, options: FitOptions
    ) -> FitOutput:
        self._load(global_params)
        images, labels = shard.images, shard.labels
        extras = self.class_gradients(global_params, images, labels, options)
        student, opts = self.student, self.opts
        student.train()
        gen, _ = self._generator(options, 1)
        teacher = self._teacher_source(shard) if opts.kd_alpha > 0 else None

        def step(rows: np.ndarray) -> tuple[torch.Tensor, int]:
            _, logits = student(student.pixels(images[rows], gen))
            y = torch.as_tensor(labels[rows], device=logits.device)
            loss = F.cross_entropy(logits, y)
            if teacher is not None:
                t = _tensor(teacher(rows), logits.device)
                loss = loss + opts.kd_alpha * kd_loss(logits, t, opts.kd_temperature)
            return loss, int((logits.argmax(1) == y).sum())

        params = {PREFIX + k: p for k, p in student.named_parameters()}
        metrics = local_sgd(params, step, len(shard), options, global_params.keys())
        student.eval()
        state = {k: v.detach().cpu().numpy().copy() for k, v in self._student_state().items()}
        return FitOutput(
            params={k: state[k] for k in options.upload_keys or state if k in state},
            num_examples=len(shard),
            metrics=metrics,
            extras=extras,
        )

    @torch.no_grad()
    def class_gradients(
        self, global_params: Params, images: np.ndarray, labels: np.ndarray, options: FitOptions
    ) -> Params:
        """Per local class: the mean over ``grad_repeats`` batches of the CE gradient w.r.t. the
        re-trained classifier, on features of the received backbone (augmented samples)."""
        if not self.opts.retrain:
            return {}
        self.student.eval()
        weight, bias = (_tensor(global_params[k], self.device) for k in (HEAD_W, HEAD_B))
        gen, rng = self._generator(options, 2)
        out: Params = {}
        reps = self.opts.grad_repeats
        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)
            size = min(len(rows), self.opts.grad_batch_size)
            # the repeats' samples (each without replacement) in one forward pass (eval mode:
            # a sample's features do not depend on its batch)
            picks = np.concatenate(
                [np.sort(rng.choice(rows, size=size, replace=False)) for _ in range(reps)]
            )
            feats = self.student.backbone(self.student.pixels(images[picks], gen))
            y = torch.full((reps, size), int(c), device=self.device)
            gw, gb = classifier_grad(feats.view(reps, size, -1), y, weight, bias)
            total = torch.cat([gw, gb[..., None]], dim=-1).mean(0)  # (C, D + 1)
            out[f"{GRAD}{int(c)}"] = total.cpu().numpy()
        return out

    def input_cache(self) -> InputCache | None:
        """The teacher's logits ``scale * cos(image, text)``, once per shard, beside the pixels."""
        if self.teacher is None:
            return None
        identity = {
            "teacher": self.teacher.identity(),
            "template": self.cfg.method.options.template,
            "classes": list(self.classes),
            "output": f"logits*{self.teacher_scale!r}",
        }
        return InputCache(identity, self._teacher_logits, replaces_inputs=False)

    def _teacher_source(self, shard: Any) -> Callable[[np.ndarray], np.ndarray]:
        """Teacher logits by rows: from the shard's cache, or (``data.feature_cache=false``)
        computed from the pixels on every call, as research code without a cache does."""
        cached = getattr(shard, "cached", None)
        if cached is not None:
            return lambda rows: cached[rows]
        return lambda rows: self._teacher_logits(shard.images[rows])

    def _teacher_logits(self, images: np.ndarray) -> np.ndarray:
        assert self.teacher is not None and self.text is not None
        feats = self.teacher.image_embeddings(self.teacher.preprocess(images))
        return (self.teacher_scale * feats @ self.text.t()).float().cpu().numpy()

    @torch.no_grad()
    def _features(self, images: np.ndarray) -> np.ndarray:
        self.student.eval()
        parts = [
            self.student.backbone(self.student.pixels(images[s : s + EVAL_BATCH])).cpu().numpy()
            for s in range(0, len(images), EVAL_BATCH)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)

    def evaluate_rows(
        self, global_params: Params, private: Params, shard: Any, start: int, stop: int
    ) -> dict[str, Any]:
        self._load(global_params)
        labels = shard.labels[start:stop]
        feats = self._features(shard.images[start:stop])

        def linear(w: str, b: str) -> Callable[[np.ndarray], torch.Tensor]:
            weight, bias = (
                _tensor(global_params[w], self.device),
                _tensor(global_params[b], self.device),
            )
            return lambda f: _tensor(f, self.device) @ weight.t() + bias

        head = (
            (HEAD_W, HEAD_B)
            if self.opts.retrain
            else (PREFIX + "head.weight", PREFIX + "head.bias")
        )
        out = batched_eval(linear(*head), feats, labels)
        if self.opts.retrain:
            fedavg = batched_eval(
                linear(PREFIX + "head.weight", PREFIX + "head.bias"), feats, labels
            )
            out["correct_fedavg_head"] = fedavg["correct"]
        cached = getattr(shard, "cached", None)
        if cached is not None:
            teacher = np.asarray(cached[start:stop]).argmax(1) if stop > start else np.zeros(0)
            out["correct_teacher"] = float((teacher == labels).sum())
        return out


class CReFF(CLIP2FL):
    name = "creff"
    summary = "ResNet-8 clients; federated features + re-trained classifier (no CLIP)"
    Options = CReFFOptions


class StudentFedAvg(CLIP2FL):
    name = "student"
    summary = "the CLIP2FL / CReFF client model alone (FedAvg, or FedProx by strategy)"
    Options = StudentOptions
