"""One spec per diffusers family: every fact the loader and the wrappers branch on, as data.

A pipeline folder's family is its pipeline class (model_index.json) and, where one class
holds several families, a fact of its network config: SD3.5's transformer has query-key
norms (and, in SD3.5 Medium, dual-attention layers), FLUX.1-dev's a guidance embedding that
FLUX.1-schnell lacks. A few-step model is known from its spec (FLUX.1-schnell), from "turbo"
in its name where the configs are the base model's (SD-Turbo, SDXL-Turbo, SD3.5 Large
Turbo), or from the caller's explicit choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from ..errors import NoiseAlignError
from .diffusers_base import FamilyDefaults
from .diffusers_flow import sd3_network
from .diffusers_flux import flux_network
from .diffusers_text import flux_encoder, sd3_encoder, sd_encoder, sdxl_encoder
from .diffusers_vp import unet_network


@dataclass(frozen=True)
class FamilySpec:
    """What one diffusers family is.

    name: the family's name in errors and docs.
    pipeline_class: the `_class_name` of its model_index.json.
    matches: whether a network config of that pipeline class is this family (the first
        matching spec of FAMILIES wins).
    network: the pipeline attribute of the denoiser network ("unet" or "transformer").
    text_encoders: the pipeline components its prompt encoding needs (checked at load).
    encoder: (pipe, height, width) -> the prompt encoder; its dict's keys are the network's
        text inputs, pooled embeddings included (diffusers_text.py).
    network_call: network module -> the network behind the uniform call (diffusers_base.Network).
    flow: the network predicts the flow velocity (else epsilon, v or sample, as the
        scheduler config says, on the VP schedule).
    timestep_scale: flow only: the network's timestep is timestep_scale * t (SD3: 1000, FLUX: 1).
    linspace_times: flow only: the pipeline hands its scheduler t = linspace(1, 1/n, n) to
        shift (FLUX) rather than letting it space the times itself (SD3).
    packing: latent cells per token side packed before the network (FLUX's 2x2), else 1.
    default_size: latent side when the network config has no sample_size (FLUX: 128).
    defaults: the plain sampler's steps and guidance.
    turbo_defaults: those of its few-step (Turbo) distillations; None: it has none.
    few_step: the family is itself a few-step distillation (FLUX.1-schnell).
    guidance: "cfg" (classifier-free, with a negative prompt), "distilled" (the guidance
        scale is a network input, one call) or "none".
    vae_shift: latents decode as x0 / scaling_factor + shift_factor (else x0 / scaling_factor).
    vae_latents_stats: the pipeline denormalizes with the VAE's latents_mean / latents_std
        where its config has them (SDXL).
    safety_checker: the pipeline class takes a safety checker (dropped at load).
    """

    name: str
    pipeline_class: str
    matches: Callable[[dict], bool]
    network: str
    text_encoders: tuple[str, ...]
    encoder: Callable
    network_call: Callable
    flow: bool
    defaults: FamilyDefaults
    guidance: str = "cfg"
    timestep_scale: float = 1000.0
    linspace_times: bool = False
    packing: int = 1
    default_size: int | None = None
    turbo_defaults: FamilyDefaults | None = None
    few_step: bool = False
    vae_shift: bool = False
    vae_latents_stats: bool = False
    safety_checker: bool = False

    def defaults_for(self, few_step: bool) -> FamilyDefaults:
        """The plain sampler's settings of this family, or of its few-step distillation."""
        if few_step and not self.few_step and self.turbo_defaults is not None:
            return self.turbo_defaults
        return self.defaults


def _always(config: dict) -> bool:
    return True


# Turbo models: few steps without guidance (diffusers' guidance_scale=0.0 means no CFG, our 1.0).
SD_TURBO = FamilyDefaults(steps=1, guidance=1.0)
SD3_TURBO = FamilyDefaults(steps=4, guidance=1.0)
_SD3 = dict(pipeline_class="StableDiffusion3Pipeline", network="transformer",
            text_encoders=("text_encoder", "text_encoder_2"), encoder=sd3_encoder, network_call=sd3_network,
            flow=True, turbo_defaults=SD3_TURBO, vae_shift=True)
_FLUX = dict(pipeline_class="FluxPipeline", network="transformer", text_encoders=("text_encoder", "text_encoder_2"),
             network_call=flux_network, flow=True, timestep_scale=1.0, linspace_times=True, packing=2,
             default_size=128, vae_shift=True)

FAMILIES = (
    FamilySpec("sd", pipeline_class="StableDiffusionPipeline", matches=_always, network="unet",
               text_encoders=("text_encoder",), encoder=sd_encoder, network_call=unet_network, flow=False,
               defaults=FamilyDefaults(50, 7.5), turbo_defaults=SD_TURBO, safety_checker=True),
    FamilySpec("sdxl", pipeline_class="StableDiffusionXLPipeline", matches=_always, network="unet",
               text_encoders=("text_encoder", "text_encoder_2"), encoder=sdxl_encoder, network_call=unet_network,
               flow=False, defaults=FamilyDefaults(50, 5.0), turbo_defaults=SD_TURBO, vae_latents_stats=True),
    # SD3.5: the model cards' settings (the pipeline's own defaults are SD3's 28 steps, 7.0).
    FamilySpec("sd3.5-medium", matches=lambda config: bool(config.get("dual_attention_layers")),
               defaults=FamilyDefaults(40, 4.5), **_SD3),
    FamilySpec("sd3.5-large", matches=lambda config: config.get("qk_norm") is not None,
               defaults=FamilyDefaults(28, 3.5), **_SD3),
    FamilySpec("sd3", matches=_always, defaults=FamilyDefaults(28, 7.0), **_SD3),
    # FLUX.1-schnell: its model card's 256 T5 tokens (FluxPipeline's default is 512).
    FamilySpec("flux-dev", matches=lambda config: bool(config.get("guidance_embeds")), guidance="distilled",
               encoder=partial(flux_encoder, max_sequence_length=512), defaults=FamilyDefaults(28, 3.5), **_FLUX),
    FamilySpec("flux-schnell", matches=_always, guidance="none", few_step=True,
               encoder=partial(flux_encoder, max_sequence_length=256), defaults=FamilyDefaults(4, 1.0), **_FLUX),
)


def families_of(pipeline_class: str, name: str) -> tuple[FamilySpec, ...]:
    """The specs of one pipeline class (they share the network attribute); an error for a class
    noisealign does not run."""
    specs = tuple(spec for spec in FAMILIES if spec.pipeline_class == pipeline_class)
    if not specs:
        known = ", ".join(dict.fromkeys(spec.pipeline_class for spec in FAMILIES))
        raise NoiseAlignError(f"{name} is a {pipeline_class or 'unknown'} pipeline; noisealign runs {known}")
    return specs


def matching_family(specs: tuple[FamilySpec, ...], network_config: dict) -> FamilySpec:
    """The first of one pipeline class's specs that its network config matches (the last
    spec of each class matches every config of it)."""
    return next(spec for spec in specs if spec.matches(network_config))


def is_few_step(spec: FamilySpec, name: str, override: bool | None = None) -> bool:
    """Whether a model is a few-step distillation: `override` if given, else its spec's word
    (FLUX.1-schnell), else "turbo" in its name for families with Turbo distillations."""
    if override is not None:
        return override
    return spec.few_step or (spec.turbo_defaults is not None and "turbo" in Path(name).name.lower())
