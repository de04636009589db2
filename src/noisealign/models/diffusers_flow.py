"""Rectified-flow models (SD3, SD3.5, FLUX) as EDM denoisers.

Flow matching interpolates x_t = (1 - t) x0 + t eps and the transformer predicts the
velocity v = eps - x0 at timestep t (in its family's units: 1000 t for SD3, t for FLUX).
In EDM terms (Karras et al. 2022): sigma = t / (1 - t), x = x_t / (1 - t) = x0 + sigma eps,
and x0 = x_t - t v, so
    D(x, sigma) = x_t - t v(x_t, t),   x_t = x / (1 + sigma),   t = sigma / (1 + sigma).
An Euler step in sigma is then exactly the flow's Euler step x_t' = x_t + (t' - t) v.

Stochastic sampling keeps the flow's marginals with no new step: x has the marginal
x0 + sigma eps of every EDM model, so the engine's ancestral / DDIM-eta step and Demon's
beta-SDE apply unchanged on x. Multiplied by 1 - t' = 1 / (1 + sigma'), an ancestral step
x' = D + sigma_down eps_hat + sigma_up z is the flow's own DDIM-eta step
    x_t' = (1 - t') D + t' (sqrt(1 - c^2) eps_hat + c z),   c = sigma_up / sigma',
with eps_hat = (x - D) / sigma = (x_t - (1 - t) D) / t (tests/test_diffusers_flux.py checks
both the identity and the marginals).

t = 1 (pure noise, where diffusers' sampler starts) is sigma = infinity, which a float
state cannot step from. The grid starts instead at sigma_max = 1e4 (t = 1 - 1e-4), where
x = (1 + sigma_max) z makes x_t = z exactly and the transformer is evaluated at t = 1, the
timestep it was trained on. The first Euler step then differs from the flow's by
(z - D) / sigma_max ~ 1e-4 in x_t, with float32 rounding of the same order.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..engine import karras_sigmas
from ..errors import NoiseAlignError
from .base import Conditioning
from .diffusers_base import LatentDiffusionModel, as_image_shape, check_choice, per_sample

FLOW_SCHEDULERS = ("euler", "karras")
SIGMA_AT_T1 = 1e4
"""sigma that stands for t = 1 (see the module docstring)."""


class FlowDiffusersModel(LatentDiffusionModel):
    """A flow-matching transformer (velocity prediction) behind D(x, sigma, cond).

    Args beyond LatentDiffusionModel's:
        scheduler_config: the checkpoint's FlowMatchEulerDiscreteScheduler config (its shift).
        scheduler: "euler" (FlowMatchEulerDiscreteScheduler's grid, shift included) or "karras".
        image_tokens: latent tokens per image, for schedulers that shift with the resolution
            (use_dynamic_shifting).
        timestep_scale: the network's timestep is timestep_scale * t.
        linspace_times: the pipeline hands the scheduler t = linspace(1, 1/n, n) to shift
            (FLUX) instead of letting it space n times itself (SD3).
    """

    sigma_max = SIGMA_AT_T1

    def __init__(self, *args, scheduler_config: dict, scheduler: str, image_tokens: int,
                 timestep_scale: float = 1000.0, linspace_times: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        from diffusers import FlowMatchEulerDiscreteScheduler

        check_choice("scheduler", scheduler, FLOW_SCHEDULERS, self.name)
        self.scheduler = scheduler
        self.timestep_scale, self.linspace_times = timestep_scale, linspace_times
        self._flow = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
        self._shift_kwargs = _resolution_shift(self._flow.config, image_tokens)
        t_min = self._flow.sigma_min  # the smallest trained t (after the shift)
        self.sigma_min = t_min / (1 - t_min)

    def denoise(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        sigma = per_sample(sigma, x)
        t = torch.where(sigma >= self.sigma_max, torch.ones_like(sigma), sigma / (1 + sigma))
        x_t = x / as_image_shape(1 + sigma)
        velocity = self._run_network(x_t, t * self.timestep_scale, cond)
        return x_t - as_image_shape(t) * velocity

    def sigmas(self, steps: int) -> Tensor:
        """The plain grid (float64): the pipeline's flow-matching Euler times t_i (shifted), as
        sigma_i = t_i / (1 - t_i) with t = 1 at sigma_max, then 0."""
        if steps < 1:
            raise NoiseAlignError(f"steps must be at least 1, got {steps}")
        if self.scheduler == "karras":
            return karras_sigmas(steps, self.sigma_min, self.sigma_max)
        if self.linspace_times:
            self._flow.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), **self._shift_kwargs)
        else:
            self._flow.set_timesteps(steps, **self._shift_kwargs)
        t = self._flow.sigmas.double()
        return torch.where(t < 1, t / (1 - t), torch.full_like(t, self.sigma_max))

    def prior_std(self, sigma: float) -> float:
        """x_T = (1 + sigma) z, i.e. x_t = z: the flow's prior at t = 1, diffusers' initial latent."""
        return 1 + sigma


def _resolution_shift(config, image_tokens: int) -> dict:
    """{"mu": ...} for schedulers that shift with the resolution, else no kwargs: mu grows
    linearly with the token count, from base_shift at base_image_seq_len tokens to max_shift
    at max_image_seq_len (SD3's and FLUX's pipelines)."""
    if not config.get("use_dynamic_shifting", False):
        return {}
    low, high = config["base_image_seq_len"], config["max_image_seq_len"]
    slope = (config["max_shift"] - config["base_shift"]) / (high - low)
    return {"mu": config["base_shift"] + slope * (image_tokens - low)}


def sd3_network(transformer):
    """The SD3 / SD3.5 transformer behind the uniform call (timestep in the scheduler's units, 1000 t)."""
    def network(x_in: Tensor, timestep: Tensor, cond: dict) -> Tensor:
        return transformer(hidden_states=x_in, timestep=timestep.to(x_in.dtype),
                           encoder_hidden_states=cond["encoder_hidden_states"],
                           pooled_projections=cond["pooled_projections"], return_dict=False)[0]

    return network
