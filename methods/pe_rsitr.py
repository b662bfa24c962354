"""PE-RSITR (arXiv 2308.12509): federated remote-sensing image-text retrieval with the
MRS-Adapter and the HMMC loss (METHODS.md section 2; ``models/adapter.py`` has the parts).

Clients hold image-caption shards (5 captions per image). Each local step takes a batch of
images with one of each image's captions, drawn at random, and minimises
``L_cm + lambda (L_v + L_t)``; only the adapter (161,088 numbers at ViT-B/32) trains and travels,
and the server averages it (FedAvg by examples). Evaluation gathers every image and caption
embedding of a test split from the actors' chunks and reports R@1/5/10 both ways and mR
(``methods/retrieval.py``, shared with the baselines).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from fedrs.methods.base import check
from fedrs.methods.retrieval import RetrievalMethod
from fedrs.models.adapter import ADAPTER_DROPOUT, BOTTLENECK, AdaptedCLIP, MRSAdapter

if TYPE_CHECKING:
    from fedrs.core.config import RunConfig


@dataclass(frozen=True)
class PERSITROptions:
    lambda_views: float = 1.0  # HMMC's lambda on L_v + L_t [std]; 0: the L_cm-only ablation
    # the adapter's hidden width [code: 64]; 0: 64, or half the narrower encoder's width when
    # that is below 128 (a small backbone), so that the default fits every architecture
    bottleneck: int = 0
    adapter_dropout: float = ADAPTER_DROPOUT  # inside the adapter [code: 0.5]

    def __post_init__(self) -> None:
        check(self.lambda_views >= 0, f"method.lambda_views must be >= 0, got {self.lambda_views}")
        check(self.bottleneck >= 0, f"method.bottleneck must be >= 0, got {self.bottleneck}")
        check(0 <= self.adapter_dropout < 1, "method.adapter_dropout must be in [0, 1)")


def _adapter_for(cfg: RunConfig, text_width: int, vision_width: int) -> MRSAdapter:
    o = cfg.method.options
    bottleneck = o.bottleneck or min(BOTTLENECK, min(text_width, vision_width) // 2)
    check(
        bottleneck < min(text_width, vision_width),
        f"method.bottleneck={bottleneck} must be below the encoders' widths "
        f"({text_width}, {vision_width}) of {cfg.model.arch}",
    )
    return MRSAdapter(text_width, vision_width, bottleneck, o.adapter_dropout)


class PERSITR(RetrievalMethod):
    name = "pe_rsitr"
    summary = "PE-RSITR: one MRS-Adapter shared by both encoders, HMMC loss, retrieval R@K"
    Options = PERSITROptions
    # the schedule of its retrieval table (`fedrs bench retrieval`): 5 rounds of all 10
    # clients x 2 local epochs, SGD lr 0.01
    run_defaults: ClassVar[dict[str, Any]] = {
        "federation.rounds": 5,
        "federation.clients_per_round": 10,
        "data.num_clients": 10,
        "client.local_epochs": 2,
        "client.lr": 0.01,
    }

    def build(self) -> AdaptedCLIP:
        vision_width = self.backbone.model.visual.ln_pre.weight.shape[0]
        adapter = _adapter_for(self.cfg, self.backbone.text_width, vision_width)
        return AdaptedCLIP(self.backbone.model, adapter)  # the backbone stays as it is

    @property
    def lambda_views(self) -> float:
        return self.cfg.method.options.lambda_views

    def reset(self, generator: torch.Generator) -> None:
        self.model.adapter.reset_parameters(generator)

    @classmethod
    def tensor_shapes(
        cls, cfg: RunConfig, model_cfg: dict[str, Any], num_classes: int
    ) -> dict[str, dict[str, tuple[int, ...]]]:
        adapter = _adapter_for(
            cfg, model_cfg["text_cfg"]["width"], model_cfg["vision_cfg"]["width"]
        )
        return {
            "global": {f"adapter.{k}": tuple(v.shape) for k, v in adapter.state_dict().items()},
            "private": {},
        }
