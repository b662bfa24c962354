"""PE-RSITR (arXiv 2308.12509): federated remote-sensing image-text retrieval with the
MRS-Adapter and the HMMC loss (METHODS.md section 2; ``models/adapter.py`` has the parts).

Clients hold image-caption shards (5 captions per image). Each local step takes a batch of
images with one of each image's captions, drawn at random, and minimises
``L_cm + lambda (L_v + L_t)``; only the adapter (161,088 numbers at ViT-B/32) trains and travels,
and the server averages it (FedAvg by examples). Evaluation gathers every image and caption
embedding of a test split from the actors' chunks and reports R@1/5/10 both ways and mR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from fedrs.methods.base import FitOptions, FitOutput, Method, Params, check, local_sgd, to_numpy
from fedrs.models.adapter import (
    ADAPTER_DROPOUT,
    BOTTLENECK,
    AdaptedCLIP,
    MRSAdapter,
    hmmc_loss,
)
from fedrs.models.backbone import load_backbone
from fedrs.orchestrator.metrics import recall_at_k

if TYPE_CHECKING:
    from fedrs.datasets.shards import Shard
    from fedrs.orchestrator.config import RunConfig

PREFIX = "adapter."
EVAL_BATCH = 128


@dataclass(frozen=True)
class PERSITROptions:
    lambda_views: float = 1.0  # HMMC's lambda on L_v + L_t [std]; 0: the L_cm-only ablation
    bottleneck: int = BOTTLENECK  # the adapter's hidden width [code: 64]
    adapter_dropout: float = ADAPTER_DROPOUT  # inside the adapter [code: 0.5]

    def __post_init__(self) -> None:
        check(self.lambda_views >= 0, f"method.lambda_views must be >= 0, got {self.lambda_views}")
        check(self.bottleneck >= 1, f"method.bottleneck must be >= 1, got {self.bottleneck}")
        check(0 <= self.adapter_dropout < 1, "method.adapter_dropout must be in [0, 1)")


def _adapter_for(cfg: RunConfig, text_width: int, vision_width: int) -> MRSAdapter:
    o = cfg.method
    check(
        o.bottleneck < min(text_width, vision_width),
        f"method.bottleneck={o.bottleneck} must be below the encoders' widths "
        f"({text_width}, {vision_width}) of {cfg.model.arch}",
    )
    return MRSAdapter(text_width, vision_width, o.bottleneck, o.adapter_dropout)


def caption_tokens(tokenizer: Any, captions: list[str], device: torch.device) -> torch.Tensor:
    return tokenizer(captions).to(device)


class PERSITR(Method):
    name = "pe_rsitr"
    headline = "mR"
    summary = "PE-RSITR: one MRS-Adapter shared by both encoders, HMMC loss, retrieval R@K"
    Options = PERSITROptions

    def __init__(self, cfg: RunConfig, classes: list[str], device: str = "cpu") -> None:
        super().__init__(cfg, classes, device)
        self.backbone = load_backbone(cfg.model.arch, cfg.model.pretrained, self.device)
        model = self.backbone.model
        adapter = _adapter_for(cfg, self.backbone.text_width, model.visual.ln_pre.weight.shape[0])
        self.model = AdaptedCLIP(model, adapter.to(self.device))  # the backbone stays as it is
        self.scale = float(model.logit_scale.exp().clamp(max=100))

    @classmethod
    def tensor_shapes(
        cls, cfg: RunConfig, model_cfg: dict[str, Any], num_classes: int
    ) -> dict[str, dict[str, tuple[int, ...]]]:
        adapter = _adapter_for(
            cfg, model_cfg["text_cfg"]["width"], model_cfg["vision_cfg"]["width"]
        )
        return {
            "global": {PREFIX + k: tuple(v.shape) for k, v in adapter.state_dict().items()},
            "private": {},
        }

    def _params(self) -> dict[str, nn.Parameter]:
        return {PREFIX + k: p for k, p in self.model.adapter.named_parameters()}

    def init_global(self, seed: int) -> Params:
        gen = torch.Generator().manual_seed(
            int(np.random.SeedSequence([seed, 7]).generate_state(1)[0])
        )
        self.model.adapter.reset_parameters(gen)
        return to_numpy(self._params())

    def _load(self, params: Params) -> dict[str, nn.Parameter]:
        named = self._params()
        with torch.no_grad():
            for key, value in params.items():
                named[key].copy_(torch.from_numpy(np.asarray(value)).to(self.device))
        return named

    def fit(
        self, global_params: Params, private: Params, shard: Shard, options: FitOptions
    ) -> FitOutput:
        params = self._load(global_params)
        captions = shard.captions
        if not captions:
            raise ValueError(f"{self.name} trains on image-caption shards; this one has none")
        lam = self.cfg.method.lambda_views
        pick = np.random.default_rng([*options.rng_seed, 1])  # which caption of each image
        sums: dict[str, float] = {}  # HMMC terms summed over the fit's batches

        def step(rows: np.ndarray) -> tuple[torch.Tensor, int]:
            texts = [captions[r][pick.integers(len(captions[r]))] for r in rows]
            pixels = self.backbone.preprocess(shard.images[rows])
            tokens = caption_tokens(self.backbone.tokenizer, texts, self.device)
            views = self.model.embeddings(pixels, tokens, views=lam > 0)
            loss, parts = hmmc_loss(*views[:2], *(views[2:] or (None, None)), self.scale, lam)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
            sums["batches"] = sums.get("batches", 0.0) + 1
            hits = int((views[0] @ views[1].t()).argmax(1).eq(torch.arange(len(rows))).sum())
            return loss, hits

        self.model.train()
        metrics = local_sgd(params, step, len(shard), options, global_params.keys())
        self.model.eval()
        return FitOutput(
            params=to_numpy(params),
            num_examples=len(shard),
            metrics={
                **metrics,
                **{k: v / sums["batches"] for k, v in sums.items() if k != "batches"},
            },
        )

    def evaluate_rows(
        self, global_params: Params, private: Params, shard: Any, start: int, stop: int
    ) -> dict[str, Any]:
        """The embeddings of images ``start:stop`` and of all their captions."""
        self._load(global_params)
        self.model.eval()
        captions = shard.captions[start:stop]
        texts = [c for caps in captions for c in caps]
        owner = np.repeat(np.arange(len(captions)), [len(c) for c in captions])
        images, words = [], []
        with torch.no_grad():
            for s in range(start, stop, EVAL_BATCH):
                pixels = self.backbone.preprocess(shard.images[s : min(s + EVAL_BATCH, stop)])
                images.append(nn.functional.normalize(self.model.encode_image(pixels), dim=-1))
            for s in range(0, len(texts), EVAL_BATCH):
                tokens = caption_tokens(
                    self.backbone.tokenizer, texts[s : s + EVAL_BATCH], self.device
                )
                words.append(nn.functional.normalize(self.model.encode_text(tokens), dim=-1))
        dim = self.backbone.embed_dim
        return {
            "image_emb": torch.cat(images).cpu().numpy() if images else np.zeros((0, dim), "f4"),
            "text_emb": torch.cat(words).cpu().numpy() if words else np.zeros((0, dim), "f4"),
            "caption_image": owner.astype(np.int64),
        }

    @classmethod
    def reduce_eval(cls, partials: list[dict[str, Any]]) -> dict[str, float | None]:
        """R@K and mR over the gathered embeddings (chunks in order: image indices shift)."""
        offsets = np.cumsum([0] + [len(p["image_emb"]) for p in partials])
        images = [p["image_emb"] for p in partials]
        texts = [p["text_emb"] for p in partials]
        owner = [p["caption_image"] + off for p, off in zip(partials, offsets, strict=False)]
        if not partials or offsets[-1] == 0:
            return {"mR": None}
        sim = np.concatenate(images) @ np.concatenate(texts).T
        return {**recall_at_k(sim, np.concatenate(owner)), "n_images": int(offsets[-1])}
