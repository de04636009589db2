"""Sigma grids. Each returns `n` decreasing sigmas followed by a final 0."""

from __future__ import annotations

import torch
from torch import Tensor


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022, eq. 5: sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho."""
    if n < 1:
        raise ValueError("a sigma grid needs at least one point")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    inv_rho_max, inv_rho_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (inv_rho_max + ramp * (inv_rho_min - inv_rho_max)) ** rho
    return append_zero(sigmas)


def karras_position(sigma: float, sigma_min: float, sigma_max: float, rho: float = 7.0) -> float:
    """Where sigma sits on the rho-warped axis: 0 at sigma_max, 1 at sigma_min."""
    top, bottom = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (top - sigma ** (1 / rho)) / (top - bottom)


def append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def vp_sigmas_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """VP (DDPM) to EDM: sigma = sqrt((1 - abar) / abar)."""
    alphas_cumprod = alphas_cumprod.to(torch.float64)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
