"""FedOTP (Li et al., CVPR 2024, "Global and Local Prompts Cooperation via Optimal Transport
for Federated Learning"): each client holds a global CoOp context, averaged by the server, and
a local one that never leaves it; an image is matched to a class by unbalanced optimal
transport between its patch features and the class's prompt features.

What the authors' public code does (read for facts, no code taken), and this module with it:

* contexts: global P_G and local P_L, each ``n_ctx x width``, N(0, 0.02^2), the same start on
  every client (their round 0 trains all clients from one initialisation); class token last;
* image side: the frozen encoder's patch tokens (CLS dropped) after ``ln_post`` and the
  projection, L2-normalised, M = (image_size / patch_size)^2 of them (frozen: cached per shard);
* text side: g(P, c) for P in (P_G, P_L), L2-normalised: N = 2 features per class;
* per image and class: similarity S = X T_c^T (``M x N``), cost 1 - S, kernel
  K = exp(-(1 - S) / eps); marginals a = 1/M per patch and b = gamma/N per prompt (``"cot"``,
  the default: ``u <- min(a / (K v), 1)``, ``v <- b / (K^T u)``, so a patch sends at most its
  mass and gamma of it moves in all) or b = 1/N (``"sinkhorn"``: ``u <- a / (K v)``); at most
  ``max_iter`` updates, stopping once the scaling's mean change is below ``thresh``; the plan
  T = diag(u) K diag(v) is computed without gradient;
* logits: ``logit_scale * sum(T * S)``; loss: plain cross-entropy; server: FedAvg of P_G
  weighted by examples; test: a client's (P_G, P_L) on its own split. On the global split this
  module evaluates P_G alone (N = 1), the shared model every other method reports there.

Defaults from the authors' CIFAR-100 script (n_ctx 4, eps 0.1, top_percent 0.8, thresh 1e-3,
max_iter 100, COT); their code runs in fp16, this module in float32.
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
from fedrs.models.backbone import Backbone, load_backbone, model_config
from fedrs.models.prompt import PromptedCLIP, PromptLearner

if TYPE_CHECKING:
    from fedrs.core.config import RunConfig
    from fedrs.datasets.shards import Shard

GLOBAL = "prompt.ctx"
LOCAL = "prompt.local_ctx"
INIT_STD = 0.02


@dataclass(frozen=True)
class FedOTPOptions:
    n_ctx: int = 4
    ot: str = "cot"  # "cot": unbalanced, gamma of the mass moves; "sinkhorn": balanced
    eps: float = 0.1  # entropic regulariser: K = exp(-(1 - S) / eps)
    top_percent: float = 0.8  # gamma, the mass transported under "cot"
    thresh: float = 1e-3  # stop once the scaling's mean change is below this
    max_iter: int = 100

    def __post_init__(self) -> None:
        check(self.n_ctx >= 1, f"method.n_ctx must be >= 1, got {self.n_ctx}")
        check(self.ot in ("cot", "sinkhorn"), f"method.ot must be cot or sinkhorn, got {self.ot!r}")
        check(self.eps > 0, f"method.eps must be > 0, got {self.eps}")
        check(
            0 < self.top_percent <= 1,
            f"method.top_percent must be in (0, 1], got {self.top_percent}",
        )
        check(self.thresh > 0, f"method.thresh must be > 0, got {self.thresh}")
        check(self.max_iter >= 1, f"method.max_iter must be >= 1, got {self.max_iter}")


@torch.no_grad()
def transport_plan(sim: torch.Tensor, o: FedOTPOptions) -> torch.Tensor:
    """The entropic transport plan ``(..., M, N)`` between M patches and N prompts for every
    leading index (image, class), given their similarities ``sim`` (module docstring)."""
    m, n = sim.shape[-2:]
    kernel = torch.exp(-(1.0 - sim) / o.eps)
    a = 1.0 / m
    b = (o.top_percent if o.ot == "cot" else 1.0) / n
    u = sim.new_ones(sim.shape[:-1])
    v = sim.new_ones((*sim.shape[:-2], n))
    for _ in range(o.max_iter):
        u_prev, v_prev = u, v
        u = a / (kernel @ v.unsqueeze(-1)).squeeze(-1)
        if o.ot == "cot":
            u = u.clamp(max=1.0)  # a patch sends at most its own mass
        v = b / (kernel.transpose(-1, -2) @ u.unsqueeze(-1)).squeeze(-1)
        moved = (v - v_prev) if o.ot == "cot" else (u - u_prev)
        if float(moved.abs().mean()) < o.thresh:
            break
    return u.unsqueeze(-1) * kernel * v.unsqueeze(-2)


def ot_logits(
    patches: torch.Tensor, text: torch.Tensor, scale: float, o: FedOTPOptions
) -> torch.Tensor:
    """``(B, C)`` logits of ``(B, M, D)`` patch features against ``(N, C, D)`` prompt features:
    ``scale * sum(T * S)`` with the plan T held fixed (gradients flow through S only)."""
    sim = torch.einsum("bmd,ncd->bcmn", patches, text)
    return scale * (transport_plan(sim, o) * sim).sum(dim=(-1, -2))


@torch.no_grad()
def patch_tokens(backbone: Backbone, pixels: torch.Tensor) -> torch.Tensor:
    """L2-normalised patch features ``(B, M, D)``: the image encoder's tokens after ``ln_post``
    and the projection, CLS left out (the same path as ``encode_image`` up to pooling)."""
    visual = backbone.model.visual
    _, tokens = visual._pool(visual.transformer(visual._embeds(pixels)))
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    return nn.functional.normalize(tokens, dim=-1)


class FedOTP(ClipMethod):
    name = "fedotp"
    summary = "FedOTP: global + local prompts matched to image patches by unbalanced OT"
    Options = FedOTPOptions
    run_defaults: ClassVar[dict[str, Any]] = FedRSCLIP.run_defaults  # the same study
    frozen_image_encoder = True
    global_keys = (GLOBAL,)
    prompt_keys = (GLOBAL,)

    def __init__(self, cfg: RunConfig, classes: list[str], device: str = "cpu") -> None:
        super().__init__(cfg, classes, device)
        self.options: FedOTPOptions = cfg.method.options
        self.backbone = load_backbone(cfg.model.arch, cfg.model.pretrained, self.device)
        learner = PromptLearner(self.backbone, classes, self.options.n_ctx)
        self.model = PromptedCLIP(self.backbone, learner)

    @classmethod
    def tensor_shapes(
        cls, cfg: RunConfig, model_cfg: dict[str, Any], num_classes: int
    ) -> dict[str, dict[str, tuple[int, ...]]]:
        shape = (cfg.method.options.n_ctx, model_cfg["text_cfg"]["width"])
        return {"global": {GLOBAL: shape}, "private": {LOCAL: shape}}

    def _context(self, seed: int, which: int) -> np.ndarray:
        shape = self.tensor_shapes(self.cfg, model_config(self.cfg.model.arch), 0)["global"]
        state = np.random.SeedSequence([seed, 7, which]).generate_state(1)[0]
        gen = torch.Generator().manual_seed(int(state))
        return torch.empty(shape[GLOBAL]).normal_(0.0, INIT_STD, generator=gen).numpy()

    def init_global(self, seed: int) -> Params:
        return {GLOBAL: self._context(seed, 0)}

    def init_private(self, client_id: int, seed: int) -> Params:
        return {LOCAL: self._context(seed, 1)}  # every client's local prompt starts alike

    # the frozen image side, cached per shard: patch features flattened to (n, M * D)
    def feature_identity(self) -> dict[str, Any]:
        return {**self.backbone.identity(), "features": "patch_tokens"}

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        tokens = patch_tokens(self.backbone, self.backbone.preprocess(images))
        return tokens.reshape(len(images), -1).cpu().numpy()

    def patches(self, inputs: np.ndarray) -> torch.Tensor:
        """``(B, M, D)`` patch features of pixels, or of their cached flattened rows."""
        if inputs.ndim == 2:
            flat = torch.from_numpy(np.array(inputs, dtype=np.float32)).to(self.device)
            return flat.reshape(len(inputs), -1, self.backbone.embed_dim)
        return patch_tokens(self.backbone, self.backbone.preprocess(inputs))

    def _text(self, contexts: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([self.model.text_features(ctx) for ctx in contexts])  # (N, C, D)

    def fit(
        self, global_params: Params, private: Params, shard: Shard, options: FitOptions
    ) -> FitOutput:
        params = {
            GLOBAL: self.tensor(global_params[GLOBAL], True),
            LOCAL: self.tensor(private[LOCAL], True),
        }
        inputs, labels, scale = shard.inputs, shard.labels, self.model.logit_scale

        def step(rows: np.ndarray) -> tuple[torch.Tensor, int]:
            text = self._text([params[GLOBAL], params[LOCAL]])
            logits = ot_logits(self.patches(inputs[rows]), text, scale, self.options)
            y = torch.as_tensor(labels[rows], device=logits.device)
            return nn.functional.cross_entropy(logits, y), int((logits.argmax(1) == y).sum())

        metrics = local_sgd(params, step, len(shard), options, global_params.keys())
        arrays = {k: v.detach().cpu().numpy().copy() for k, v in params.items()}
        return FitOutput(
            params={GLOBAL: arrays[GLOBAL]},
            num_examples=len(shard),
            metrics=metrics,
            private={LOCAL: arrays[LOCAL]},
        )

    def evaluate(
        self, global_params: Params, private: Params, images: np.ndarray, labels: np.ndarray
    ) -> dict[str, float]:
        """P_G alone (N = 1) on the global split; (P_G, P_L) with a client's private state."""
        with torch.no_grad():
            contexts = [self.tensor(global_params[GLOBAL])]
            if LOCAL in private:
                contexts.append(self.tensor(private[LOCAL]))
            text = self._text(contexts)
        scale = self.model.logit_scale
        return batched_eval(
            lambda x: ot_logits(self.patches(x), text, scale, self.options), images, labels
        )
