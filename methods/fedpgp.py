"""FedPGP (Cui et al., ICML 2024, "Harmonizing Generalization and Personalization in Federated
Prompt Learning"): a shared CoOp context personalised by a private low-rank term, with a
prompt-wise contrastive loss that keeps the shared context close to CLIP's hand-written prompts.

* shared context P_G (``n_ctx x width``): the only tensor sent; averaged by the server;
* client k's context P_k = P_G + U_k V_k, with U_k (``n_ctx x rank``, zero at the start, so
  P_k = P_G) and V_k (``rank x width``, N(0, 0.02^2)) private;
* loss: CE(s * cos(f(x), g(P_k, c))) + mu * L_con, where for every class c, with
  a = g(P_G, c), positive g_0(c) (the frozen CLIP's hand-written prompt ``method.template``) and
  negative g(P_k, c):
  L_con = mean_c -log( e^{cos(a, g_0) / tau} / (e^{cos(a, g_0) / tau} + e^{cos(a, g(P_k)) / tau}) ):
  knowledge guidance for the shared context, and room for the personal one;
* evaluation: the global split with P_G alone; a client's split with P_k.

METHODS.md gives FedPGP's common defaults (n_ctx 4, SGD lr 0.001, batch 32, Dirichlet 0.3);
``rank`` 8, ``mu`` 1 and ``tau`` 0.5 are this module's choices, to be swept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

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
    local_sgd,
)
from fedrs.methods.fedrsclip import FedRSCLIP
from fedrs.models.backbone import load_backbone
from fedrs.models.prompt import PromptedCLIP, PromptLearner, zero_shot_text_features

if TYPE_CHECKING:
    from fedrs.core.config import RunConfig
    from fedrs.datasets.shards import Shard

SHARED = "prompt.ctx"
U, V = "prompt.lowrank_u", "prompt.lowrank_v"


@dataclass(frozen=True)
class FedPGPOptions:
    n_ctx: int = 4
    rank: int = 8  # of the private term U V
    mu: float = 1.0  # weight of the prompt-wise contrastive loss
    tau: float = 0.5  # its temperature
    template: str = "a satellite photo of a {}."  # CLIP's hand-written prompt (the positive)

    def __post_init__(self) -> None:
        check(self.n_ctx >= 1, f"method.n_ctx must be >= 1, got {self.n_ctx}")
        check(self.rank >= 1, f"method.rank must be >= 1, got {self.rank}")
        check(self.mu >= 0, f"method.mu must be >= 0, got {self.mu}")
        check(self.tau > 0, f"method.tau must be > 0, got {self.tau}")
        check("{}" in self.template, "method.template must contain '{}' for the class name")


def prompt_contrastive(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, tau: float
) -> torch.Tensor:
    """Mean over classes of -log softmax([cos(a, p), cos(a, n)] / tau)[0]; rows L2-normalised."""
    pos = (anchor * positive).sum(-1) / tau
    neg = (anchor * negative).sum(-1) / tau
    return -(pos - torch.logsumexp(torch.stack([pos, neg]), dim=0)).mean()


class FedPGP(ClipMethod):
    name = "fedpgp"
    summary = "FedPGP: shared context + private low-rank term, contrastive guidance to CLIP"
    Options = FedPGPOptions
    run_defaults: ClassVar[dict[str, Any]] = FedRSCLIP.run_defaults  # the same study
    frozen_image_encoder = True
    global_keys = (SHARED,)
    prompt_keys = (SHARED,)

    def __init__(self, cfg: RunConfig, classes: list[str], device: str = "cpu") -> None:
        super().__init__(cfg, classes, device)
        m = cfg.method.options
        self.backbone = load_backbone(cfg.model.arch, cfg.model.pretrained, self.device)
        self.model = PromptedCLIP(self.backbone, PromptLearner(self.backbone, classes, m.n_ctx))
        self.hand = zero_shot_text_features(self.backbone, classes, m.template)

    @classmethod
    def tensor_shapes(
        cls, cfg: RunConfig, model_cfg: dict[str, Any], num_classes: int
    ) -> dict[str, dict[str, tuple[int, ...]]]:
        m, width = cfg.method.options, model_cfg["text_cfg"]["width"]
        return {
            "global": {SHARED: (m.n_ctx, width)},
            "private": {U: (m.n_ctx, m.rank), V: (m.rank, width)},
        }

    def _shapes(self) -> dict[str, dict[str, tuple[int, ...]]]:
        from fedrs.models.backbone import model_config

        return self.tensor_shapes(self.cfg, model_config(self.cfg.model.arch), len(self.classes))

    def init_global(self, seed: int) -> Params:
        gen = torch.Generator().manual_seed(seed)
        shape = self._shapes()["global"][SHARED]
        return {SHARED: torch.empty(shape).normal_(0.0, 0.02, generator=gen).numpy()}

    def init_private(self, client_id: int, seed: int) -> Params:
        shapes = self._shapes()["private"]
        state = np.random.SeedSequence([seed, 2, client_id]).generate_state(1)[0]
        gen = torch.Generator().manual_seed(int(state))
        return {
            U: np.zeros(shapes[U], dtype=np.float32),
            V: torch.empty(shapes[V]).normal_(0.0, 0.02, generator=gen).numpy(),
        }

    def fit(
        self, global_params: Params, private: Params, shard: Shard, options: FitOptions
    ) -> FitOutput:
        m = self.cfg.method.options
        params = {
            SHARED: self.tensor(global_params[SHARED], True),
            U: self.tensor(private[U], True),
            V: self.tensor(private[V], True),
        }
        inputs, labels = shard.inputs, shard.labels
        scale = self.model.logit_scale

        def step(rows: np.ndarray) -> tuple[torch.Tensor, int]:
            shared = self.model.text_features(params[SHARED])
            personal = self.model.text_features(params[SHARED] + params[U] @ params[V])
            logits = scale * self.image_features(inputs[rows]) @ personal.t()
            y = torch.as_tensor(labels[rows], device=logits.device)
            loss = nn.functional.cross_entropy(logits, y)
            if m.mu:
                loss = loss + m.mu * prompt_contrastive(shared, self.hand, personal, m.tau)
            return loss, int((logits.argmax(1) == y).sum())

        metrics = local_sgd(params, step, len(shard), options, global_params.keys())
        arrays = {k: v.detach().cpu().numpy().copy() for k, v in params.items()}
        return FitOutput(
            params={SHARED: arrays.pop(SHARED)},
            num_examples=len(shard),
            metrics=metrics,
            private=arrays,
        )

    def evaluate(
        self, global_params: Params, private: Params, images: np.ndarray, labels: np.ndarray
    ) -> dict[str, float]:
        """P_G alone on the global split; P_G + U V with a client's private state."""
        with torch.no_grad():
            ctx = self.tensor(global_params[SHARED], False)
            if U in private:
                ctx = ctx + self.tensor(private[U], False) @ self.tensor(private[V], False)
            text = self.model.text_features(ctx)
        scale = self.model.logit_scale
        return batched_eval(lambda x: scale * self.image_features(x) @ text.t(), images, labels)
