"""PromptFL (Guo et al., 2023): federated CoOp. One learnable text context shared by all
clients; the frozen CLIP never moves; the server averages the context (FedAvg by examples)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from fedrs.methods.base import (
    ClipMethod,
    FitOptions,
    FitOutput,
    Params,
    batched_eval,
    check,
    cross_entropy_step,
    local_sgd,
)
from fedrs.models.backbone import load_backbone
from fedrs.models.prompt import PromptedCLIP, PromptLearner

if TYPE_CHECKING:
    from fedrs.core.config import RunConfig
    from fedrs.datasets.shards import Shard

CTX = "prompt.ctx"


@dataclass(frozen=True)
class PromptOptions:
    n_ctx: int = 4  # learnable context vectors of the text prompt

    def __post_init__(self) -> None:
        check(self.n_ctx >= 1, f"method.n_ctx must be >= 1, got {self.n_ctx}")


class PromptFL(ClipMethod):
    name = "promptfl"
    summary = "one shared CoOp text context, trained by every client and averaged"
    Options = PromptOptions
    frozen_image_encoder = True
    global_keys = (CTX,)
    prompt_keys = (CTX,)

    def __init__(self, cfg: RunConfig, classes: list[str], device: str = "cpu") -> None:
        super().__init__(cfg, classes, device)
        self.backbone = load_backbone(cfg.model.arch, cfg.model.pretrained, self.device)
        self.model = PromptedCLIP(
            self.backbone, PromptLearner(self.backbone, classes, n_ctx=cfg.method.options.n_ctx)
        )

    @classmethod
    def tensor_shapes(
        cls, cfg: RunConfig, model_cfg: dict[str, Any], num_classes: int
    ) -> dict[str, dict[str, tuple[int, ...]]]:
        return {
            "global": {CTX: (cfg.method.options.n_ctx, model_cfg["text_cfg"]["width"])},
            "private": {},
        }

    def init_global(self, seed: int) -> Params:
        gen = torch.Generator().manual_seed(seed)
        ctx = torch.empty_like(self.model.prompt_learner.ctx, device="cpu").normal_(
            0, 0.02, generator=gen
        )
        return {CTX: ctx.numpy()}

    def _load(self, params: Params) -> nn.Parameter:
        ctx = self.model.prompt_learner.ctx
        with torch.no_grad():
            ctx.copy_(torch.from_numpy(np.array(params[CTX])).to(self.device))
        return ctx

    def fit(
        self, global_params: Params, private: Params, shard: Shard, options: FitOptions
    ) -> FitOutput:
        ctx = self._load(global_params)
        model = self.model
        step = cross_entropy_step(
            lambda x: model.logits(self.image_features(x)), shard.inputs, shard.labels
        )
        metrics = local_sgd({CTX: ctx}, step, len(shard), options, global_params.keys())
        return FitOutput(
            params={CTX: ctx.detach().cpu().numpy().copy()},
            num_examples=len(shard),
            metrics=metrics,
        )

    def evaluate(
        self, global_params: Params, private: Params, images: np.ndarray, labels: np.ndarray
    ) -> dict[str, float]:
        self._load(global_params)
        with torch.no_grad():
            text = self.model.text_features()
        scale = self.model.logit_scale
        return batched_eval(
            lambda x: scale * self.image_features(x) @ text.t(),
            images,
            labels,
        )
