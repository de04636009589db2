"""A Gaussian mixture whose noisy marginals, and so whose denoiser, are exact in closed form.

p(x0) = sum_k w_k N(x0; mu_k, s_k^2 I). Adding noise of std sigma gives
p(x; sigma) = sum_k w_k N(x; mu_k, (s_k^2 + sigma^2) I), and Tweedie's formula gives
D(x, sigma) = E[x0 | x] = sum_k gamma_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)),
gamma_k the posterior responsibilities. The ground truth for engine and method tests.

Tilted by a linear reward r(x) = a . x, p(x) exp(lam r(x)) / Z is again such a mixture
(`tilted`): the exact target that FK steering's particles must reproduce.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..engine import karras_sigmas
from ..errors import NoiseAlignError


class GaussianMixture:
    """An exact EDM denoiser of a mixture of isotropic Gaussians in `dim` dimensions."""

    default_steps = 32
    default_guidance = 1.0
    default_solver = "heun"
    sigma_min = 0.002
    sigma_max = 80.0

    def __init__(self, means: Tensor, stds: Tensor, weights: Tensor, name: str = "gmm"):
        self.means = means.to(torch.float64)        # mu_k, (K, dim)
        self.stds = stds.to(torch.float64)          # s_k, (K,)
        self.weights = weights.to(torch.float64) / weights.sum()  # w_k, (K,)
        self.name = name
        self.sample_shape = (self.means.shape[1],)

    @classmethod
    def default(cls) -> "GaussianMixture":
        """Three well-separated 2-D modes of unequal weight and width."""
        means = torch.tensor([[-4.0, 0.0], [3.0, 3.0], [2.0, -4.0]])
        return cls(means, torch.tensor([0.6, 1.0, 0.4]), torch.tensor([0.5, 0.3, 0.2]))

    def encode_prompt(self, prompt: str) -> Tensor:
        if prompt:
            raise NoiseAlignError(f"the gmm model is unconditional, got prompt {prompt!r}; drop --prompt")
        return torch.zeros(1, 0)

    def component_log_densities(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """log w_k + log N(x; mu_k, (s_k^2 + sigma^2) I) for every k: shape (B, K)."""
        x = x.to(torch.float64)
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
        variance = self.stds ** 2 + sigma ** 2                       # (B or 1, K)
        squared = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)  # (B, K)
        dim = self.means.shape[1]
        return (self.weights.log() - 0.5 * squared / variance
                - 0.5 * dim * torch.log(2 * math.pi * variance))

    def log_density(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """Exact log p(x; sigma) of the noisy marginal; sigma = 0 is the data density."""
        return torch.logsumexp(self.component_log_densities(x, sigma), dim=1)

    def denoise(self, x: Tensor, sigma: Tensor, cond: Tensor) -> Tensor:
        sigma64 = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
        responsibilities = torch.softmax(self.component_log_densities(x, sigma64), dim=1)  # gamma_k
        shrink = self.stds ** 2 / (self.stds ** 2 + sigma64 ** 2)                        # (B or 1, K)
        x64 = x.to(torch.float64)
        posterior_means = self.means[None] + shrink[..., None] * (x64[:, None, :] - self.means[None])
        return (responsibilities[..., None] * posterior_means).sum(1).to(x.dtype)

    def decode(self, x0: Tensor) -> Tensor:
        return x0

    def sigmas(self, steps: int) -> Tensor:
        return karras_sigmas(steps, self.sigma_min, self.sigma_max)

    def prior_std(self, sigma: float) -> float:
        return sigma

    def tilted(self, a: Tensor, lam: float) -> "GaussianMixture":
        """The mixture p(x) exp(lam a . x) / Z, exactly: N(x; mu, s^2 I) exp(lam a . x) equals
        N(x; mu + lam s^2 a, s^2 I) exp(lam a . mu + lam^2 s^2 |a|^2 / 2), so component k moves to
        mu_k + lam s_k^2 a and its weight becomes proportional to w_k exp(lam a . mu_k + lam^2 s_k^2 |a|^2 / 2)."""
        a = a.to(torch.float64).reshape(-1)
        variances = self.stds ** 2
        log_weights = self.weights.log() + lam * self.means @ a + 0.5 * lam ** 2 * variances * (a @ a)
        return GaussianMixture(self.means + lam * variances[:, None] * a, self.stds, torch.softmax(log_weights, 0),
                               name=f"{self.name} tilted by {lam:g} a.x")

    def sample_exact(self, n: int, generator: torch.Generator) -> Tensor:
        """Exact draws from the mixture (float64), for comparing samplers against the truth."""
        components = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return self.means[components] + self.stds[components, None] * noise

    @classmethod
    def spread(cls, dim: int, radius: float = 4.0, seed: int = 0) -> "GaussianMixture":
        """The default's three weights and widths, with means at `radius` in random directions of
        `dim` dimensions (drawn from `seed`): the high-dimensional counterpart of `default`."""
        means = torch.randn(3, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        means = radius * means / means.norm(dim=1, keepdim=True)
        return cls(means, torch.tensor([0.6, 1.0, 0.4]), torch.tensor([0.5, 0.3, 0.2]), name=f"gmm{dim}")

    def sample_report(self, sample: Tensor) -> dict[str, float]:
        """What a run records about its sample (1, dim) beside the reward: the exact log-density, the
        in-distribution measure of this toy (an optional model hook, read by `generate`)."""
        return {"log_density": float(self.log_density(sample)[0])}
