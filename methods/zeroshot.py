"""Zero-shot CLIP: hand-written prompts ("a satellite photo of a {}."), nothing trains."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fedrs.methods.base import (
    ClipMethod,
    FitOptions,
    FitOutput,
    Params,
    TemplateOptions,
    batched_eval,
)
from fedrs.models.backbone import load_backbone
from fedrs.models.prompt import zero_shot_text_features

if TYPE_CHECKING:
    from fedrs.core.config import RunConfig
    from fedrs.datasets.shards import Shard


class ZeroShot(ClipMethod):
    name = "zeroshot"
    summary = "zero-shot CLIP with a text template; nothing trains, evaluated once"
    Options = TemplateOptions
    trains = False
    frozen_image_encoder = True

    def __init__(self, cfg: RunConfig, classes: list[str], device: str = "cpu") -> None:
        super().__init__(cfg, classes, device)
        self.backbone = load_backbone(cfg.model.arch, cfg.model.pretrained, self.device)
        self.text = zero_shot_text_features(self.backbone, classes, cfg.method.options.template)
        self.scale = float(self.backbone.model.logit_scale.exp())

    @classmethod
    def tensor_shapes(
        cls, cfg: RunConfig, model_cfg: dict[str, Any], num_classes: int
    ) -> dict[str, dict[str, tuple[int, ...]]]:
        return {"global": {}, "private": {}}

    def init_global(self, seed: int) -> Params:
        return {}

    def fit(
        self, global_params: Params, private: Params, shard: Shard, options: FitOptions
    ) -> FitOutput:
        return FitOutput(params={}, num_examples=len(shard))

    def evaluate(
        self, global_params: Params, private: Params, images: np.ndarray, labels: np.ndarray
    ) -> dict[str, float]:
        return batched_eval(
            lambda x: self.scale * self.image_features(x) @ self.text.t(), images, labels
        )
