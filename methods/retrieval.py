"""What every image-text retrieval method shares: caption-shard training with a contrastive
loss, evaluation by gathered embeddings (R@1/5/10 both ways, mR), FedAvg of what trains.

A retrieval method says what trains on the frozen CLIP (``build``: an ``AdaptedCLIP`` with an
adapter, a text context, or a trainable copy of the model) and how the loss is weighted
(``lambda_views``: HMMC's augmented-view terms; 0 is the plain symmetric InfoNCE, L_cm). The
PE-RSITR module and the baselines of its paper's table (zero-shot, CoOp, full fine-tuning,
AdaptFormer) are each a small subclass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from fedrs.core.metrics import recall_at_k
from fedrs.datasets.defaults import CAPTIONS, SyntheticDefault
from fedrs.methods.base import ClipMethod, FitOptions, FitOutput, Params, local_sgd, to_numpy
from fedrs.models.adapter import AdaptedCLIP, hmmc_loss
from fedrs.models.backbone import load_backbone

if TYPE_CHECKING:
    from fedrs.core.config import RunConfig
    from fedrs.datasets.shards import Shard

EVAL_BATCH = 128


class RetrievalMethod(ClipMethod):
    """Base of the retrieval methods: subclasses define ``build`` and ``tensor_shapes``."""

    headline = "mR"
    needs: ClassVar[frozenset[str]] = frozenset({"captions"})
    synthetic_data: ClassVar[SyntheticDefault] = CAPTIONS
    prefix: ClassVar[str] = ""  # the names of the trained tensors start with this

    def __init__(self, cfg: RunConfig, classes: list[str], device: str = "cpu") -> None:
        super().__init__(cfg, classes, device)
        self.backbone = load_backbone(cfg.model.arch, cfg.model.pretrained, self.device)
        self.model = self.build().to(self.device)
        self.scale = float(self.backbone.model.logit_scale.exp().clamp(max=100))

    def build(self) -> AdaptedCLIP:
        """The frozen backbone with what this method trains (never the backbone itself)."""
        return AdaptedCLIP(self.backbone.model, None)

    @property
    def lambda_views(self) -> float:
        return 0.0

    def trainable(self) -> dict[str, nn.Parameter]:
        return {self.prefix + k: p for k, p in self.model.named_parameters() if p.requires_grad}

    def reset(self, generator: torch.Generator) -> None:
        """Initialise what trains (from ``generator``)."""

    def init_global(self, seed: int) -> Params:
        gen = torch.Generator().manual_seed(
            int(np.random.SeedSequence([seed, 7]).generate_state(1)[0])
        )
        self.reset(gen)
        return to_numpy(self.trainable())

    def _load(self, params: Params) -> dict[str, nn.Parameter]:
        named = self.trainable()
        with torch.no_grad():
            for key, value in params.items():
                named[key].copy_(torch.from_numpy(np.array(value)).to(self.device))
        return named

    def fit(
        self, global_params: Params, private: Params, shard: Shard, options: FitOptions
    ) -> FitOutput:
        params = self._load(global_params)
        captions = shard.captions
        if not captions:
            raise ValueError(f"{self.name} trains on image-caption shards; this one has none")
        lam = self.lambda_views
        pick = np.random.default_rng([*options.rng_seed, 1])  # which caption of each image
        sums: dict[str, float] = {}  # loss terms summed over the fit's batches

        def step(rows: np.ndarray) -> tuple[torch.Tensor, int]:
            texts = [captions[r][pick.integers(len(captions[r]))] for r in rows]
            pixels = self.backbone.preprocess(shard.images[rows])
            tokens = self.backbone.tokenizer(texts).to(self.device)
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
        terms = {k: v / sums["batches"] for k, v in sums.items() if k != "batches"}
        return FitOutput(params=to_numpy(params), num_examples=len(shard), metrics=metrics | terms)

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
                tokens = self.backbone.tokenizer(texts[s : s + EVAL_BATCH]).to(self.device)
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
        if not partials or offsets[-1] == 0:
            return {"mR": None}
        owner = [p["caption_image"] + off for p, off in zip(partials, offsets, strict=False)]
        sim = (
            np.concatenate([p["image_emb"] for p in partials])
            @ np.concatenate([p["text_emb"] for p in partials]).T
        )
        return {**recall_at_k(sim, np.concatenate(owner)), "n_images": int(offsets[-1])}
