"""``fedrs pretrain``: contrastive (CLIP-loss) training of a small open_clip model, centrally,
on image-caption shards from the data layer (e.g. a build of UCM-Captions).

No pretrained CLIP can be downloaded offline; this gives every quality figure a backbone that
actually learned remote-sensing semantics. Users with real weights set ``model.pretrained`` to
an open_clip tag or checkpoint instead.

    fedrs data build --source ucmcap=../shared/data/ucm-captions --partition iid \\
        --num-clients 1 --image-size 128 --out data/ucmcap
    fedrs pretrain --data data/ucmcap --arch fedrs-small --epochs 30 --out ckpt/rs-small.pt
    fedrs run --set model.arch=fedrs-small --set model.pretrained=ckpt/rs-small.pt ...
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedrs.datasets.manifest import FedDataset
from fedrs.errors import DataError
from fedrs.io import write_json
from fedrs.models.backbone import OPENAI_MEAN, OPENAI_STD, register_configs, save_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    data: str
    out: str
    arch: str = "fedrs-small"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 50
    seed: int = 0
    threads: int = 0  # 0: torch's default
    # a classification build is captioned by these, filled with each image's class name
    templates: tuple[str, ...] = (
        "a satellite photo of a {}.",
        "an aerial image of a {}.",
        "a remote sensing image of a {}.",
        "an overhead view of a {}.",
        "a photo of a {} seen from above.",
    )


def image_captions(ds: FedDataset, shard: Any, templates: tuple[str, ...]) -> list[list[str]]:
    """The captions of a shard's images: its own (caption builds), or the templates filled
    with each image's class name (classification builds)."""
    if ds.kind == "captions":
        return shard.captions
    names = [c.replace("_", " ") for c in ds.classes]
    return [[t.format(names[y]) for t in templates] for y in shard.labels]


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Overhead imagery has no 'up': random 90-degree rotations and flips per batch."""
    k = int(torch.randint(0, 4, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(2, 3))
    if bool(torch.randint(0, 2, (1,), generator=gen)):
        x = x.flip(3)
    return x


def _pixels(images: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != size:
        x = nn.functional.interpolate(
            x, size=(size, size), mode="bicubic", align_corners=False
        ).clamp_(0, 1)
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    return (x - mean) / torch.tensor(OPENAI_STD).view(1, 3, 1, 1)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    img, txt = nn.functional.normalize(img, dim=-1), nn.functional.normalize(txt, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * img @ txt.t()
    target = torch.arange(len(img))
    return 0.5 * (
        nn.functional.cross_entropy(logits, target)
        + nn.functional.cross_entropy(logits.t(), target)
    )


@torch.no_grad()
def retrieval_recall(
    model: nn.Module, tokenizer: Any, images: np.ndarray, captions: list[list[str]], size: int
) -> dict[str, float]:
    """Image->text R@1 / R@5 over the split (an image's hit: any of its captions)."""
    feats = torch.cat(
        [
            model.encode_image(_pixels(images[i : i + 128], size), normalize=True)
            for i in range(0, len(images), 128)
        ]
    )
    owners = [i for i, caps in enumerate(captions) for _ in caps]
    texts = [c for caps in captions for c in caps]
    tfeats = torch.cat(
        [
            model.encode_text(tokenizer(texts[i : i + 256]), normalize=True)
            for i in range(0, len(texts), 256)
        ]
    )
    ranked = (feats @ tfeats.t()).argsort(dim=1, descending=True)
    owner = torch.tensor(owners)[ranked]
    hits = owner == torch.arange(len(images)).unsqueeze(1)
    return {
        "i2t_r1": float(hits[:, :1].any(1).float().mean()),
        "i2t_r5": float(hits[:, :5].any(1).float().mean()),
    }


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    import open_clip

    register_configs()
    ds = FedDataset(cfg.data)
    if ds.kind != "captions" and not all("{}" in t for t in cfg.templates):
        raise DataError("every pretraining template needs a '{}' for the class name")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    shards = [ds.client(c.id) for c in ds.clients]
    images = np.concatenate([s.images for s in shards])
    captions = [caps for s in shards for caps in image_captions(ds, s, cfg.templates)]
    model = open_clip.create_model(cfg.arch)
    tokenizer = open_clip.get_tokenizer(cfg.arch)
    size = int(
        model.visual.image_size[0]
        if isinstance(model.visual.image_size, tuple)
        else model.visual.image_size
    )
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    steps_per_epoch = max(1, len(images) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * s / total)),
    )
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    t0 = time.perf_counter()
    model.train()
    for epoch in range(cfg.epochs):
        perm = rng.permutation(len(images))
        losses = []
        for step in range(steps_per_epoch):
            rows = np.sort(perm[step * cfg.batch_size : (step + 1) * cfg.batch_size])
            texts = [captions[r][int(rng.integers(len(captions[r])))] for r in rows]
            img = model.encode_image(_augment(_pixels(images[rows], size), gen))
            txt = model.encode_text(tokenizer(texts))
            loss = clip_loss(img, txt, model.logit_scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)),
                "elapsed_s": time.perf_counter() - t0,
            }
        )
        log.info(
            "pretrain epoch %d/%d: loss %.3f (%.0fs)",
            epoch + 1,
            cfg.epochs,
            history[-1]["loss"],
            history[-1]["elapsed_s"],
        )
    model.eval()
    test = ds.test_shard()
    test_captions = image_captions(ds, test, cfg.templates)
    recall = retrieval_recall(model, tokenizer, test.images, test_captions, size)
    save_checkpoint(model, cfg.out)
    report = {
        "config": asdict(cfg),
        "history": history,
        "test": recall,
        "train_images": len(images),
        "seconds": time.perf_counter() - t0,
    }
    write_json(Path(cfg.out).with_suffix(".json"), report)
    log.info(
        "pretrained %s: test image->text R@1 %.3f R@5 %.3f -> %s",
        cfg.arch,
        recall["i2t_r1"],
        recall["i2t_r5"],
        cfg.out,
    )
    return report
