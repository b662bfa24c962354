"""CoOp-style prompt learning on a frozen open_clip model: TextEncoder / PromptLearner split.

A prompt for class c is ``[SOS] ctx_1 ... ctx_n {class name}. [EOS]``: the context vectors
``ctx`` (``n_ctx x text width``) are learnable, everything else is the frozen token embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from fedrs.models.backbone import Backbone


class TextEncoder(nn.Module):
    """The frozen text tower, fed prompt *embeddings* instead of token ids."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        m = backbone.model
        self.transformer = m.transformer
        self.positional_embedding = m.positional_embedding
        self.ln_final = m.ln_final
        self.text_projection = m.text_projection
        self.register_buffer("attn_mask", m.attn_mask, persistent=False)
        mask = m.attn_mask
        # With CLIP's causal mask, position p only sees positions <= p, so the tokens after the
        # last EOT cannot change any EOT feature: the tower can stop there (a class prompt is
        # ~10 of 77 tokens; exact up to float summation order).
        self.causal = mask is not None and bool(
            torch.equal(
                torch.isinf(mask) & (mask < 0),
                torch.ones_like(mask, dtype=torch.bool).triu(1),
            )
        )

    def forward(self, prompts: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """``(n, L, width)`` embeddings and ``(n,)`` EOT positions -> ``(n, embed_dim)``."""
        mask = self.attn_mask
        if self.causal:
            length = int(eot_index.max()) + 1
            prompts, mask = prompts[:, :length], mask[:length, :length]
        x = prompts + self.positional_embedding[: prompts.shape[1]].to(prompts.dtype)
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index]
        proj = self.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def class_prompts(backbone: Backbone, classnames: list[str], template: str) -> torch.Tensor:
    """Token ids of ``template.format(name)`` for each class (``(C, L)``)."""
    return backbone.tokenizer([template.format(c.replace("_", " ")) for c in classnames])


class PromptLearner(nn.Module):
    """Learnable context shared by all classes (CoOp's unified context).

    Args:
        backbone: the frozen CLIP whose token embedding fixes the prefix / class-name tokens.
        classnames: class names in label order.
        n_ctx: number of context vectors.
        init_std: std of the N(0, init_std^2) initialisation (CoOp: 0.02).
        generator: RNG for the initialisation (deterministic runs).
    """

    def __init__(
        self,
        backbone: Backbone,
        classnames: list[str],
        n_ctx: int = 4,
        init_std: float = 0.02,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        width = backbone.text_width
        placeholder = " ".join(["X"] * n_ctx)
        tokens = class_prompts(backbone, classnames, placeholder + " {}.").to(backbone.device)
        with torch.no_grad():
            embedding = backbone.model.token_embedding(tokens)
        ctx = torch.empty(n_ctx, width).normal_(0.0, init_std, generator=generator)
        self.ctx = nn.Parameter(ctx.to(backbone.device))
        self.n_ctx = n_ctx
        self.register_buffer("token_prefix", embedding[:, :1, :].clone(), persistent=False)
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx :, :].clone(), persistent=False)
        self.register_buffer("eot_index", tokens.argmax(dim=-1), persistent=False)

    def forward(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt embeddings ``(C, L, width)`` built from ``ctx`` (default: own context)."""
        ctx = self.ctx if ctx is None else ctx
        n_cls = self.token_prefix.shape[0]
        ctx = ctx.unsqueeze(0).expand(n_cls, -1, -1)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)


class PromptedCLIP(nn.Module):
    """Frozen CLIP + learnable text context: ``logits = scale * cos(f(x), g(ctx, c))``."""

    def __init__(self, backbone: Backbone, prompt_learner: PromptLearner) -> None:
        super().__init__()
        self.backbone = backbone
        self.text_encoder = TextEncoder(backbone)
        self.prompt_learner = prompt_learner
        self.logit_scale = float(backbone.model.logit_scale.exp().item())

    def text_features(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.text_encoder(self.prompt_learner(ctx), self.prompt_learner.eot_index)
        return nn.functional.normalize(feats, dim=-1)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone.image_embeddings(pixels)

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """``scale * cos`` of (normalised) image features against the prompted text features."""
        return self.logit_scale * image_features @ self.text_features().t()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.logits(self.image_features(pixels))


@torch.no_grad()
def zero_shot_text_features(
    backbone: Backbone, classnames: list[str], template: str = "a satellite photo of a {}."
) -> torch.Tensor:
    """Normalised text features of hand-written prompts (zero-shot CLIP's classifier)."""
    tokens = class_prompts(backbone, classnames, template).to(backbone.device)
    return nn.functional.normalize(backbone.model.encode_text(tokens), dim=-1)


def encode_image_prompted(
    backbone: Backbone, pixels: torch.Tensor, visual_prompts: torch.Tensor | None = None
) -> torch.Tensor:
    """Image features with VPT-shallow prompts: ``(n_vis, width)`` learnable tokens inserted
    after the CLS token, right after the image encoder's ``ln_pre``; CLS pooling as usual.

    With ``visual_prompts=None`` this equals ``model.encode_image`` (a test guards that, since
    it relies on open_clip's ``VisionTransformer._embeds`` / ``_pool``).
    """
    visual = backbone.model.visual
    x = visual._embeds(pixels)  # (B, 1 + patches, width), after ln_pre
    if visual_prompts is not None:
        prompts = visual_prompts.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :1], prompts, x[:, 1:]], dim=1)
    x = visual.transformer(x)
    pooled, _ = visual._pool(x)
    return pooled @ visual.proj if visual.proj is not None else pooled


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """CLIP's loss between row-aligned L2-normalised ``a`` and ``b``: the mean of the two
    cross-entropies of ``scale * a @ b.T`` against the diagonal."""
    logits = scale * a @ b.t()
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (
        nn.functional.cross_entropy(logits, target)
        + nn.functional.cross_entropy(logits.t(), target)
    )


def class_masked_info_nce(
    a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, scale: float
) -> torch.Tensor:
    """``symmetric_info_nce`` with every same-class pair a positive: row i's loss is
    ``-log sum_{j: y_j = y_i} softmax(scale a_i . b)_j`` in both directions, so rows of one
    class are never pushed apart (with one example per class it equals the diagonal loss)."""
    logits = scale * a @ b.t()
    same = labels[:, None] == labels[None, :]

    def positives(z: torch.Tensor) -> torch.Tensor:
        log_p = z.log_softmax(dim=1)
        return -torch.logsumexp(log_p.masked_fill(~same, float("-inf")), dim=1).mean()

    return 0.5 * (positives(logits) + positives(logits.t()))
