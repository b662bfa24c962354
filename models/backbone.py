"""open_clip backbones by name, loaded once per process and kept resident.

``model.arch`` is any open_clip architecture (``ViT-B-32``, ``ViT-B-16``, ...) or one of the
small configs registered here (``fedrs-tiny``: random-init tests and the offline default;
``fedrs-small``: what ``fedrs pretrain`` trains on RS captions). ``model.pretrained`` is an
open_clip pretrained tag (``openai``, ``laion2b_s34b_b79k``, ...; needs the network or a
populated cache) or the path of a local checkpoint (a state dict, as ``fedrs pretrain`` and
open_clip's training write). Empty means random initialisation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedrs.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
RANDOM_INIT_SEED = 0
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

_registered = False
_cache: dict[tuple[Any, ...], Backbone] = {}
_lock = threading.Lock()


def register_configs() -> None:
    """Make fedrs's small architectures known to open_clip (idempotent)."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def _config_file(arch: str) -> dict[str, Any] | None:
    """``arch``'s config as open_clip reads it from its own and fedrs's JSON files (a file
    whose keys lack ``embed_dim``, ``vision_cfg`` or ``text_cfg`` is not a model), found
    without importing open_clip: that import (torchvision, torch._dynamo) takes seconds, and
    preflight and the driver only need the config."""
    import importlib.util
    import json

    spec = importlib.util.find_spec("open_clip")  # locates the package, does not import it
    dirs = [CONFIG_DIR]  # fedrs's are added after open_clip's own: they win a clash
    if spec is not None and spec.submodule_search_locations:
        dirs.insert(0, Path(next(iter(spec.submodule_search_locations))) / "model_configs")
    found = None
    for folder in dirs:
        path = folder / f"{arch}.json"
        if path.is_file():
            cfg = json.loads(path.read_text())
            if all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
                found = cfg
    return found


def model_config(arch: str) -> dict[str, Any]:
    """open_clip's architecture config for ``arch`` (no weights are built): read from the
    config files when it is one of them, else asked of open_clip (``hf-hub:`` and
    ``local-dir:`` names)."""
    cfg = _config_file(arch) if ":" not in arch and "/" not in arch else None
    if cfg is None:
        register_configs()
        import open_clip

        cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ConfigError(
            f"unknown model.arch {arch!r}; open_clip knows e.g. ViT-B-32, ViT-B-16, fedrs-tiny"
        )
    return cfg


@dataclass
class Backbone:
    """A frozen CLIP model with its tokenizer and preprocessing constants."""

    arch: str
    pretrained: str
    model: nn.Module
    tokenizer: Any
    image_size: int
    device: torch.device

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, H, W, 3)`` -> normalised float ``(N, 3, S, S)`` on the device."""
        arr = np.asarray(images)
        if not arr.flags.writeable:  # a view of a memory-mapped shard: copy just this batch
            arr = arr.copy()
        x = torch.from_numpy(arr).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = nn.functional.interpolate(
                x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False
            ).clamp_(0.0, 1.0)
        mean = torch.tensor(OPENAI_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(OPENAI_STD, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def identity(self) -> dict[str, Any]:
        """What this backbone's image embeddings depend on besides the pixels (the key of the
        frozen-feature cache): architecture config, weights, preprocessing."""
        import open_clip

        if not self.pretrained:
            weights: dict[str, Any] = {
                "random_init_seed": RANDOM_INIT_SEED,
                "torch": torch.__version__,
            }
        elif os.path.isfile(self.pretrained):
            stat = os.stat(self.pretrained)
            weights = {
                "checkpoint": os.path.abspath(self.pretrained),
                "bytes": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
            }
        else:
            weights = {"tag": self.pretrained}
        return {
            "arch": self.arch,
            "model_cfg": model_config(self.arch),
            "weights": weights,
            "open_clip": open_clip.__version__,
            "preprocess": {
                "size": self.image_size,
                "mean": OPENAI_MEAN,
                "std": OPENAI_STD,
                "interpolation": "bicubic",
                "dtype": "float32",
            },
        }

    @torch.no_grad()
    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised ``encode_image`` of preprocessed pixels (the frozen image side)."""
        return nn.functional.normalize(self.model.encode_image(pixels), dim=-1)

    @property
    def text_width(self) -> int:
        return int(self.model.ln_final.weight.shape[0])

    @property
    def embed_dim(self) -> int:
        proj = self.model.text_projection
        return int(proj.weight.shape[0] if isinstance(proj, nn.Linear) else proj.shape[1])


class _NoRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init() -> Iterator[None]:
    """Drop open_clip's per-process random-initialisation warning (root logger)."""
    quiet = _NoRandomInitWarning()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _create(arch: str, pretrained: str, device: torch.device) -> nn.Module:
    import open_clip

    model_config(arch)
    register_configs()  # open_clip builds fedrs's architectures by name
    if pretrained and os.path.sep not in pretrained and not os.path.exists(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if pretrained not in tags:
            raise ConfigError(
                f"model.pretrained {pretrained!r} is neither a local checkpoint nor an open_clip "
                f"tag of {arch} (tags: {', '.join(tags) or 'none'})"
            )
    elif pretrained and not os.path.isfile(pretrained):
        raise ConfigError(f"model.pretrained checkpoint not found: {pretrained}")
    try:
        # Random initialisation must be identical in every actor process (all clients share one
        # frozen backbone): build it from a fixed seed without touching the global RNG.
        # open_clip warns "No pretrained weights loaded" from every process that builds a
        # random model; the run's banner says "weights: random init" once instead.
        with torch.random.fork_rng(devices=[]), _quiet_random_init():
            torch.manual_seed(RANDOM_INIT_SEED)
            return open_clip.create_model(arch, pretrained=pretrained or None, device=device)
    except Exception as exc:  # torch.load / open_clip raise many types for bad files
        text = " ".join(str(exc).split()) or type(exc).__name__
        text = text if len(text) <= 300 else text[:297] + "..."
        raise ConfigError(f"cannot load {arch} weights {pretrained!r}: {text}") from None


def _batch_first_attention(
    block: nn.Module,
    q_x: torch.Tensor,
    k_x: torch.Tensor | None = None,
    v_x: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """open_clip's ``ResidualAttentionBlock.attention`` on the ``(N, L, E)`` input as it is.

    ``nn.MultiheadAttention(batch_first=True)`` transposes its input to ``(L, N, E)``, and the
    packed in-projection of that non-contiguous view runs as a ``bmm`` against an expanded
    weight. Here the same weights run as one ``linear`` -> ``scaled_dot_product_attention`` ->
    out-projection (``fedrs bench flops --set experiments=attention``: 1.04-1.10x per ViT-B-32
    FedRSCLIP fit).
    """
    mha = block.attn
    if k_x is not None or v_x is not None:  # cross-attention: open_clip's own path
        return type(block).attention(block, q_x, k_x, v_x, attn_mask)
    n, length, width = q_x.shape
    heads = mha.num_heads
    qkv = nn.functional.linear(q_x, mha.in_proj_weight, mha.in_proj_bias)
    q, k, v = qkv.view(n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
    mask = attn_mask.to(q_x.dtype) if attn_mask is not None else None
    out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return mha.out_proj(out.transpose(1, 2).reshape(n, length, width))


def use_batch_first_attention(model: nn.Module, enable: bool = True) -> int:
    """Give (``enable``) or take back the batch-first attention of every open_clip block in
    ``model`` whose attention it computes exactly: self-attention of a batch-first
    ``nn.MultiheadAttention`` with packed projections and no dropout. Per instance, so other
    open_clip models in the process are untouched; ``copy.deepcopy`` keeps it. Returns how many
    blocks now use it."""
    from open_clip.transformer import ResidualAttentionBlock

    count = 0
    for block in model.modules():
        if type(block) is not ResidualAttentionBlock:
            continue
        mha = getattr(block, "attn", None)
        eligible = (
            isinstance(mha, nn.MultiheadAttention)
            and mha.batch_first
            and mha.in_proj_weight is not None
            and mha.dropout == 0.0
        )
        if enable and eligible:
            block.attention = types.MethodType(_batch_first_attention, block)
            count += 1
        elif "attention" in vars(block):
            del block.attention
    return count


def load_backbone(arch: str, pretrained: str = "", device: str | torch.device = "cpu") -> Backbone:
    """The frozen backbone for (arch, pretrained, device); built once per process."""
    import open_clip

    device = torch.device(device)
    # a local checkpoint rewritten in place (``fedrs pretrain`` again) is another backbone
    stat = os.stat(pretrained) if pretrained and os.path.isfile(pretrained) else None
    key = (arch, pretrained, str(device), stat and (stat.st_size, stat.st_mtime_ns))
    with _lock:
        if key not in _cache:
            model = _create(arch, pretrained, device)
            use_batch_first_attention(model)
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
            size = model.visual.image_size
            _cache[key] = Backbone(
                arch=arch,
                pretrained=pretrained,
                model=model,
                tokenizer=open_clip.get_tokenizer(arch),
                image_size=int(size[0] if isinstance(size, tuple | list) else size),
                device=device,
            )
            log.info("loaded backbone %s (%s) on %s", arch, pretrained or "random init", device)
        return _cache[key]


def clear_cache() -> None:
    """Forget the backbones built in this process (the next load builds afresh)."""
    with _lock:
        _cache.clear()


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Save a state dict that ``model.pretrained=PATH`` loads (atomic write)."""
    from fedrs.io import atomic_open

    with atomic_open(path, "wb") as fh:
        torch.save({"state_dict": model.state_dict()}, fh)
