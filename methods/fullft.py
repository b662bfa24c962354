"""Full-model FedAvg fine-tuning: every CLIP weight trains and travels (the costly baseline).

Logits are ``s * cos(f(x), g(template(c)))`` with both encoders trainable (zero-shot CLIP's
classifier, fine-tuned end to end); the server averages every tensor (FedAvg / FedProx). The
bytes each client sends are the whole model's, counted as such.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from fedrs.methods.base import (
    ClipMethod,
    FitOptions,
    FitOutput,
    Params,
    TemplateOptions,
    batched_eval,
    cross_entropy_step,
    local_sgd,
)
from fedrs.models.backbone import load_backbone
from fedrs.models.prompt import class_prompts

if TYPE_CHECKING:
    from fedrs.core.config import RunConfig
    from fedrs.datasets.shards import Shard


class FullFedAvg(ClipMethod):
    name = "fullft"
    summary = "full fine-tuning of every CLIP weight, the whole model averaged"
    Options = TemplateOptions

    def __init__(self, cfg: RunConfig, classes: list[str], device: str = "cpu") -> None:
        super().__init__(cfg, classes, device)
        self.backbone = load_backbone(cfg.model.arch, cfg.model.pretrained, self.device)
        self.model = copy.deepcopy(self.backbone.model)  # this one trains
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.tokens = class_prompts(self.backbone, classes, cfg.method.options.template).to(
            self.device
        )

    @classmethod
    def tensor_shapes(
        cls, cfg: RunConfig, model_cfg: dict[str, Any], num_classes: int
    ) -> dict[str, dict[str, tuple[int, ...]]]:
        import open_clip

        from fedrs.models.backbone import register_configs

        register_configs()
        meta = open_clip.create_model(cfg.model.arch, device="meta")  # shapes only, no memory
        return {"global": {n: tuple(p.shape) for n, p in meta.named_parameters()}, "private": {}}

    def init_global(self, seed: int) -> Params:
        return {n: p.detach().cpu().numpy().copy() for n, p in self.model.named_parameters()}

    def _load(self, params: Params) -> dict[str, nn.Parameter]:
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in params.items():
                named[name].copy_(torch.from_numpy(np.array(value)).to(self.device))
        return named

    def _logits(self, images: np.ndarray) -> torch.Tensor:
        img = nn.functional.normalize(
            self.model.encode_image(self.backbone.preprocess(images)), dim=-1
        )
        txt = nn.functional.normalize(self.model.encode_text(self.tokens), dim=-1)
        return self.model.logit_scale.exp().clamp(max=100) * img @ txt.t()

    def fit(
        self, global_params: Params, private: Params, shard: Shard, options: FitOptions
    ) -> FitOutput:
        params = self._load(global_params)
        images, labels = shard.images, shard.labels
        self.model.train()

        step = cross_entropy_step(self._logits, images, labels)
        metrics = local_sgd(params, step, len(shard), options, global_params.keys())
        self.model.eval()
        return FitOutput(
            params={n: p.detach().cpu().numpy().copy() for n, p in params.items()},
            num_examples=len(shard),
            metrics=metrics,
        )

    def evaluate(
        self, global_params: Params, private: Params, images: np.ndarray, labels: np.ndarray
    ) -> dict[str, float]:
        self._load(global_params)
        self.model.eval()
        return batched_eval(self._logits, images, labels)
