"""Choosing among weighted particles: systematic resampling, one categorical draw, the ESS.

Weights come as log-weights of G independent groups of N particles, (G, N) float64; every
random choice takes its uniforms as an argument (drawn by the caller from the run's
selection stream), so a run stays a deterministic function of its seed.
"""

from __future__ import annotations

import torch
from torch import Tensor

SELECTION_STREAM = 0x53454C
"""Index of the noise stream resampling and selection draw their uniforms from ("SEL"); no sample uses it."""


def effective_sample_size(log_w: Tensor) -> Tensor:
    """ESS = 1 / sum_i p_i^2, p = softmax(log_w) per group: N for equal weights, 1 for one particle. (G,)"""
    return 1.0 / (torch.softmax(log_w, dim=-1) ** 2).sum(-1)


def systematic(log_w: Tensor, u: Tensor) -> Tensor:
    """Systematic resampling: N ancestors per group at the positions (u + i) / N, i < N, of the
    weights' cumulative sum (one uniform u per group). (G, N) log-weights, (G,) u -> (G, N) indices."""
    n = log_w.shape[-1]
    positions = (u[:, None] + torch.arange(n, dtype=torch.float64)) / n
    return _invert(log_w, positions)


def categorical(log_w: Tensor, u: Tensor) -> Tensor:
    """One index per group drawn with probability softmax(log_w), by inverting its CDF at u. (G,)"""
    return _invert(log_w, u[:, None])[:, 0]


def _invert(log_w: Tensor, positions: Tensor) -> Tensor:
    """The smallest i with cumsum(p)_i > position, for positions in [0, 1)."""
    cdf = torch.softmax(log_w.to(torch.float64), dim=-1).cumsum(-1)
    cdf = cdf / cdf[:, -1:]
    return torch.searchsorted(cdf, positions.contiguous(), right=True).clamp(max=log_w.shape[-1] - 1)
