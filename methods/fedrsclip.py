"""FedRSCLIP (arXiv 2501.02461): dual shared / private prompts on a frozen CLIP.

Implemented as ../shared/METHODS.md section 1 gives the standard reading of the paper:

* shared text context P_s (``n_ctx x text width``; 4 x 512 = 2,048 numbers for ViT-B/16 and
  ViT-B/32): prompt ``[SOS] P_s {class}. [EOS]``; the only tensor a client sends;
* per client k, a private text context P_p^k and private VPT-shallow visual prompt tokens V^k
  (``n_vis x vision width``, inserted after ``ln_pre``); they never leave the client (the
  client-state store keeps them between rounds);
* z_s = s * cos(f(x; V^k), g(P_s, c)), z_p likewise with P_p^k; prediction (z_s + z_p) / 2;
* L = CE(z_s) + CE(z_p) + l1 * L_DPA + l2 * L_CMFA with
  L_DPA = mean_c [1 - cos(g(P_s, c), g(P_p^k, c))] (Dual Prompt Alignment) and
  L_CMFA = symmetric InfoNCE between f(x_i; V^k) and g(P_s, y_i) over a batch (Cross-Modal
  Feature Alignment; the shared prompt's class features are the text side). Read literally
  the batch's diagonal is the only positive, so two images of one class in a batch are pushed
  apart from each other's (identical) class feature; ``method.cmfa_positives="class"`` is the
  reading that counts every same-class pair as a positive (our option, not the paper's);
* server: prompt averaging of P_s, P_s <- sum_k (n_k / n) P_s^k (strategy ``prompt_avg``).

Ablations by config: ``method.lambda_dpa=0``, ``method.lambda_cmfa=0``,
``method.private_prompts=false`` (no private context, no visual prompts: shared prompt + CMFA),
``method.visual_prompts=false`` (private text context kept, no visual prompts),
``method.dpa_stop_shared=true`` (DPA's gradient stopped on the shared side: it pulls only the
private prompt toward the shared one, never the one tensor that is sent).

``method.share_visual_mean=true`` (for evaluation): clients also send their visual prompts V^k
(an extra payload, counted in ``bytes_up``); the server keeps their example-weighted mean of the
round (``prompt.visual_mean``, sent down, never uploaded as a model tensor) and the global split
is evaluated both with the shared prompt alone (``accuracy``) and with it plus the mean visual
prompts (``accuracy_visual_mean``): the shared prompt is trained only against visually
prompted image features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from fedrs.methods.base import (
    ClipMethod,
    FitOptions,
    FitOutput,
    MethodServer,
    Params,
    batched_eval,
    check,
    local_sgd,
)
from fedrs.models.backbone import load_backbone
from fedrs.models.prompt import (
    PromptLearner,
    TextEncoder,
    class_masked_info_nce,
    encode_image_prompted,
    symmetric_info_nce,
)

if TYPE_CHECKING:
    from fedrs.core.config import RunConfig
    from fedrs.core.strategies import ClientUpdate
    from fedrs.datasets.shards import Shard

SHARED = "prompt.shared_ctx"
PRIVATE = "prompt.private_ctx"
VISUAL = "prompt.visual"
VISUAL_MEAN = "prompt.visual_mean"  # server-written: the mean of the clients' visual prompts


def fedrsclip_loss(
    image: torch.Tensor,
    text_shared: torch.Tensor,
    text_private: torch.Tensor | None,
    labels: torch.Tensor,
    scale: float,
    lambda_dpa: float,
    lambda_cmfa: float,
    dpa_stop_shared: bool = False,
    cmfa_positives: str = "instance",
) -> dict[str, torch.Tensor]:
    """All loss terms from L2-normalised features.

    Args:
        image: ``(B, D)`` prompted image features f(x; V^k).
        text_shared / text_private: ``(C, D)`` class features g(P_s, c) / g(P_p^k, c)
            (``text_private=None`` when the client has no private prompts).
        labels: ``(B,)`` class indices.
        cmfa_positives: ``"instance"``: CMFA's positives are the diagonal (row i's own class
            feature), so same-class rows of a batch are negatives of each other; ``"class"``:
            every same-class pair is a positive (``class_masked_info_nce``).
    Returns ``{"loss", "ce_shared", "ce_private", "dpa", "cmfa", "logits"}``.
    """
    z_s = scale * image @ text_shared.t()
    ce_s = nn.functional.cross_entropy(z_s, labels)
    zero = z_s.new_zeros(())
    if text_private is not None:
        z_p = scale * image @ text_private.t()
        ce_p = nn.functional.cross_entropy(z_p, labels)
        anchor = text_shared.detach() if dpa_stop_shared else text_shared
        dpa = (1.0 - (anchor * text_private).sum(dim=-1)).mean()
        logits = 0.5 * (z_s + z_p)
    else:
        ce_p, dpa, logits = zero, zero, z_s
    if not lambda_cmfa:
        cmfa = zero
    elif cmfa_positives == "class":
        cmfa = class_masked_info_nce(image, text_shared[labels], labels, scale)
    else:
        cmfa = symmetric_info_nce(image, text_shared[labels], scale)
    loss = ce_s + ce_p + lambda_dpa * dpa + lambda_cmfa * cmfa
    return {
        "loss": loss,
        "ce_shared": ce_s,
        "ce_private": ce_p,
        "dpa": dpa,
        "cmfa": cmfa,
        "logits": logits,
    }


@dataclass(frozen=True)
class FedRSCLIPOptions:
    """METHODS.md section 1 (the paper plus the standard reading where it is silent)."""

    n_ctx: int = 4  # shared text context vectors (P_s, the only tensor sent)
    private_prompts: bool = True  # private text context + private visual prompts per client
    n_ctx_private: int = 4  # private text context vectors (P_p^k)
    n_vis: int = 4  # private VPT-shallow visual prompt tokens (V^k)
    lambda_dpa: float = 1.0  # l1: Dual Prompt Alignment
    lambda_cmfa: float = 0.5  # l2: Cross-Modal Feature Alignment
    visual_prompts: bool = True  # private visual prompt tokens (with private_prompts)
    dpa_stop_shared: bool = False  # DPA moves only the private prompt
    share_visual_mean: bool = False  # send V^k; evaluate the global split with their mean too
    cmfa_positives: str = "instance"  # CMFA's positives: instance (diagonal) | class (masked)

    def __post_init__(self) -> None:
        check(self.n_ctx >= 1, f"method.n_ctx must be >= 1, got {self.n_ctx}")
        check(self.n_ctx_private >= 1, "method.n_ctx_private must be >= 1")
        check(self.n_vis >= 1, f"method.n_vis must be >= 1, got {self.n_vis}")
        check(
            self.lambda_dpa >= 0 and self.lambda_cmfa >= 0,
            "method.lambda_dpa and method.lambda_cmfa must be >= 0",
        )
        check(
            self.cmfa_positives in ("instance", "class"),
            f"method.cmfa_positives must be instance or class, got {self.cmfa_positives!r}",
        )


def _normal(shape: tuple[int, ...], seed: list[int], std: float = 0.02) -> np.ndarray:
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
    return torch.empty(shape).normal_(0.0, std, generator=gen).numpy()


class FedRSCLIPServer(MethodServer):
    """With ``share_visual_mean``: the example-weighted mean of this round's visual prompts
    (the clients' extras) becomes ``prompt.visual_mean``; otherwise nothing."""

    def update(self, round: int, params: Params, updates: list[ClientUpdate]) -> Params:
        from fedrs.core.strategies.fedavg import weighted_average

        sent = sorted((u for u in updates if VISUAL in u.extras), key=lambda u: u.client_id)
        if VISUAL_MEAN not in params or not sent:
            return params
        mean = weighted_average([u.extras[VISUAL] for u in sent], [u.num_examples for u in sent])
        return {**params, VISUAL_MEAN: mean.astype(np.float32)}


class FedRSCLIP(ClipMethod):
    name = "fedrsclip"
    summary = "FedRSCLIP: shared + private text prompts, private visual prompts, DPA + CMFA"
    Options = FedRSCLIPOptions
    # the schedule of the FedRSCLIP study (benchmarks/sweeps/fedrsclip_study.toml): 20 rounds
    # of 5 of 10 clients x 2 local epochs, CoOp's SGD lr 0.002 (for a pretrained backbone)
    run_defaults: ClassVar[dict[str, Any]] = {
        "federation.rounds": 20,
        "federation.clients_per_round": 5,
        "data.num_clients": 10,
        "client.local_epochs": 2,
        "client.lr": 0.002,
    }
    global_keys = (SHARED,)
    prompt_keys = (SHARED,)
    download_only = (VISUAL_MEAN,)
    extra_keys = (VISUAL,)
    Server = FedRSCLIPServer

    def __init__(self, cfg: RunConfig, classes: list[str], device: str = "cpu") -> None:
        super().__init__(cfg, classes, device)
        m = cfg.method.options
        self.backbone = load_backbone(cfg.model.arch, cfg.model.pretrained, self.device)
        self.text_encoder = TextEncoder(self.backbone)
        self.shared = PromptLearner(self.backbone, classes, n_ctx=m.n_ctx)
        self.private = (
            PromptLearner(self.backbone, classes, n_ctx=m.n_ctx_private)
            if m.private_prompts
            else None
        )
        self.scale = float(self.backbone.model.logit_scale.exp())

    @classmethod
    def tensor_shapes(
        cls, cfg: RunConfig, model_cfg: dict[str, Any], num_classes: int
    ) -> dict[str, dict[str, tuple[int, ...]]]:
        text_w, vis_w = model_cfg["text_cfg"]["width"], model_cfg["vision_cfg"]["width"]
        m = cfg.method.options
        visual = m.private_prompts and m.visual_prompts
        private = {PRIVATE: (m.n_ctx_private, text_w)} if m.private_prompts else {}
        if visual:
            private[VISUAL] = (m.n_vis, vis_w)
        glob = {SHARED: (m.n_ctx, text_w)}
        extras = {}
        if visual and m.share_visual_mean:
            glob[VISUAL_MEAN] = extras[VISUAL] = (m.n_vis, vis_w)
        return {"global": glob, "private": private, "extras": extras}

    @classmethod
    def sent_extras(cls, cfg: RunConfig) -> tuple[str, ...]:
        """V^k travels only with ``share_visual_mean`` (and private visual prompts)."""
        m = cfg.method.options
        return (VISUAL,) if m.private_prompts and m.visual_prompts and m.share_visual_mean else ()

    def _shapes(self) -> dict[str, dict[str, tuple[int, ...]]]:
        from fedrs.models.backbone import model_config

        return self.tensor_shapes(self.cfg, model_config(self.cfg.model.arch), len(self.classes))

    def init_global(self, seed: int) -> Params:
        shapes = self._shapes()["global"]
        out = {SHARED: _normal(shapes[SHARED], [seed, 0])}
        if VISUAL_MEAN in shapes:  # no client has reported yet: no visual prompt
            out[VISUAL_MEAN] = np.zeros(shapes[VISUAL_MEAN], dtype=np.float32)
        return out

    def init_private(self, client_id: int, seed: int) -> Params:
        return {
            k: _normal(s, [seed, 1, client_id, i])
            for i, (k, s) in enumerate(sorted(self._shapes()["private"].items()))
        }

    def _text(self, learner: PromptLearner, ctx: torch.Tensor) -> torch.Tensor:
        feats = self.text_encoder(learner(ctx), learner.eot_index)
        return nn.functional.normalize(feats, dim=-1)

    def _image(self, images: np.ndarray, visual: torch.Tensor | None) -> torch.Tensor:
        feats = encode_image_prompted(self.backbone, self.backbone.preprocess(images), visual)
        return nn.functional.normalize(feats, dim=-1)

    def fit(
        self, global_params: Params, private: Params, shard: Shard, options: FitOptions
    ) -> FitOutput:
        m = self.cfg.method.options
        params = {SHARED: self.tensor(global_params[SHARED], True)}
        if self.private is not None:
            params[PRIVATE] = self.tensor(private[PRIVATE], True)
        if VISUAL in private:
            params[VISUAL] = self.tensor(private[VISUAL], True)
        images, labels = shard.images, shard.labels

        def step(rows: np.ndarray) -> tuple[torch.Tensor, int]:
            y = torch.as_tensor(labels[rows], device=self.device)
            out = fedrsclip_loss(
                self._image(images[rows], params.get(VISUAL)),
                self._text(self.shared, params[SHARED]),
                self._text(self.private, params[PRIVATE]) if self.private is not None else None,
                y,
                self.scale,
                m.lambda_dpa,
                m.lambda_cmfa,
                m.dpa_stop_shared,
                m.cmfa_positives,
            )
            return out["loss"], int((out["logits"].argmax(1) == y).sum())

        metrics = local_sgd(params, step, len(shard), options, global_params.keys())
        arrays = {k: v.detach().cpu().numpy().copy() for k, v in params.items()}
        extras = {VISUAL: arrays[VISUAL].copy()} if m.share_visual_mean and VISUAL in arrays else {}
        return FitOutput(
            params={SHARED: arrays.pop(SHARED)},  # only the shared prompt leaves the client
            num_examples=len(shard),
            metrics=metrics,
            private=arrays,
            extras=extras,
        )

    def evaluate(
        self, global_params: Params, private: Params, images: np.ndarray, labels: np.ndarray
    ) -> dict[str, float]:
        """With a client's private prompts: (z_s + z_p) / 2; without (global test): z_s, and
        with ``share_visual_mean`` also z_s on features prompted by the clients' mean V."""
        with torch.no_grad():
            text_s = self._text(self.shared, self.tensor(global_params[SHARED], False))
            personal = bool(private) and self.private is not None
            text_p = (
                self._text(self.private, self.tensor(private[PRIVATE], False)) if personal else None
            )
            visual = self.tensor(private[VISUAL], False) if VISUAL in private else None

        def logits_with(visual: torch.Tensor | None) -> Callable[[np.ndarray], torch.Tensor]:
            def logits(x: np.ndarray) -> torch.Tensor:
                f = self._image(x, visual)
                z = self.scale * f @ text_s.t()
                return z if text_p is None else 0.5 * (z + self.scale * f @ text_p.t())

            return logits

        out = batched_eval(logits_with(visual), images, labels)
        if not personal and VISUAL_MEAN in global_params and global_params[VISUAL_MEAN].any():
            vmean = batched_eval(
                logits_with(self.tensor(global_params[VISUAL_MEAN], False)), images, labels
            )
            out |= {"correct_visual_mean": vmean["correct"], "loss_visual_mean": vmean["loss_sum"]}
        return out
