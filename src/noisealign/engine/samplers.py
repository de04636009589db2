"""Whole sampling loops over an explicit sigma grid, k-diffusion style.

`denoiser(x, sigma) -> x0 estimate` is any callable (guidance already folded in).
`sigmas` is decreasing and ends in 0. Stochastic samplers take their per-step noises as a
sequence of tensors, one per step that injects noise, so a sample is a deterministic
function of (x_T, noises): DNO optimizes them, Demon chooses them, Best-of-N resamples them.
No `no_grad` here: gradients are the caller's choice.
"""

from __future__ import annotations

from itertools import count
from typing import Callable, Sequence

from torch import Tensor

from .steps import (ancestral_step, beta_sde_heun_correct, beta_sde_step, dpmpp_2m_step, euler_step,
                    heun_correct, unipc_correct)

DenoiserFn = Callable[[Tensor, float], Tensor]
StepCallback = Callable[[int, float, Tensor, Tensor], None]
"""callback(step index, sigma, x at sigma, denoised at sigma)."""

ODE_SOLVERS = ("euler", "heun", "dpmpp-2m", "unipc")
MULTISTEP_SOLVERS = ("dpmpp-2m", "unipc")
SDE_SOLVERS = ("euler", "heun")
"""Euler-Maruyama (one call a step, shared by Demon's K candidates) and stochastic Heun (two)."""


def sample_ode(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, solver: str = "heun",
               callback: StepCallback | None = None) -> Tensor:
    """Integrate the PF-ODE along `sigmas` with one of ODE_SOLVERS.

    'euler' is DDIM(eta=0); 'heun' EDM Algorithm 1 (2 calls a step); 'dpmpp-2m' DPM-Solver++(2M)
    and 'unipc' UniPC (2M predictor, UniC corrector), one call a step. Every solver takes the
    last step into sigma = 0, where the slope is undefined, as x' = D (first order).
    """
    if solver not in ODE_SOLVERS:
        raise ValueError(f"unknown ODE solver {solver!r}; use one of {', '.join(ODE_SOLVERS)}")
    if solver in MULTISTEP_SOLVERS:
        return _sample_multistep(denoiser, x, sigmas, solver == "unipc", callback)
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


def _sample_multistep(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, correct: bool,
                      callback: StepCallback | None) -> Tensor:
    """DPM-Solver++(2M) along `sigmas`; with `correct`, UniPC: each new D first corrects the step
    that led to it (unipc_correct), then predicts the next one. The callback sees the state D was
    evaluated at (the predicted one)."""
    x_prev: Tensor | None = None                           # the state at the previous grid point
    prev: tuple[float, Tensor] | tuple[()] = ()            # (sigma, D) of the previous grid point
    prev2: tuple[float, Tensor] | tuple[()] = ()           # (sigma, D) of the one before it
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sigma)
        if callback is not None:
            callback(i, sigma, x, denoised)
        if correct and prev and sigma_next > 0:              # into 0 the step ignores x
            x = unipc_correct(x_prev, prev[0], sigma, prev[1], denoised, *prev2)
        x_next = dpmpp_2m_step(x, sigma, sigma_next, denoised, *prev)
        x_prev, prev, prev2, x = x, (sigma, denoised), prev, x_next
    return x


def ode_evaluations(sigmas: Tensor, solver: str = "heun") -> int:
    """Denoiser calls sample_ode makes along `sigmas`: one per step, Heun two per step above 0."""
    steps = len(sigmas) - 1
    return 2 * steps - int(float(sigmas[-1]) == 0) if solver == "heun" else steps


AncestralStep = Callable[[Tensor, float, float, Tensor], Tensor]
"""step(x, sigma, sigma_next, noise) -> the state at sigma_next: one whole step, its denoiser call included."""


def sample_ancestral(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, noises: Sequence[Tensor],
                     eta: float = 1.0, callback: StepCallback | None = None) -> Tensor:
    """DDIM-eta / ancestral sampling; noises[i] is the z injected by step i (len(sigmas) - 1 of them)."""
    if callback is not None:
        denoiser = _observed(denoiser, callback)
    return run_steps(ancestral_update(denoiser, eta), x, sigmas, noises)


def ancestral_update(denoiser: DenoiserFn, eta: float) -> AncestralStep:
    """A whole DDIM-eta step as one function: the unit a caller may wrap (DNO checkpoints it, so
    that every use of x lies inside one recomputed unit)."""
    def step(x: Tensor, sigma: float, sigma_next: float, noise: Tensor) -> Tensor:
        return ancestral_step(x, sigma, sigma_next, denoiser(x, sigma), noise, eta)
    return step


def run_steps(step: AncestralStep, x: Tensor, sigmas: Tensor, noises: Sequence[Tensor]) -> Tensor:
    """x after x <- step(x, sigma_i, sigma_{i+1}, noises[i]) for every step along `sigmas`."""
    _check_noise_count(sigmas, noises)
    for i in range(len(sigmas) - 1):
        x = step(x, float(sigmas[i]), float(sigmas[i + 1]), noises[i])
    return x


def _observed(denoiser: DenoiserFn, callback: StepCallback) -> DenoiserFn:
    """The denoiser, reporting each call to `callback` as step i (one call a step, as ancestral
    sampling makes)."""
    steps = count()

    def call(x: Tensor, sigma: float) -> Tensor:
        denoised = denoiser(x, sigma)
        callback(next(steps), sigma, x, denoised)
        return denoised
    return call


def sample_beta_sde(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, noises: Sequence[Tensor],
                    beta: float, callback: StepCallback | None = None, solver: str = "euler") -> Tensor:
    """Demon's reverse SDE along `sigmas` by Euler-Maruyama ('euler') or stochastic Heun ('heun',
    the official code's integrator, two calls a step); a final step into 0 is deterministic."""
    if solver not in SDE_SOLVERS:
        raise ValueError(f"unknown SDE solver {solver!r}; use one of {', '.join(SDE_SOLVERS)}")
    _check_noise_count(sigmas, noises)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sigma)
        if callback is not None:
            callback(i, sigma, x, denoised)
        if sigma_next == 0:
            x = euler_step(x, sigma, sigma_next, denoised)
            continue
        x_next = beta_sde_step(x, sigma, sigma_next, denoised, noises[i], beta)
        if solver == "heun":
            x_next = beta_sde_heun_correct(x, sigma, sigma_next, denoised, x_next,
                                           denoiser(x_next, sigma_next), noises[i], beta)
        x = x_next
    return x


def _check_noise_count(sigmas: Tensor, noises: Sequence[Tensor]) -> None:
    if len(noises) < len(sigmas) - 1:
        raise ValueError(f"{len(sigmas) - 1} steps need as many noises, got {len(noises)}")
