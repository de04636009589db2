"""Gradient estimates from reward values alone, for rewards with no gradient (DNO, section 4.3).

Both estimators take rewards of perturbed samples that the caller already computed as one
batch: r_0 at the unperturbed noise z, r_i at z + mu xi_i, xi_i ~ N(0, I).
"""

from __future__ import annotations

from torch import Tensor


def zo_gradient(r0: Tensor, rewards: Tensor, directions: Tensor, mu: float) -> Tensor:
    """Zeroth-order (ZO-SGD) estimate of grad_z r in noise space:

        g = (1/q) sum_i (r(z + mu xi_i) - r(z)) / mu * xi_i

    rewards: (q,); directions: xi, (q, ...). Unbiased for quadratic r (the mu^2 term is odd in
    xi), biased by O(mu) otherwise; its variance grows with the dimension of z.
    """
    weights = (rewards - r0).to(directions.dtype) / mu                    # (q,)
    return (weights @ directions.flatten(1)).reshape(directions.shape[1:]) / len(rewards)


def image_gradient(r0: Tensor, rewards: Tensor, x0: Tensor, outputs: Tensor, eps: float = 1e-3) -> Tensor:
    """Hybrid estimate of the ascent direction of r with respect to the IMAGE, unit-normalized:

        g = sum_i (r_i - r_0) (x_i - x_0),   g <- g / (||g|| + eps)

    x0: the unperturbed output (1, ...); outputs: x_i of the perturbed noises (q, ...). The
    caller back-propagates g through the differentiable sampler (a vector-Jacobian product),
    so only the image-space direction is estimated, never the reward's own gradient.
    """
    weights = (rewards - r0).to(outputs.dtype)                            # (q,)
    g = (weights @ (outputs - x0).flatten(1)).reshape(x0.shape)
    return g / (g.norm() + eps)
