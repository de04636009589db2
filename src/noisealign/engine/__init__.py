"""Explicit-noise sampling engine in the EDM (sigma) parameterization.

Imports no model, reward, method or diffusers: a denoiser is any callable (x, sigma) -> x0.
"""

from .lookahead import lookahead_steps, ode_lookahead, tweedie_lookahead
from .samplers import (ODE_SOLVERS, SDE_SOLVERS, ancestral_update, ode_evaluations, run_steps, sample_ancestral,
                       sample_beta_sde, sample_ode)
from .schedules import append_zero, karras_sigmas, vp_sigmas_from_alphas_cumprod
from .steps import (ancestral_sigmas, ancestral_step, beta_sde_heun_correct, beta_sde_step, dpmpp_2m_step, eps_hat,
                    euler_step, heun_correct, unipc_correct)

__all__ = [
    "ODE_SOLVERS", "SDE_SOLVERS", "ancestral_sigmas", "ancestral_step", "ancestral_update", "append_zero",
    "beta_sde_heun_correct", "beta_sde_step", "dpmpp_2m_step", "eps_hat", "euler_step", "heun_correct",
    "karras_sigmas", "lookahead_steps", "ode_evaluations", "ode_lookahead", "run_steps", "sample_ancestral",
    "sample_beta_sde", "sample_ode", "tweedie_lookahead", "unipc_correct", "vp_sigmas_from_alphas_cumprod",
]
