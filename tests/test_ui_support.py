"""Helpers shared by the ui tests (no tests here): a tiny image model and an HTTP client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from noisealign.engine import karras_sigmas
from noisealign.methods.base import Problem
from noisealign.methods.demon import DemonConfig
from noisealign.models.gmm import GaussianMixture
from noisealign.rewards.human import HumanChoice
from noisealign.ui.server import TOKEN_HEADER


def _glyphs() -> torch.Tensor:
    """Four 8 x 8 patterns in [-1, 1]: a ring, a bar, a cross stroke and a diagonal."""
    ring = torch.zeros(8, 8)
    ring[1:7, 1:7], ring[2:6, 2:6] = 1, 0
    bar, stroke, diagonal = torch.zeros(8, 8), torch.zeros(8, 8), torch.eye(8)
    bar[:, 3:5] = 1
    stroke[3:5, :] = 1
    return torch.stack([ring, bar, stroke, diagonal]) * 2 - 1


class TinyImages:
    """An exact image model: a Gaussian mixture over 1 x 8 x 8 images around four glyphs.

    The denoiser is the mixture's closed-form E[x0 | x] (models/gmm.py) on flattened images,
    so the ui runs a real Demon loop on images in milliseconds, with no weights.
    """

    name = "tiny-images"
    sample_shape = (1, 8, 8)
    sigma_min, sigma_max = 0.002, 80.0
    default_steps, default_guidance, default_solver = 12, 1.0, "heun"

    def __init__(self) -> None:
        means = _glyphs().flatten(1)
        self.mixture = GaussianMixture(means, torch.full((4,), 0.15), torch.ones(4))

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        return torch.zeros(1, 0)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        return self.mixture.denoise(x.flatten(1), sigma, cond).view_as(x)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return ((x0 + 1) / 2).clamp(0, 1)

    def sigmas(self, steps: int) -> torch.Tensor:
        return karras_sigmas(steps, self.sigma_min, self.sigma_max)

    def prior_std(self, sigma: float) -> float:
        return sigma


def save_reference(folder: Path) -> tuple[str, str]:
    """A reference image (the ring glyph, 32 x 32 RGB) and a tiny random DINOv2 folder: (image, model folder)."""
    from rewards_tiny import save_tiny_dino

    ring = ((_glyphs()[0] + 1) * 127.5).round().byte().numpy()
    Image.fromarray(ring).resize((32, 32), Image.NEAREST).convert("RGB").save(folder / "reference.png")
    save_tiny_dino(folder / "dinov2")
    return str(folder / "reference.png"), str(folder / "dinov2")


def tiny_problem() -> Problem:
    return Problem(TinyImages(), HumanChoice())


SMALL = DemonConfig(K=4, grid_points=8, lookahead_steps=4)
"""A short run: 8 grid points give a handful of demon steps."""


def call(base: str, method: str, path: str, token: str | None, body: Any = None,
         raw: bytes | None = None) -> tuple[int, Any]:
    """One request to the ui server: (status, parsed JSON, or bytes for a zip)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(base + path, data=data, method=method)
    if token is not None:
        request.add_header(TOKEN_HEADER, token)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, payload, kind = response.status, response.read(), response.headers.get("Content-Type")
    except urllib.error.HTTPError as error:
        status, payload, kind = error.code, error.read(), error.headers.get("Content-Type")
    return status, json.loads(payload) if kind == "application/json" else payload


def base_url(server) -> str:
    return f"http://127.0.0.1:{server.port}"
