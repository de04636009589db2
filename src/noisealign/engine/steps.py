"""Single sampler steps: pure functions of (x, sigma, sigma_next, denoised, noise).

Notation (Karras et al. 2022): x = x0 + sigma * eps, denoised = D(x, sigma),
eps_hat = (x - denoised) / sigma. The grid and the step index live in the caller, so K
candidates of one step share `denoised` and cost no copying of scheduler state. Every
random draw is the explicit standard-normal tensor `noise`. Multistep solvers take the
previous grid point's (sigma_prev, denoised_prev) as arguments too; correctors take the
predicted state's x_next and denoised_next.
"""

from __future__ import annotations

import math

from torch import Tensor


def eps_hat(x: Tensor, sigma: float, denoised: Tensor) -> Tensor:
    """The noise estimate (x - D) / sigma, i.e. the PF-ODE slope dx/dsigma."""
    return (x - denoised) / sigma


def euler_step(x: Tensor, sigma: float, sigma_next: float, denoised: Tensor) -> Tensor:
    """One Euler step of the PF-ODE dx/dsigma = (x - D) / sigma; equals DDIM(eta=0)."""
    return x + (sigma_next - sigma) * eps_hat(x, sigma, denoised)


def heun_correct(x: Tensor, sigma: float, sigma_next: float, denoised: Tensor,
                 x_next: Tensor, denoised_next: Tensor) -> Tensor:
    """EDM Algorithm 1, lines 9-11: average the slopes at both ends of an Euler step."""
    slope = (eps_hat(x, sigma, denoised) + eps_hat(x_next, sigma_next, denoised_next)) / 2
    return x + (sigma_next - sigma) * slope


def ancestral_sigmas(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """Split sigma_next into (sigma_down, sigma_up) with sigma_down^2 + sigma_up^2 = sigma_next^2.

    sigma_up = min(sigma_next, eta * sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)):
    the DDIM-eta variance of Song et al. 2021 (eq. 16) in sigma space; eta = 1 is DDPM.
    """
    if sigma_next == 0:
        return 0.0, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2))
    return math.sqrt(sigma_next ** 2 - up ** 2), up


def ancestral_step(x: Tensor, sigma: float, sigma_next: float, denoised: Tensor,
                   noise: Tensor, eta: float = 1.0) -> Tensor:
    """DDIM-eta / ancestral step: x' = x + (sigma_down - sigma) eps_hat + sigma_up z."""
    sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, eta)
    return x + (sigma_down - sigma) * eps_hat(x, sigma, denoised) + sigma_up * noise


def beta_sde_step(x: Tensor, sigma: float, sigma_next: float, denoised: Tensor,
                  noise: Tensor, beta: float) -> Tensor:
    """Euler-Maruyama step of Demon's reverse SDE (Karras et al. eq. 6, sigma(t) = t).

    dx = (1 + beta sigma) eps_hat dsigma + sqrt(2 beta) sigma dW, integrated from sigma down
    to sigma_next (Delta = sigma - sigma_next > 0):
    x' = x - (1 + beta sigma) eps_hat Delta + sqrt(2 beta) sigma sqrt(Delta) z.
    beta = 0 is exactly the Euler ODE step.
    """
    delta = sigma - sigma_next
    drift = (1 + beta * sigma) * eps_hat(x, sigma, denoised) * delta
    return x - drift + math.sqrt(2 * beta * delta) * sigma * noise


def dpmpp_2m_step(x: Tensor, sigma: float, sigma_next: float, denoised: Tensor,
                  sigma_prev: float | None = None, denoised_prev: Tensor | None = None) -> Tensor:
    """One DPM-Solver++(2M) step (Lu et al. 2022, Algorithm 2) of the PF-ODE, one D per step.

    With D frozen the ODE's exact solution is the DDIM step x' = (sigma_next / sigma) x +
    (1 - sigma_next / sigma) D. 2M extrapolates D linearly in lambda = -log sigma through the
    previous point: D + (D - D_prev) / (2 r), r = h_prev / h, h = log(sigma / sigma_next).
    First order (DDIM) without a previous point, and into sigma_next = 0 (h infinite).
    """
    if denoised_prev is not None and sigma_next > 0:
        r = math.log(sigma_prev / sigma) / math.log(sigma / sigma_next)
        denoised = denoised + (denoised - denoised_prev) / (2 * r)
    ratio = sigma_next / sigma
    return ratio * x + (1 - ratio) * denoised


def unipc_correct(x: Tensor, sigma: float, sigma_next: float, denoised: Tensor, denoised_next: Tensor,
                  sigma_prev: float | None = None, denoised_prev: Tensor | None = None) -> Tensor:
    """UniC, the corrector of UniPC (Zhao et al. 2023, B(h) = e^h - 1): the step sigma -> sigma_next
    from x again, now that D is known at its end too (denoised_next, evaluated at the predicted state).

    x' = (sigma_next / sigma) x + (1 - sigma_next / sigma) (D + sum_k rho_k D1_k), the D1_k the
    divided differences of D in lambda = -log sigma toward the known points and rho solving the
    order conditions sum_k rho_k r_k^(i-1) = b_i: exact for D linear in lambda (the end point
    alone, order 2; rho = b_1, where the paper rounds it to 1/2) or quadratic (with the previous
    point, order 3). The corrected state costs no evaluation: the next step reuses denoised_next.
    """
    h = math.log(sigma / sigma_next)
    b_h = math.expm1(-h)                                     # B(h) at hh = -h (data prediction)
    b1 = -1 / h - 1 / b_h                                    # b_i = i! hh phi_(i+1)(hh) / B(h): 1/2 + O(h)
    correction = b1 * (denoised_next - denoised)
    if denoised_prev is not None:
        b2 = 2 * ((b_h / -h - 1) / -h - 0.5) / b_h           # 1/3 + O(h)
        r = -math.log(sigma_prev / sigma) / h                 # < 0: the previous point lies behind
        rho_prev = (b1 - b2) / (1 - r)
        correction = rho_prev * (denoised_prev - denoised) / r + (b1 - rho_prev) * (denoised_next - denoised)
    ratio = sigma_next / sigma
    return ratio * x + (1 - ratio) * (denoised + correction)


def beta_sde_heun_correct(x: Tensor, sigma: float, sigma_next: float, denoised: Tensor, x_next: Tensor,
                          denoised_next: Tensor, noise: Tensor, beta: float) -> Tensor:
    """Stochastic Heun step of Demon's reverse SDE (the official code's `sde_step`).

    x_next = beta_sde_step(x, ..., noise, beta) is the Euler-Maruyama predictor and
    denoised_next = D(x_next, sigma_next); drift and diffusion are averaged over both ends
    with the same noise: x' = x - ((1 + beta sigma) eps_hat + (1 + beta sigma') eps_hat') Delta / 2
    + sqrt(2 beta Delta) (sigma + sigma') / 2 z. beta = 0 is heun_correct. Needs sigma_next > 0.
    """
    delta = sigma - sigma_next
    drift = ((1 + beta * sigma) * eps_hat(x, sigma, denoised)
             + (1 + beta * sigma_next) * eps_hat(x_next, sigma_next, denoised_next)) * (delta / 2)
    return x - drift + math.sqrt(2 * beta * delta) * (sigma + sigma_next) / 2 * noise
