"""The one model contract every method drives: an EDM denoiser plus its decoder.

Notation (Karras et al. 2022, "EDM"): a noisy state is x = x0 + sigma * eps, and the
denoiser D(x, sigma, cond) estimates E[x0 | x]. Every model family (the bundled digits
net, the analytic Gaussian mixture, diffusers' Stable Diffusion pipelines) is wrapped so
that it speaks this parameterization; methods never know which family they drive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..errors import NoiseAlignError

Conditioning = Any
"""A model's encoded prompt: a tensor or a dict of tensors whose leading dimension is 1.

Methods align one prompt at a time, so the conditioning of one prompt is broadcast over
every sample and candidate of a batch by the model itself.
"""


@runtime_checkable
class DiffusionModel(Protocol):
    """A pretrained diffusion model seen through the EDM parameterization.

    Attributes:
        name: registry name or hub id, written to result.json.
        sample_shape: shape of one state x (without batch), e.g. (1, 8, 8) or (4, 64, 64).
        sigma_min, sigma_max: the noise range the model was trained on.
        default_steps: grid points of the plain sampler.
        default_guidance: guidance scale of the plain sampler (for "cfg", 1 = none).
        default_solver: the plain sampler's ODE solver, "euler" (= DDIM) or "heun".

    Optional (`guidance_kind_of` reads it, "cfg" when absent):
        guidance_kind: how a guidance scale reaches the network. "cfg" (the default):
            classifier-free guidance against a negative prompt, two evaluations per call;
            "distilled": the network takes the scale as an input (FLUX.1-dev's guidance
            embedding), one evaluation, set by `embed_guidance(cond, guidance)`; "none": the
            model takes no guidance (FLUX.1-schnell).
    """

    name: str
    sample_shape: tuple[int, ...]
    sigma_min: float
    sigma_max: float
    default_steps: int
    default_guidance: float
    default_solver: str

    def encode_prompt(self, prompt: str) -> Conditioning:
        """Encode one prompt (once per run); "" is the unconditional prompt."""

    def denoise(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        """D(x, sigma, cond): the clean-state estimate; sigma is a 0-d or (B,) tensor."""

    def decode(self, x0: Tensor) -> Tensor:
        """Clean states to the outputs rewards score (images in [0, 1], B x C x H x W)."""

    def sigmas(self, steps: int) -> Tensor:
        """The plain sampler's grid: `steps` decreasing sigmas, then the last sigma: 0, or where the
        mimicked scheduler stops (diffusers' DDIM with set_alpha_to_one=False ends at sigma ~0.029)."""

    def prior_std(self, sigma: float) -> float:
        """Scale of x_T = prior_std(sigma_T) * z: sigma for EDM models, sqrt(1 + sigma^2) for VP ones."""


GUIDANCE_KINDS = ("cfg", "distilled", "none")


def guidance_kind_of(model: DiffusionModel) -> str:
    """The model's `guidance_kind`; "cfg" for models that do not say (digits, gmm)."""
    return getattr(model, "guidance_kind", "cfg")


@dataclass(frozen=True)
class Denoiser:
    """D(x, sigma) for one prompt, its guidance folded in.

    With `uncond`, classifier-free guidance: D = D_uncond + guidance * (D_cond - D_uncond)
    (Ho & Salimans 2022, written on x0; it is the same affine combination as on eps), both
    halves run as one batch. Without, one call on `cond`, which already holds whatever
    guidance the model takes as an input (see make_denoiser).
    """

    model: DiffusionModel
    cond: Conditioning
    uncond: Conditioning | None = None
    guidance: float = 1.0

    def __call__(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if self.uncond is None or self.guidance == 1.0:
            return self.model.denoise(x, sigma, self.cond)
        both = self.model.denoise(torch.cat([x, x]), _repeat_sigma(sigma, 2),
                                  _stack_conditions(self.cond, self.uncond, len(x)))
        d_cond, d_uncond = both.chunk(2)
        return d_uncond + self.guidance * (d_cond - d_uncond)

    @property
    def evaluations_per_call(self) -> int:
        """Network evaluations per sample in one call (2 with classifier-free guidance)."""
        return 1 if self.uncond is None or self.guidance == 1.0 else 2


def check_guidance(model: DiffusionModel, guidance: float | None, negative_prompt: str = "") -> None:
    """Refuse what the model's kind of guidance cannot use: a negative prompt without
    classifier-free guidance, a scale other than 1 for a model without guidance. Cheap (no
    encoding), so a caller can check before a run starts; make_denoiser checks again."""
    kind = guidance_kind_of(model)
    if kind != "cfg" and negative_prompt:
        raise NoiseAlignError(f"{model.name} has no classifier-free guidance (its guidance is {kind!r}), so it takes "
                              "no negative prompt; drop --negative-prompt")
    if kind == "none" and guidance not in (None, 1.0):
        raise NoiseAlignError(f"{model.name} takes no guidance (a timestep-distilled model without a guidance "
                              f"embedding), got --guidance {guidance}; drop --guidance")


def make_denoiser(model: DiffusionModel, prompt: str, guidance: float | None = None,
                  negative_prompt: str = "") -> Denoiser:
    """Encode a prompt once and bind it to the model with the model's kind of guidance.

    "cfg": the negative prompt is encoded too, unless guidance is 1 or it equals the prompt
    (then D_cond == D_uncond exactly). "distilled": the guidance scale goes into the
    conditioning, one network call. "none": only guidance 1 (or None). A negative prompt is
    refused where the model has no classifier-free guidance to use it in.
    """
    check_guidance(model, guidance, negative_prompt)
    guidance = model.default_guidance if guidance is None else guidance
    kind = guidance_kind_of(model)
    cond = model.encode_prompt(prompt)
    if kind == "distilled":
        return Denoiser(model, model.embed_guidance(cond, guidance))
    if kind == "none" or guidance == 1.0 or prompt == negative_prompt:
        return Denoiser(model, cond)
    return Denoiser(model, cond, model.encode_prompt(negative_prompt), guidance)


def _repeat_sigma(sigma: Tensor, times: int) -> Tensor:
    return sigma if sigma.ndim == 0 else sigma.repeat(times)


def _stack_conditions(cond: Conditioning, uncond: Conditioning, batch: int) -> Conditioning:
    """Conditioning for [x; x]: the prompt for the first half, the negative for the second."""
    if isinstance(cond, dict):
        return {k: _stack_conditions(cond[k], uncond[k], batch) for k in cond}
    return torch.cat([cond.expand(batch, *cond.shape[1:]), uncond.expand(batch, *uncond.shape[1:])])


def broadcast_condition(cond: Conditioning, batch: int) -> Conditioning:
    """Expand a batch-1 conditioning (tensor or dict of tensors) to `batch` rows."""
    if isinstance(cond, dict):
        return {k: broadcast_condition(v, batch) for k, v in cond.items()}
    if cond.shape[0] == batch:
        return cond
    return cond.expand(batch, *cond.shape[1:])
