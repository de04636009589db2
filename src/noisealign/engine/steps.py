"""Single sampler steps: pure functions of (x, sigma, sigma_next, denoised, noise).

Notation (Karras et al. 2022): x = x0 + sigma * eps, denoised = D(x, sigma),
eps_hat = (x - denoised) / sigma. The grid and the step index live in the caller, so K
candidates of one step share `denoised` and cost no copying of scheduler state. Every
random draw is the explicit standard-normal tensor `noise`.
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
