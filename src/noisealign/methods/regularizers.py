"""How far is optimized noise from N(0, I)? The regularizers of noise optimization (DNO, ReNO).

Each takes the optimized noises of ONE sample as a tensor (n, *shape): n noise tensors (z_T
and the injected z_i) of D elements each, N = n D in all, read as the n x D matrix Z. It
returns a float64 scalar, differentiable in the noise, that sits at a floor on standard
normal noise and grows as the noise drifts from it. `--regularizer` picks the one weighted
by gamma; every run reports all of them, unweighted.

- concentration (DNO, Tang et al. 2024, section 5; `dno_regularizer`): concentration bounds
  on the mean and the 4 x 4 second moment of all N elements pooled into rows of 4 (and
  permuted). Floor 2 ln 2. Pooling mixes steps and coordinates: it sees noise growing,
  shrinking or shifting as a whole, not a drift of one coordinate or one direction.
- chi-norm (ReNO, Eyring et al. 2024, section 3): the negative log-likelihood of r = ||Z||
  under the chi distribution with N degrees of freedom, the law of the norm of N standard
  normals,

      -log chi_N(r) = r^2 / 2 - (N - 1) log r + (N / 2 - 1) log 2 + log Gamma(N / 2),

  minimal (about log(pi) / 2 for large N) at r = sqrt(N - 1). It sees the norm only.
- moments (ours): the first and second moments of Z per noise tensor and across tensors,
  where a reward gradient leaves its mark. The gradient with respect to z_i is J_i^T grad r,
  and the J_i of neighbouring steps point the same way, so optimized noises share a direction
  (and concentrate energy in the steps the reward is most sensitive to) while the pooled
  moments stay typical. Standard normal scores, all exact or Wilson-Hilferty under N(0, I):

      u_i  = WH(||z_i||^2, D)                  i = 1..n   each noise's norm
      c_j  = sqrt(n) zbar_j                    j = 1..D   each coordinate's mean over the noises
      WH(n ||zbar||^2, D)                                 the mean noise's norm
      s    = sigma_max(Z) - sqrt(n) - sqrt(D)             the strongest direction the noises share
      WH(||Z||^2, N),  sum(Z) / sqrt(N)                   the pooled norm and mean

  with zbar = (1/n) sum_i z_i and WH(q, k) = ((q / k)^(1/3) - 1 + 2 / (9 k)) / sqrt(2 / (9 k))
  for q ~ chi-square(k). For s, P(s > t) <= exp(-t^2 / 2) (Davidson and Szarek 2001), a
  normal-like tail. Over the K = n + D + 4 scores,

      reg = 1/2 sum_k max(|u_k| - tau, 0)^2,   tau = Phi^-1(1 - alpha / (2 K)),  alpha = 0.01,

  (s one-sided): 0, with zero gradient, on all but about 1% of Gaussian draws, then
  quadratic in the excess standard scores, so gamma weighs standard deviations.
"""

from __future__ import annotations

import math
from functools import partial
from statistics import NormalDist
from typing import Callable

import torch
from torch import Tensor

from .dno_regularizer import concentration_penalty

Regularizer = Callable[[Tensor], Tensor]
"""noise (n, *shape) of one sample -> float64 scalar, differentiable in the noise."""

MOMENTS_ALPHA = 0.01
"""Fraction of Gaussian draws on which `moments` leaves its floor 0 (a union bound over its scores)."""


def chi_norm(noise: Tensor) -> Tensor:
    """-log chi_N(||z||) over all N elements of `noise`: ReNO's regularizer, with its constant."""
    N = noise.numel()
    r = torch.linalg.vector_norm(noise.double())
    return r.square() / 2 - (N - 1) * torch.log(r) + (N / 2 - 1) * math.log(2) + math.lgamma(N / 2)


def chi_norm_floor(N: int) -> float:
    """chi-norm's minimum, at the chi distribution's mode r = sqrt(N - 1) (N >= 2)."""
    return (N - 1) / 2 - (N - 1) * math.log(N - 1) / 2 + (N / 2 - 1) * math.log(2) + math.lgamma(N / 2)


def wilson_hilferty(q: Tensor, k: int) -> Tensor:
    """Standard normal score of q ~ chi-square(k) (Wilson and Hilferty 1931)."""
    v = 2 / (9 * k)
    return ((q / k).clamp_min(1e-30).pow(1 / 3) - (1 - v)) / math.sqrt(v)


def moment_scores(noise: Tensor) -> tuple[Tensor, Tensor]:
    """`moments`' scores: (the two-sided normal scores (n + D + 3,), the one-sided s (1,))."""
    z = noise.double().reshape(len(noise), -1)                          # Z, (n, D)
    n, D = z.shape
    squares, zbar = z.square(), z.mean(0)
    top = torch.linalg.eigvalsh(z @ z.T)[-1].clamp_min(0).sqrt()       # sigma_max(Z), via the n x n Gram
    two_sided = torch.cat([
        wilson_hilferty(squares.sum(1), D),                             # u_i
        math.sqrt(n) * zbar,                                            # c_j
        wilson_hilferty(n * zbar.square().sum(), D).reshape(1),         # the mean noise's norm
        wilson_hilferty(squares.sum(), n * D).reshape(1),               # the pooled norm
        (z.sum() / math.sqrt(n * D)).reshape(1),                        # the pooled mean
    ])
    return two_sided, (top - math.sqrt(n) - math.sqrt(D)).reshape(1)


def moments_threshold(count: int, alpha: float = MOMENTS_ALPHA) -> float:
    """tau: a standard normal exceeds it in absolute value with probability alpha / count."""
    return NormalDist().inv_cdf(1 - alpha / (2 * count))


def moments(noise: Tensor) -> Tensor:
    """Ours: 1/2 sum_k max(|u_k| - tau, 0)^2 over every noise's norm, every coordinate's mean
    over the noises, the mean noise, their strongest shared direction and the pooled moments."""
    two_sided, shared = moment_scores(noise)
    tau = moments_threshold(len(two_sided) + len(shared))
    excess = torch.cat([two_sided.abs() - tau, shared - tau]).clamp_min(0)
    return excess.square().sum() / 2


def regularizers(permutations: int = 16) -> dict[str, Regularizer]:
    """The family by `--regularizer` name; concentration averages over `permutations` orders."""
    return {"concentration": partial(concentration_penalty, permutations=permutations),
            "chi-norm": chi_norm, "moments": moments}


NAMES = tuple(regularizers())
