"""What every diffusers family shares: the prompt encoded once, the VAE decode, the network boundary.

A parameterization (diffusers_vp: SD 1.x/2.x/SDXL/Turbo; diffusers_flow: SD3, SD3.5, FLUX)
adds the one thing that differs, how its network's output becomes the EDM denoiser
D(x, sigma, cond), and its grids; a family's other facts are its spec (diffusers_families).
The sampler's state stays in float32 (or whatever the caller integrates in); only the
network's input is cast to the model's dtype and its output cast back (as EDM does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..errors import NoiseAlignError
from .base import GUIDANCE_KINDS, Conditioning, broadcast_condition

PROMPT_CACHE = 8
"""Prompts whose encodings a model keeps (`LatentDiffusionModel.encode_prompt`)."""

Network = Callable[[Tensor, Tensor, dict], Tensor]
"""network(x_in, timestep, cond) -> raw output (eps, v or flow velocity), one row per sample."""


@dataclass(frozen=True)
class FamilyDefaults:
    """The plain sampler's settings, as diffusers' pipeline defaults for the family."""

    steps: int
    guidance: float


class LatentDecoder:
    """Latents (the scaled state x0) to images in [0, 1], as the family's pipeline decodes them.

    z = x0 / scaling_factor, plus shift_factor where the family shifts (SD3, FLUX: `shift`);
    where it reads latent statistics (SDXL: `latents_stats`) and the VAE config has them,
    z = x0 * latents_std / scaling_factor + latents_mean instead. Then image =
    (vae.decode(z) + 1) / 2 clamped to [0, 1]. Decoded `chunk` samples at a time to bound
    memory; differentiable (the caller chooses no_grad or not). A float16 VAE whose config
    asks for it (force_upcast) decodes in float32, as the SDXL pipeline does.
    """

    def __init__(self, vae, shift: bool = False, latents_stats: bool = False, chunk: int = 4):
        self.vae, self.chunk = vae, chunk
        config = vae.config
        self.scaling = config.scaling_factor
        self.shift = (getattr(config, "shift_factor", None) or 0.0) if shift else 0.0
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        self.mean_std = None if not latents_stats or mean is None or std is None else (
            torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1))
        if vae.dtype == torch.float16 and getattr(config, "force_upcast", False):
            vae.to(torch.float32)

    def __call__(self, x0: Tensor) -> Tensor:
        return torch.cat([self._decode(chunk) for chunk in x0.split(self.chunk)])

    def _decode(self, x0: Tensor) -> Tensor:
        if self.mean_std is not None:
            mean, std = (t.to(x0) for t in self.mean_std)
            latents = x0 * std / self.scaling + mean
        else:
            latents = x0 / self.scaling + self.shift
        image = self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)


class LatentDiffusionModel:
    """The shared half of a diffusers-backed DiffusionModel (see models/base.py).

    Args:
        name: hub id or folder, written to result.json.
        network: the UNet / transformer behind a uniform call (see `Network`).
        encoder: prompt -> batch-1 conditioning dict (run once per prompt, without gradient).
        decoder: clean latents -> images.
        sample_shape: (channels, height / f, width / f), f the VAE's downsampling factor.
        defaults: the plain sampler's steps and guidance.
        few_step: a distilled few-step model (SD-Turbo, SDXL-Turbo, FLUX.1-schnell): its D is
            already a one-step generator, which Demon's `consistency` look-ahead uses.
        guidance_kind: how a guidance scale reaches the network (models/base.py): "cfg",
            "distilled" (FLUX.1-dev's guidance embedding) or "none" (FLUX.1-schnell).
    """

    default_solver = "euler"  # one Euler step of the PF-ODE is DDIM(eta=0)

    def __init__(self, name: str, network: Network, encoder: Callable[[str], Conditioning],
                 decoder: Callable[[Tensor], Tensor], sample_shape: tuple[int, ...], defaults: FamilyDefaults,
                 device: torch.device, dtype: torch.dtype, few_step: bool = False, guidance_kind: str = "cfg"):
        self.name, self.network, self.encoder, self.decoder = name, network, encoder, decoder
        self.sample_shape = sample_shape
        self.default_steps, self.default_guidance = defaults.steps, defaults.guidance
        self.device, self.dtype = device, dtype
        self.supports_consistency = few_step
        check_choice("guidance kind", guidance_kind, GUIDANCE_KINDS, name)
        self.guidance_kind = guidance_kind
        self._encoded: dict[str, Conditioning] = {}     # prompt -> conditioning, least recent first

    def encode_prompt(self, prompt: str) -> Conditioning:
        """The pipeline's own text encoding of one prompt; "" is the unconditional prompt.
        A guidance-distilled model's conditioning holds its default guidance scale.

        The last PROMPT_CACHE prompts' encodings are kept: every run encodes its prompt and
        negative prompt (a grid or sweep cell twice: baseline and method), and a T5 encoder
        costs as much as several denoiser calls. Callers never write into a conditioning."""
        cond = self._encoded.pop(prompt, None)
        if cond is None:
            with torch.no_grad():
                cond = self.encoder(prompt)
            if self.guidance_kind == "distilled":
                cond = self.embed_guidance(cond, self.default_guidance)
        self._encoded[prompt] = cond                     # the most recent last
        while len(self._encoded) > PROMPT_CACHE:
            self._encoded.pop(next(iter(self._encoded)))
        return cond

    def decode(self, x0: Tensor) -> Tensor:
        return self.decoder(x0)

    def embed_guidance(self, cond: Conditioning, guidance: float) -> Conditioning:
        """The conditioning with the guidance scale a guidance-distilled network is told
        (FLUX.1-dev's guidance embedding: one network call, no negative prompt)."""
        if self.guidance_kind != "distilled":
            raise NoiseAlignError(f"{self.name} has no guidance embedding (its guidance is {self.guidance_kind!r})")
        return {**cond, "guidance": torch.tensor([guidance], dtype=torch.float32, device=self.device)}

    def consistency_estimate(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        """c_consistency(x, sigma): the distilled model's one-step clean sample.

        Adversarially distilled Turbo models are trained so that D(x, sigma) is a sharp
        sample rather than the blurry posterior mean a base model's D is, so one call
        suffices. Only few-step models have one (`supports_consistency`).
        """
        if not self.supports_consistency:
            raise NoiseAlignError(f"{self.name} is not a few-step (Turbo, schnell) model, so it has no consistency "
                                  "estimate; use the ode or tweedie look-ahead")
        return self.denoise(x, sigma, cond)

    def denoise(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        raise NotImplementedError

    def _run_network(self, x_in: Tensor, timestep: Tensor, cond: Conditioning) -> Tensor:
        """The network at the model's dtype on a batch; the output comes back in x_in's dtype."""
        cond = {k: v.to(self.dtype) for k, v in broadcast_condition(cond, len(x_in)).items()}
        out = self.network(x_in.to(self.dtype), timestep, cond)
        return out.to(x_in.dtype)


def check_choice(what: str, value: str, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise NoiseAlignError(f"unknown {what} {value!r} for {name}; choose from {', '.join(choices)}")


def per_sample(sigma: Tensor | float, x: Tensor) -> Tensor:
    """sigma as a (B,) tensor in x's dtype and device (a 0-d sigma is shared by the batch)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.expand(len(x)) if sigma.ndim == 0 else sigma


def as_image_shape(values: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1), to broadcast a per-sample scalar over a latent."""
    return values.reshape(-1, 1, 1, 1)
