"""Whole sampling loops over an explicit sigma grid, k-diffusion style.

`denoiser(x, sigma) -> x0 estimate` is any callable (guidance already folded in).
`sigmas` is decreasing and ends in 0. Stochastic samplers take their per-step noises as a
sequence of tensors, one per step that injects noise, so a sample is a deterministic
function of (x_T, noises): DNO optimizes them, Demon chooses them, Best-of-N resamples them.
No `no_grad` here: gradients are the caller's choice.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor

from .steps import ancestral_step, beta_sde_step, euler_step, heun_correct

DenoiserFn = Callable[[Tensor, float], Tensor]
StepCallback = Callable[[int, float, Tensor, Tensor], None]
"""callback(step index, sigma, x at sigma, denoised at sigma)."""


def sample_ode(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, solver: str = "heun",
               callback: StepCallback | None = None) -> Tensor:
    """Integrate the PF-ODE along `sigmas` (EDM Algorithm 1 for 'heun'; DDIM(eta=0) for 'euler').

    Heun corrects every step except the last one into sigma = 0, where the slope is undefined.
    """
    if solver not in ("euler", "heun"):
        raise ValueError(f"unknown ODE solver {solver!r}; use 'euler' or 'heun'")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sigma)
        if callback is not None:
            callback(i, sigma, x, denoised)
        x_next = euler_step(x, sigma, sigma_next, denoised)
        if solver == "heun" and sigma_next > 0:
            x_next = heun_correct(x, sigma, sigma_next, denoised, x_next, denoiser(x_next, sigma_next))
        x = x_next
    return x


def sample_ancestral(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, noises: Sequence[Tensor],
                     eta: float = 1.0, callback: StepCallback | None = None) -> Tensor:
    """DDIM-eta / ancestral sampling; noises[i] is the z injected by step i (len(sigmas) - 1 of them)."""
    _check_noise_count(sigmas, noises)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sigma)
        if callback is not None:
            callback(i, sigma, x, denoised)
        x = ancestral_step(x, sigma, sigma_next, denoised, noises[i], eta)
    return x


def sample_beta_sde(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, noises: Sequence[Tensor],
                    beta: float, callback: StepCallback | None = None) -> Tensor:
    """Euler-Maruyama on Demon's reverse SDE along `sigmas`; a final step into 0 is deterministic."""
    _check_noise_count(sigmas, noises)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sigma)
        if callback is not None:
            callback(i, sigma, x, denoised)
        if sigma_next == 0:
            x = euler_step(x, sigma, sigma_next, denoised)
        else:
            x = beta_sde_step(x, sigma, sigma_next, denoised, noises[i], beta)
    return x


def _check_noise_count(sigmas: Tensor, noises: Sequence[Tensor]) -> None:
    if len(noises) < len(sigmas) - 1:
        raise ValueError(f"{len(sigmas) - 1} steps need as many noises, got {len(noises)}")
