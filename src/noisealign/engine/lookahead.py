"""Clean-state estimates c(x, sigma) that Demon scores candidates with (Yeh et al., ICLR 2025; docs/demon.md)."""

from __future__ import annotations

import math

from torch import Tensor

from .samplers import DenoiserFn, ode_evaluations, sample_ode
from .schedules import karras_position, karras_sigmas


def lookahead_steps(sigma: float, sigma_min: float, sigma_max: float, max_steps: int) -> int:
    """Grid points of the PF-ODE look-ahead from sigma to sigma_min, shrinking with the remaining range.

    ceil(max_steps * (s^(1/7) - smin^(1/7)) / (smax^(1/7) - smin^(1/7))) + 1: max_steps solver
    steps from sigma_max down to sigma_min, then the step into 0.
    """
    remaining = 1.0 - karras_position(min(sigma, sigma_max), sigma_min, sigma_max)
    return math.ceil(max_steps * max(remaining, 0.0)) + 1


def ode_lookahead(denoiser: DenoiserFn, x: Tensor, sigma: float, sigma_min: float,
                  sigma_max: float, max_steps: int, solver: str = "heun") -> Tensor:
    """c_ode(x, sigma): solve the PF-ODE from sigma down to 0 on a Karras sub-grid with `solver`
    (engine.samplers.ODE_SOLVERS; Heun by default, 2 calls a step, the multistep ones 1)."""
    steps = lookahead_steps(sigma, sigma_min, sigma_max, max_steps)
    return sample_ode(denoiser, x, karras_sigmas(steps, sigma_min, sigma), solver=solver)


def tweedie_lookahead(denoiser: DenoiserFn, x: Tensor, sigma: float) -> Tensor:
    """c_tweedie(x, sigma) = D(x, sigma) = E[x0 | x] (Tweedie's formula): one call."""
    return denoiser(x, sigma)


def ode_lookahead_evaluations(sigma: float, sigma_min: float, sigma_max: float, max_steps: int,
                              solver: str = "heun") -> int:
    """Denoiser calls one ode_lookahead makes (Heun: 2 per step, 1 for the final step into 0)."""
    steps = lookahead_steps(sigma, sigma_min, sigma_max, max_steps)
    return ode_evaluations(karras_sigmas(steps, sigma_min, sigma), solver)
