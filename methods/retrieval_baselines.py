"""The retrieval baselines of PE-RSITR's table, on the same data, backbone and loop
(``methods/retrieval.py``); each trains with the plain symmetric InfoNCE (L_cm) and is averaged
by FedAvg:

* ``retrieval_zeroshot``: the frozen CLIP, nothing trains;
* ``retrieval_coop``: CoOp on the text side, ``n_ctx`` learnable context vectors after the
  start token of every caption;
* ``retrieval_fullft``: every CLIP weight of both encoders (the whole model travels);
* ``retrieval_adaptformer``: AdaptFormer, one bottleneck adapter per block and per modality
  (nothing shared across blocks or modalities), parallel to the MLP, scaled by ``scale``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedrs.methods.base import FitOptions, FitOutput, Params, check
from fedrs.methods.retrieval import RetrievalMethod
from fedrs.models.adapter import BOTTLENECK, AdaptedCLIP, BlockAdapters

if TYPE_CHECKING:
    from fedrs.core.config import RunConfig
    from fedrs.datasets.shards import Shard

Shapes = dict[str, dict[str, tuple[int, ...]]]


class RetrievalZeroShot(RetrievalMethod):
    name = "retrieval_zeroshot"
    summary = "zero-shot CLIP image-text retrieval; nothing trains, evaluated once"
    trains = False

    @classmethod
    def tensor_shapes(cls, cfg: RunConfig, model_cfg: dict[str, Any], num_classes: int) -> Shapes:
        return {"global": {}, "private": {}}

    def fit(
        self, global_params: Params, private: Params, shard: Shard, options: FitOptions
    ) -> FitOutput:
        return FitOutput(params={}, num_examples=len(shard))


@dataclass(frozen=True)
class CoOpOptions:
    n_ctx: int = 4  # learnable context vectors after each caption's start token

    def __post_init__(self) -> None:
        check(self.n_ctx >= 1, f"method.n_ctx must be >= 1, got {self.n_ctx}")


class RetrievalCoOp(RetrievalMethod):
    name = "retrieval_coop"
    summary = "CoOp for retrieval: a learnable text context before every caption"
    Options = CoOpOptions

    def build(self) -> AdaptedCLIP:
        ctx = nn.Parameter(torch.zeros(self.cfg.method.options.n_ctx, self.backbone.text_width))
        return AdaptedCLIP(self.backbone.model, None, text_context=ctx)

    def reset(self, generator: torch.Generator) -> None:
        with torch.no_grad():
            ctx = self.model.text_context
            ctx.copy_(torch.empty(ctx.shape).normal_(0.0, 0.02, generator=generator))

    @classmethod
    def tensor_shapes(cls, cfg: RunConfig, model_cfg: dict[str, Any], num_classes: int) -> Shapes:
        width = model_cfg["text_cfg"]["width"]
        return {"global": {"text_context": (cfg.method.options.n_ctx, width)}, "private": {}}


class RetrievalFullFT(RetrievalMethod):
    name = "retrieval_fullft"
    summary = "full fine-tuning of both CLIP encoders for retrieval; the whole model travels"

    def build(self) -> AdaptedCLIP:
        model = copy.deepcopy(self.backbone.model)  # the resident backbone stays frozen
        return AdaptedCLIP(model.requires_grad_(True), None)

    def reset(self, generator: torch.Generator) -> None:
        self.model.model.load_state_dict(self.backbone.model.state_dict())

    @classmethod
    def tensor_shapes(cls, cfg: RunConfig, model_cfg: dict[str, Any], num_classes: int) -> Shapes:
        import open_clip

        from fedrs.models.backbone import register_configs

        register_configs()
        meta = open_clip.create_model(cfg.model.arch, device="meta")  # shapes only
        named = {f"model.{n}": tuple(p.shape) for n, p in meta.named_parameters()}
        return {"global": named, "private": {}}


@dataclass(frozen=True)
class AdaptFormerOptions:
    bottleneck: int = BOTTLENECK  # hidden width of every block's adapter
    scale: float = 0.1  # AdaptFormer's s on the adapter branch

    def __post_init__(self) -> None:
        check(self.bottleneck >= 1, f"method.bottleneck must be >= 1, got {self.bottleneck}")
        check(self.scale > 0, f"method.scale must be > 0, got {self.scale}")


class RetrievalAdaptFormer(RetrievalMethod):
    name = "retrieval_adaptformer"
    summary = "AdaptFormer for retrieval: one adapter per block and modality, nothing shared"
    Options = AdaptFormerOptions

    @staticmethod
    def _adapters(cfg: RunConfig, model_cfg: dict[str, Any]) -> BlockAdapters:
        t, v = model_cfg["text_cfg"], model_cfg["vision_cfg"]
        o = cfg.method.options
        return BlockAdapters(
            t["width"], v["width"], t["layers"], v["layers"], o.bottleneck, o.scale
        )

    def build(self) -> AdaptedCLIP:
        from fedrs.models.backbone import model_config

        return AdaptedCLIP(
            self.backbone.model, self._adapters(self.cfg, model_config(self.cfg.model.arch))
        )

    def reset(self, generator: torch.Generator) -> None:
        self.model.adapter.reset_parameters(generator)

    @classmethod
    def tensor_shapes(cls, cfg: RunConfig, model_cfg: dict[str, Any], num_classes: int) -> Shapes:
        state = cls._adapters(cfg, model_cfg).state_dict()
        return {"global": {f"adapter.{k}": tuple(v.shape) for k, v in state.items()}, "private": {}}
