"""Zero-shot CLIP: hand-written prompts ("a satellite photo of a {}."), nothing trains."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from fedrs.methods.base import FitOptions, FitOutput, Method, Params, batched_eval
from fedrs.models.backbone import load_backbone
from fedrs.models.prompt import zero_shot_text_features

if TYPE_CHECKING:
    from fedrs.datasets.shards import Shard
    from fedrs.orchestrator.config import RunConfig


class ZeroShot(Method):
    name = "zeroshot"
    trains = False

    def __init__(self, cfg: RunConfig, classes: list[str], device: str = "cpu") -> None:
        super().__init__(cfg, classes, device)
        self.backbone = load_backbone(cfg.model.arch, cfg.model.pretrained, self.device)
        self.text = zero_shot_text_features(self.backbone, classes, cfg.method.template)
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
        model = self.backbone.model

        def logits(x: np.ndarray):
            feats = nn.functional.normalize(model.encode_image(self.backbone.preprocess(x)), dim=-1)
            return self.scale * feats @ self.text.t()

        return batched_eval(logits, images, labels)
