"""The small client model of CLIP2FL / CReFF: a CIFAR-style ResNet-8 -> feature -> Linear(C).

ResNet-8 as in CReFF's code: a 3x3 stem and three stages of one basic block each (strides 1, 2,
2), widths ``16 * scaling``, ``32 * scaling``, ``64 * scaling`` with ``scaling = 4`` (64, 128,
256), global average pooling; CLIP2FL adds one linear layer 256 -> ``feature_dim`` (512, CLIP's
embedding width, so that federated features and CLIP's text embeddings share a space), then the
classifier ``Linear(feature_dim, C)``. Input: uint8 pixels resized to ``input_size`` (32 in
the papers, which use CIFAR / ImageNet-LT at 32 px), scaled to [-1, 1].

The classifier is a separate module (``head``): CReFF re-trains it on the server.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet8(nn.Module):
    """Pixels ``(N, 3, S, S)`` -> features ``(N, feature_dim)``."""

    def __init__(self, feature_dim: int = 512, scaling: int = 4) -> None:
        super().__init__()
        w = [16 * scaling, 32 * scaling, 64 * scaling]
        self.stem = nn.Sequential(
            nn.Conv2d(3, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU()
        )
        self.stages = nn.Sequential(
            BasicBlock(w[0], w[0], 1), BasicBlock(w[0], w[1], 2), BasicBlock(w[1], w[2], 2)
        )
        self.project = nn.Linear(w[2], feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.project(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Student(nn.Module):
    """``backbone`` (ResNet-8 + projection) and ``head`` (the classifier)."""

    def __init__(
        self, num_classes: int, feature_dim: int = 512, scaling: int = 4, input_size: int = 32
    ) -> None:
        super().__init__()
        self.backbone = ResNet8(feature_dim, scaling)
        self.head = nn.Linear(feature_dim, num_classes)
        self.input_size = input_size

    def pixels(self, images: np.ndarray, augment: torch.Generator | None = None) -> torch.Tensor:
        """uint8 ``(N, H, W, 3)`` -> float ``(N, 3, S, S)`` in [-1, 1]; with a generator, the
        CIFAR augmentation (random crop from a 4-pixel zero pad, horizontal flip)."""
        arr = np.asarray(images)
        device = self.head.weight.device
        x = torch.from_numpy(arr.copy() if not arr.flags.writeable else arr).to(device)
        x = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        s = self.input_size
        if x.shape[-1] != s or x.shape[-2] != s:
            x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        if augment is None:
            return x
        n, pad = len(x), 4
        padded = F.pad(x, (pad, pad, pad, pad), value=-1.0)  # black, as a zero pad of pixels
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=augment).to(device)
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=augment).to(device)
        flip = (torch.rand(n, generator=augment) < 0.5).to(device)
        span = torch.arange(s, device=device)
        rows = (dy[:, None] + span)[:, None, :, None]  # (n, 1, s, 1)
        cols = dx[:, None] + span
        cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]  # (n, 1, 1, s)
        batch = torch.arange(n, device=device)[:, None, None, None]
        chans = torch.arange(3, device=device)[None, :, None, None]
        return padded[batch, chans, rows, cols]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and logits."""
        feats = self.backbone(x)
        return feats, self.head(feats)
