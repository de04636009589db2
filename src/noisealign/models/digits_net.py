"""The bundled digits denoiser: a small FiLM-conditioned conv net with EDM preconditioning.

Karras et al. 2022 ("EDM"), eq. 7 and Table 1:
    D(x, sigma, y) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma), y),
    c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = ln(sigma) / 4,     sd = sigma_data.
F is a stack of residual 3x3 convolutions at the full 8 x 8 resolution, each block modulated
by a per-channel scale and shift (FiLM, Perez et al. 2018) computed from an embedding of
c_noise plus an embedding of the label y (0..9, or 10 for "no label", the classifier-free
guidance null class). After the first block, one dense residual block over the whole
feature map (with the embedding added at its bottleneck) lets the unconditional model agree
on one digit across the image; without it unconditional samples are blurred mixtures.
Small on purpose: benchmarks call it millions of times on a CPU.
Shared by the training script (scripts/train_digits.py) and DigitsModel.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class DigitsNetConfig:
    """channels: width of every conv; blocks: residual conv blocks; embed: width of the sigma /
    label embedding and of the global block's bottleneck; labels: classes including the null
    label (the last one); sigma_data: EDM's sd."""

    channels: int = 32
    blocks: int = 3
    embed: int = 64
    labels: int = 11
    sigma_data: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def null_label(self) -> int:
        return self.labels - 1


class DigitsDenoiserNet(nn.Module):
    """D(x, sigma, y) for 1 x 8 x 8 states in [-1, 1]; x (B, 1, 8, 8), sigma and y of shape (B,)."""

    def __init__(self, config: DigitsNetConfig = DigitsNetConfig()):
        super().__init__()
        self.config = config
        c, e = config.channels, config.embed
        # Fixed Fourier frequencies of c_noise (ln(sigma)/4 spans about [-1.6, 1.1]).
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.linspace(-1, 4, e // 2), persistent=False)
        self.sigma_embed = nn.Linear(e, e)
        self.label_embed = nn.Embedding(config.labels, e)
        self.film = nn.Linear(e, 2 * c * config.blocks)  # (scale, shift) per block and channel
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(config.blocks))
        self.head = nn.Conv2d(c, 1, 3, padding=1)
        self.mix_in = nn.Linear(c * 64, e)    # the global block: every pixel sees every pixel
        self.mix_out = nn.Linear(e, c * 64)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def raw(self, x_in: Tensor, c_noise: Tensor, labels: Tensor) -> Tensor:
        """F_theta(c_in x, c_noise, y): the network before preconditioning."""
        angles = c_noise[:, None] * self.frequencies
        embedding = F.silu(self.sigma_embed(torch.cat([angles.sin(), angles.cos()], dim=1))
                           + self.label_embed(labels))
        film = self.film(embedding).view(len(x_in), len(self.convs), 2, -1, 1, 1)
        h = self.stem(x_in)
        for i, conv in enumerate(self.convs):
            h = h + conv(F.silu(h * (1 + film[:, i, 0]) + film[:, i, 1]))
            if i == 0:
                h = h + self.mix_out(F.silu(self.mix_in(F.silu(h).flatten(1)) + embedding)).view_as(h)
        return self.head(F.silu(h))

    def forward(self, x: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        sd = self.config.sigma_data
        s = sigma.reshape(-1, 1, 1, 1)
        c_skip = sd ** 2 / (s ** 2 + sd ** 2)
        c_out = s * sd / (s ** 2 + sd ** 2).sqrt()
        c_in = 1 / (s ** 2 + sd ** 2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip * x + c_out * self.raw(c_in * x, c_noise, labels)
