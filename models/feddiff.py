"""FedDiff's networks (../shared/METHODS.md section 4): a DDPM U-Net per modality with the
frequency module, and the dual-branch classifier with FR fusion.

* ``DDPM``: linear beta schedule, ``q_sample`` (forward noising), ``step`` (one reverse step).
* ``UNet``: on ``size x size`` patches (the paper's 8 x 8: 7 x 7 neighbourhoods resized);
  two encoder levels, each a time-conditioned residual block followed by a ``FrequencyModule``
  (FFT2 -> 1x1 conv on real and imaginary parts -> inverse FFT2, real part -> 3x3 conv ->
  residual block, added to its input); a middle block whose output, pooled, is the diffusion
  feature; a decoder with skip connections predicting the noise.
* ``Branch``: per modality, a raw-patch CNN (bands -> 16 -> 32 -> 64, pooled) plus the
  projected diffusion features (``Linear(feature_dim, 64)``), summed.
* ``FusionHead``: cross-branch projections ``x12 = P12(h)``, ``x21 = P21(l)``; three fusion
  blocks ``FR(a, b) = a + sigmoid(conv_r(a)) * b + a + sigmoid(conv_c(a)) * b`` over
  ``(h + x21, l + x12)``, ``(h, x12)``, ``(x21, l)``; three logit heads. Features are pooled
  vectors here, so the paper's 1 x 1 convolutions are linear layers (the same map).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

WIDTH = 64  # the classifier's feature width (the CNN's last layer)


class DDPM:
    """The DDPM noise schedule: ``betas`` linear from ``beta_start`` to ``beta_end``."""

    def __init__(self, steps: int = 500, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        self.steps = steps
        self.betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        self.alphas = 1.0 - self.betas
        self.alpha_bar = torch.cumprod(self.alphas, 0)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise`` (t per example)."""
        ab = self.alpha_bar.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def step(
        self, x_t: torch.Tensor, t: int, eps: torch.Tensor, z: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One reverse step ``x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) /
        sqrt(alpha_t) + sigma_t z`` with ``sigma_t^2 = beta_t`` (no noise at t = 0)."""
        beta, alpha, ab = (float(v[t]) for v in (self.betas, self.alphas, self.alpha_bar))
        mean = (x_t - beta / math.sqrt(1 - ab) * eps) / math.sqrt(alpha)
        if t == 0 or z is None:
            return mean
        return mean + math.sqrt(beta) * z


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embeddings of integer timesteps, ``(n, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], 1)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> 3x3 conv (+ time embedding) -> GroupNorm -> SiLU -> 3x3 conv,
    plus the (1x1-projected) input."""

    def __init__(self, cin: int, cout: int, tdim: int | None = None) -> None:
        super().__init__()
        self.n1, self.c1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.n2, self.c2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.t = nn.Linear(tdim, cout) if tdim else None
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x)))
        if self.t is not None and temb is not None:
            h = h + self.t(temb)[:, :, None, None]
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


class FrequencyModule(nn.Module):
    """FFT2 -> 1x1 conv over (real, imaginary) -> inverse FFT2 (real part) -> 3x3 conv ->
    residual block; added to the input."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.spectral = nn.Conv2d(2 * ch, 2 * ch, 1)
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)
        self.res = ResBlock(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.fft.fft2(x, norm="ortho")
        re, im = self.spectral(torch.cat([f.real, f.imag], 1)).chunk(2, 1)
        y = torch.fft.ifft2(torch.complex(re, im), norm="ortho").real
        return x + self.res(self.conv(y))


class UNet(nn.Module):
    """A small noise-prediction U-Net on ``(n, bands, size, size)`` patches (size % 4 == 0)."""

    def __init__(self, bands: int, width: int = 32) -> None:
        super().__init__()
        w, tdim = width, 4 * width
        self.width = width
        self.time = nn.Sequential(nn.Linear(w, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.inc = nn.Conv2d(bands, w, 3, padding=1)
        self.enc1, self.freq1 = ResBlock(w, w, tdim), FrequencyModule(w)
        self.down1 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.enc2, self.freq2 = ResBlock(2 * w, 2 * w, tdim), FrequencyModule(2 * w)
        self.down2 = nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1)
        self.mid1, self.mid2 = ResBlock(2 * w, 2 * w, tdim), ResBlock(2 * w, 2 * w, tdim)
        self.dec2 = ResBlock(4 * w, 2 * w, tdim)
        self.dec1 = ResBlock(3 * w, w, tdim)
        self.out = nn.Sequential(_norm(w), nn.SiLU(), nn.Conv2d(w, bands, 3, padding=1))

    @property
    def feature_dim(self) -> int:
        """Channels of the middle block (one diffusion feature per timestep)."""
        return 2 * self.width

    def forward(self, x: torch.Tensor, t: torch.Tensor, features: bool = False) -> torch.Tensor:
        """The predicted noise; with ``features`` the pooled middle-block output ``(n, 2w)``
        (the decoder is not run)."""
        temb = self.time(timestep_embedding(t, self.width))
        s1 = self.freq1(self.enc1(self.inc(x), temb))
        s2 = self.freq2(self.enc2(self.down1(s1), temb))
        m = self.mid2(self.mid1(self.down2(s2), temb), temb)
        if features:
            return m.mean((2, 3))
        up = F.interpolate(m, size=s2.shape[-2:], mode="nearest")
        d2 = self.dec2(torch.cat([up, s2], 1), temb)
        up = F.interpolate(d2, size=s1.shape[-2:], mode="nearest")
        return self.out(self.dec1(torch.cat([up, s1], 1), temb))


def resize_patches(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(n, C, k, k)`` -> ``(n, C, size, size)`` (bilinear; a 1 x 1 patch becomes constant)."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class Branch(nn.Module):
    """One modality's classifier branch: raw-patch CNN + projected diffusion features, and
    the modality's own logit head (what a client holding only this modality trains)."""

    def __init__(self, bands: int, num_classes: int, feature_dim: int = 0) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(bands, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, WIDTH, 3, padding=1),
            nn.ReLU(),
        )
        self.proj = nn.Linear(feature_dim, WIDTH) if feature_dim else None
        self.head = zero_linear(WIDTH, num_classes)

    def forward(self, patches: torch.Tensor, diff: torch.Tensor | None = None) -> torch.Tensor:
        h = self.cnn(patches).mean((2, 3))
        if self.proj is not None and diff is not None:
            h = h + F.relu(self.proj(diff))
        return h


def zero_linear(cin: int, cout: int) -> nn.Linear:
    """A logit head starting at zero: an untrained head adds nothing to a sum of logits."""
    layer = nn.Linear(cin, cout)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class FR(nn.Module):
    """``FR(a, b) = a + sigmoid(conv_r(a)) * b + a + sigmoid(conv_c(a)) * b``."""

    def __init__(self, dim: int = WIDTH) -> None:
        super().__init__()
        self.conv_r, self.conv_c = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + torch.sigmoid(self.conv_r(a)) * b + a + torch.sigmoid(self.conv_c(a)) * b


class FusionHead(nn.Module):
    """Cross-branch projections, the three FR blocks and their three logit heads."""

    def __init__(self, num_classes: int, dim: int = WIDTH) -> None:
        super().__init__()
        self.p12, self.p21 = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.fr = nn.ModuleList(FR(dim) for _ in range(3))
        self.heads = nn.ModuleList(zero_linear(dim, num_classes) for _ in range(3))

    def forward(self, h: torch.Tensor, lid: torch.Tensor) -> list[torch.Tensor]:
        x12, x21 = self.p12(h), self.p21(lid)
        pairs = ((h + x21, lid + x12), (h, x12), (x21, lid))
        return [head(fr(a, b)) for fr, head, (a, b) in zip(self.fr, self.heads, pairs, strict=True)]
