"""Stable Diffusion 1.x / 2.x / SDXL (and their Turbo distillations) as EDM denoisers.

A DDPM (variance-preserving) latent x_vp at timestep t has x_vp = sqrt(abar_t) x0 +
sqrt(1 - abar_t) eps. In EDM terms (Karras et al. 2022, table 1):
sigma = sqrt((1 - abar) / abar) and x = x_vp sqrt(1 + sigma^2) = x0 + sigma eps. The UNet
sees x / sqrt(1 + sigma^2) at the timestep of sigma and predicts
    eps:       D = x - sigma eps_pred
    v:         D = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) v_pred
    sample:    D = x0_pred.
The plain grids reproduce diffusers' schedulers: "ddim" (DDIMScheduler, eta = 0 is one Euler
step of the PF-ODE per timestep) and "euler" (EulerDiscreteScheduler), both read off
diffusers' own scheduler classes built from the checkpoint's scheduler config; "karras"
(Karras et al. eq. 5 between sigma_min and sigma_max) for samplers that want it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..engine import karras_sigmas, vp_sigmas_from_alphas_cumprod
from ..errors import NoiseAlignError
from .base import Conditioning
from .diffusers_base import LatentDiffusionModel, as_image_shape, check_choice, per_sample

VP_SCHEDULERS = ("ddim", "euler", "karras")
PREDICTIONS = ("epsilon", "v_prediction", "sample")


class VPDiffusersModel(LatentDiffusionModel):
    """A diffusers UNet (epsilon, v or sample prediction) behind D(x, sigma, cond).

    Args beyond LatentDiffusionModel's:
        scheduler_config: the checkpoint's scheduler config (betas, timestep spacing, ...).
        scheduler: which diffusers scheduler `sigmas(steps)` and `prior_std` reproduce:
            "ddim", "euler" or "karras".
    """

    def __init__(self, *args, scheduler_config: dict, scheduler: str, **kwargs):
        super().__init__(*args, **kwargs)
        from diffusers import DDIMScheduler, EulerDiscreteScheduler

        check_choice("scheduler", scheduler, VP_SCHEDULERS, self.name)
        self.prediction = scheduler_config.get("prediction_type", "epsilon")
        if self.prediction not in PREDICTIONS:
            raise NoiseAlignError(f"{self.name} predicts {self.prediction!r}, which noisealign does not "
                                  f"convert; supported: {', '.join(PREDICTIONS)}")
        self.scheduler = scheduler
        self._ddim = DDIMScheduler.from_config(scheduler_config)
        self._euler = EulerDiscreteScheduler.from_config(scheduler_config)
        # Zero-terminal-SNR schedules have abar_T = 0 (sigma = inf); diffusers' Euler clamps
        # abar_T to 2^-24, and so do we (through its alphas_cumprod).
        self.alphas_cumprod = self._euler.alphas_cumprod.to(torch.float64)
        # The training sigmas, rounded to float32: a grid point the denoiser receives as a
        # float32 tensor then lands exactly on its integer timestep.
        self.train_sigmas = vp_sigmas_from_alphas_cumprod(self.alphas_cumprod).float().double()
        self.sigma_min = float(self.train_sigmas[0])
        self.sigma_max = float(self.train_sigmas[-1])
        # DDIM's samples end at sigma_f = sigma(final_alpha_cumprod) (0.029 with SD's configs),
        # where diffusers decodes the VP latent x / sqrt(1 + sigma_f^2): decode applies the
        # same factor (1 - 4e-4), so plain equals diffusers exactly (on a clean x0 it is a
        # 0.04% rescaling).
        final = float(_sigma(self._ddim.final_alpha_cumprod)) if scheduler == "ddim" else 0.0
        self.decode_scale = 1 / math.sqrt(1 + final ** 2)  # 1 unless DDIM ends above 0

    def timestep(self, sigma: Tensor) -> Tensor:
        """The UNet timestep t(sigma): the piecewise-linear inverse of sigma(t) over integer t.

        Diffusers' Euler interpolates sigma linearly between integer timesteps, so this
        inverse returns its (possibly fractional) timesteps, and DDIM's integers, exactly.
        Sigmas outside the trained range clamp to t = 0 or T - 1.
        """
        table = self.train_sigmas.to(sigma.device)
        s = sigma.double().clamp(table[0], table[-1])
        upper = torch.searchsorted(table, s).clamp(1, len(table) - 1)
        lower = upper - 1
        fraction = (s - table[lower]) / (table[upper] - table[lower])
        return (lower + fraction).float()

    def denoise(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        sigma = per_sample(sigma, x)
        s = as_image_shape(sigma)
        c_in = 1 / (1 + s ** 2).sqrt()                  # x_vp = x / sqrt(1 + sigma^2)
        out = self._run_network(x * c_in, self.timestep(sigma), cond)
        if self.prediction == "epsilon":
            return x - s * out
        if self.prediction == "v_prediction":
            return x * c_in ** 2 - s * c_in * out
        return out

    def decode(self, x0: Tensor) -> Tensor:
        return self.decoder(x0 * self.decode_scale)

    def sigmas(self, steps: int) -> Tensor:
        """The plain grid of `steps` points (float64), for the model's scheduler.

        ddim: sigma at each DDIM timestep, then the sigma DDIM's last step lands on:
        final_alpha_cumprod's (0 with set_alpha_to_one; SD's configs leave it False, so the
        grid then ends at sigma(abar_0) ~ 0.029, as diffusers' DDIM does, not at 0). Where
        DDIM's step target t - T // steps is not its next timestep (a spacing whose stride
        does not divide T), the grid keeps each state's sigma equal to the timestep the UNet
        is told, and so departs from diffusers there.
        euler: EulerDiscreteScheduler's sigmas, ending in 0.
        """
        if steps < 1:
            raise NoiseAlignError(f"steps must be at least 1, got {steps}")
        if self.scheduler == "karras":
            return karras_sigmas(steps, self.sigma_min, self.sigma_max)
        if self.scheduler == "euler":
            self._euler.set_timesteps(steps)
            return self._euler.sigmas.double()
        self._ddim.set_timesteps(steps)
        final = _sigma(self._ddim.final_alpha_cumprod)
        return torch.cat([self.train_sigmas[self._ddim.timesteps], final.reshape(1)])

    def prior_std(self, sigma: float) -> float:
        """x_T = prior_std * z, z the pipeline's initial latent.

        DDIM starts from x_vp = z, i.e. x = sqrt(1 + sigma^2) z; Euler scales z by its
        init_noise_sigma: sigma_max with 'linspace' / 'trailing' spacing, else sqrt(1 + sigma_max^2).
        """
        spacing = self._euler.config.timestep_spacing
        if self.scheduler == "euler" and spacing in ("linspace", "trailing"):
            return sigma
        return math.sqrt(1 + sigma ** 2)


def _sigma(alpha_cumprod: Tensor) -> Tensor:
    """sigma of one abar, rounded to float32 like the training table."""
    return vp_sigmas_from_alphas_cumprod(alpha_cumprod.reshape(1)).float().double()[0]


def unet_network(unet):
    """The UNet behind the uniform call; SDXL's added conditioning goes in added_cond_kwargs."""
    def network(x_in: Tensor, timestep: Tensor, cond: dict) -> Tensor:
        added = {k: cond[k] for k in ("text_embeds", "time_ids") if k in cond}
        return unet(x_in, timestep, encoder_hidden_states=cond["encoder_hidden_states"],
                    added_cond_kwargs=added or None, return_dict=False)[0]

    return network

