"""Random-weight denoisers of realistic cost for benchmarks (the cost is the same as trained weights')."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from noisealign.engine import karras_sigmas


class _Block(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(8, channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.scale = nn.Linear(channels, channels)

    def forward(self, h: Tensor, embedding: Tensor) -> Tensor:
        return h + self.conv(torch.nn.functional.silu(self.norm(h) * (1 + self.scale(embedding)[..., None, None])))


class RandomConvDenoiser(nn.Module):
    """A mid-size conv net with EDM preconditioning: `blocks` residual blocks at `channels` width."""

    def __init__(self, shape=(4, 32, 32), channels: int = 128, blocks: int = 6, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.name, self.sample_shape = "random-conv", tuple(shape)
        self.sigma_min, self.sigma_max, self.default_steps = 0.002, 80.0, 32
        self.default_guidance, self.default_solver, self.sigma_data = 1.0, "heun", 0.5
        self.embed = nn.Linear(1, channels)
        self.inp = nn.Conv2d(shape[0], channels, 3, padding=1)
        self.blocks = nn.ModuleList(_Block(channels) for _ in range(blocks))
        self.out = nn.Conv2d(channels, shape[0], 3, padding=1)
        self.requires_grad_(False)

    def encode_prompt(self, prompt: str) -> Tensor:
        return torch.zeros(1, 0)

    def denoise(self, x: Tensor, sigma: Tensor, cond) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1).expand(len(x), 1, 1, 1)
        total = sigma ** 2 + self.sigma_data ** 2
        c_skip, c_out, c_in = self.sigma_data ** 2 / total, sigma * self.sigma_data / total.sqrt(), 1 / total.sqrt()
        embedding = self.embed(sigma.log().flatten(1) / 4)
        h = self.inp(c_in * x)
        for block in self.blocks:
            h = block(h, embedding)
        return c_skip * x + c_out * self.out(h)

    def decode(self, x0: Tensor) -> Tensor:
        return x0

    def sigmas(self, steps: int) -> Tensor:
        return karras_sigmas(steps, self.sigma_min, self.sigma_max)

    def prior_std(self, sigma: float) -> float:
        return sigma
