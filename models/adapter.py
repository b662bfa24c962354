"""PE-RSITR's MRS-Adapter and HMMC loss on a frozen open_clip model (METHODS.md section 2).

**MRS-Adapter** [code]: ONE instance shared by every block of both encoders. For a token ``x``
of modality m: ``h = Dropout(0.5)(ReLU(down_m(x)))`` with ``down_text: width_t -> 64`` and
``down_vision: width_v -> 64``; the output is the concatenation ``[up_m(h), shared(h)]`` of a
modality-specific up-projection (``64 -> width_m - 64``) and a Linear(64 -> 64) shared by the two
modalities (the multimodal weight sharing). Down-projections: kaiming-uniform(a=sqrt 5); the
up-projections and all biases zero [code]; the shared Linear is read as part of the
up-projection and zero too [std], so a fresh adapter adds exactly 0 and the adapted encoders
start as the frozen ones. 161,088 parameters at ViT-B/32 (text 512, vision 768).

Placement [code]: parallel to each block's MLP, fed the post-attention residual stream::

    x = x + attn(ln_1(x));  x = x + mlp(ln_2(x)) + adapter(x)

The frozen model is never changed: ``AdaptedCLIP`` runs the blocks' own submodules in that
order (per call), so another method in the same process still sees the plain model.

**Augmented views** [code]: Dropout(0.2) on the token embeddings (text after the positional
embedding, image after ``ln_pre``). **HMMC** [paper: three terms; std form]:
``L = L_cm + lambda (L_v + L_t)``, each a symmetric InfoNCE: image-caption, image-augmented
image, caption-augmented caption.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedrs.models.prompt import symmetric_info_nce

BOTTLENECK = 64
ADAPTER_DROPOUT = 0.5
VIEW_DROPOUT = 0.2
MODALITIES = ("text", "vision")


def mrs_adapter_params(text_width: int, vision_width: int, bottleneck: int = BOTTLENECK) -> int:
    """Trainable parameters of one MRS-Adapter, from the two widths alone (``--dry-run``)."""
    down = (text_width + vision_width) * bottleneck + 2 * bottleneck
    up = sum((bottleneck + 1) * (w - bottleneck) for w in (text_width, vision_width))
    return down + up + bottleneck * bottleneck + bottleneck


class MRSAdapter(nn.Module):
    """One adapter for both modalities; ``forward(x, modality)`` on ``(..., width_m)``."""

    def __init__(
        self,
        text_width: int,
        vision_width: int,
        bottleneck: int = BOTTLENECK,
        dropout: float = ADAPTER_DROPOUT,
    ) -> None:
        super().__init__()
        for w in (text_width, vision_width):
            if w <= bottleneck:
                raise ValueError(f"width {w} must exceed the bottleneck {bottleneck}")
        self.down = nn.ModuleDict(
            {
                "text": nn.Linear(text_width, bottleneck),
                "vision": nn.Linear(vision_width, bottleneck),
            }
        )
        self.up = nn.ModuleDict(
            {
                "text": nn.Linear(bottleneck, text_width - bottleneck),
                "vision": nn.Linear(bottleneck, vision_width - bottleneck),
            }
        )
        self.shared = nn.Linear(bottleneck, bottleneck)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Down: kaiming-uniform(a=sqrt 5) (nn.Linear's own rule, from ``generator``); up,
        shared and every bias: zero."""
        with torch.no_grad():
            for layer in self.down.values():
                bound = 1.0 / math.sqrt(layer.in_features)  # kaiming_uniform_(a=sqrt(5))
                layer.weight.uniform_(-bound, bound, generator=generator)
            for layer in (*self.up.values(), self.shared):
                layer.weight.zero_()
            for layer in (*self.down.values(), *self.up.values(), self.shared):
                layer.bias.zero_()

    def forward(self, x: torch.Tensor, modality: str, block: int = 0) -> torch.Tensor:
        """The same adapter for every ``block``."""
        h = self.dropout(torch.relu(self.down[modality](x)))
        return torch.cat([self.up[modality](h), self.shared(h)], dim=-1)


class BlockAdapters(nn.Module):
    """AdaptFormer (Chen et al., 2022): per block and per modality, its own bottleneck
    ``scale * up(ReLU(down(x)))`` beside the MLP; nothing shared. Down: kaiming-uniform(a=sqrt 5),
    up and biases zero (the adapted model starts as the frozen one)."""

    def __init__(
        self,
        text_width: int,
        vision_width: int,
        text_layers: int,
        vision_layers: int,
        bottleneck: int = BOTTLENECK,
        scale: float = 0.1,
    ) -> None:
        super().__init__()
        self.scale = scale

        def branch(width: int, layers: int) -> nn.ModuleList:
            return nn.ModuleList(
                nn.Sequential(nn.Linear(width, bottleneck), nn.ReLU(), nn.Linear(bottleneck, width))
                for _ in range(layers)
            )

        self.blocks = nn.ModuleDict(
            {"text": branch(text_width, text_layers), "vision": branch(vision_width, vision_layers)}
        )
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            for branch in self.blocks.values():
                for down, _, up in branch:
                    bound = 1.0 / math.sqrt(down.in_features)
                    down.weight.uniform_(-bound, bound, generator=generator)
                    for t in (down.bias, up.weight, up.bias):
                        t.zero_()

    def forward(self, x: torch.Tensor, modality: str, block: int = 0) -> torch.Tensor:
        return self.scale * self.blocks[modality][block](x)


def _adapted_blocks(
    transformer: nn.Module,
    x: torch.Tensor,
    adapter: nn.Module | None,
    modality: str,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """open_clip's ``Transformer.forward`` with ``adapter(x, modality, block)`` beside each
    block's MLP; the blocks' submodules are called as they are (weights, layer scales,
    attention path)."""
    if not getattr(transformer, "batch_first", True):
        x = x.transpose(0, 1)
    for i, block in enumerate(transformer.resblocks):
        x = x + block.ls_1(block.attention(q_x=block.ln_1(x), attn_mask=attn_mask))
        side = adapter(x, modality, i) if adapter is not None else 0.0
        x = x + block.ls_2(block.mlp(block.ln_2(x))) + side
    if not getattr(transformer, "batch_first", True):
        x = x.transpose(0, 1)
    return x


class AdaptedCLIP(nn.Module):
    """An open_clip CLIP (ViT image tower, CLIP text tower) with what a method trains beside
    it: an adapter (``adapter(x, modality, block)`` beside every MLP) and / or a learnable text
    context (CoOp: ``n_ctx`` vectors after each caption's start token). The model itself is
    used as given (frozen, or a trainable copy). ``view_dropout`` > 0 gives augmented views."""

    def __init__(
        self,
        model: nn.Module,
        adapter: nn.Module | None,
        text_context: nn.Parameter | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.adapter = adapter
        self.text_context = text_context

    def encode_text(self, tokens: torch.Tensor, view_dropout: float = 0.0) -> torch.Tensor:
        """Unnormalised text features; ``(n, L)`` token ids, pooled at the EOT (argmax) token."""
        m = self.model
        x = m.token_embedding(tokens)
        eot = tokens.argmax(dim=-1)
        if self.text_context is not None:  # [SOS] ctx_1..ctx_k caption [EOT], cut to length
            k, length = self.text_context.shape[0], x.shape[1]
            ctx = self.text_context.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], ctx, x[:, 1 : length - k]], dim=1)
            eot = (eot + k).clamp(max=length - 1)
        x = x + m.positional_embedding
        if view_dropout:
            x = nn.functional.dropout(x, view_dropout, training=True)
        x = _adapted_blocks(m.transformer, x, self.adapter, "text", m.attn_mask)
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        proj = m.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def encode_image(self, pixels: torch.Tensor, view_dropout: float = 0.0) -> torch.Tensor:
        """Unnormalised image features of preprocessed ``(n, 3, S, S)`` pixels."""
        visual = self.model.visual
        x = visual._embeds(pixels)  # patches + CLS + positions, after ln_pre
        if view_dropout:
            x = nn.functional.dropout(x, view_dropout, training=True)
        x = _adapted_blocks(visual.transformer, x, self.adapter, "vision")
        pooled, _ = visual._pool(x)
        return pooled @ visual.proj if visual.proj is not None else pooled

    def embeddings(
        self, pixels: torch.Tensor, tokens: torch.Tensor, views: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """L2-normalised (image, text) or, with ``views``, (image, text, augmented image,
        augmented text)."""
        out = [self.encode_image(pixels), self.encode_text(tokens)]
        if views:
            out += [
                self.encode_image(pixels, VIEW_DROPOUT),
                self.encode_text(tokens, VIEW_DROPOUT),
            ]
        return tuple(nn.functional.normalize(t, dim=-1) for t in out)


def hmmc_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    image_aug: torch.Tensor | None,
    text_aug: torch.Tensor | None,
    scale: float,
    lam: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``L_cm + lam (L_v + L_t)`` on row-aligned, L2-normalised embeddings; ``lam = 0`` (or no
    views) is the ablation with L_cm alone. Returns the loss and its terms as floats."""
    l_cm = symmetric_info_nce(image, text, scale)
    terms = {"l_cm": float(l_cm.detach())}
    if lam == 0 or image_aug is None or text_aug is None:
        return l_cm, terms
    l_v = symmetric_info_nce(image, image_aug, scale)
    l_t = symmetric_info_nce(text, text_aug, scale)
    terms |= {"l_v": float(l_v.detach()), "l_t": float(l_t.detach())}
    return l_cm + lam * (l_v + l_t), terms
