"""DNO's probability regularization: how unlikely is it that this noise is standard normal?

Tang et al. 2024 (DNO), section 5 (the concentration-bound penalty). All optimized noise is
flattened and reshaped to X of n rows by d columns (d = 4). For i.i.d. N(0, 1) entries both
the column mean m and the second moment S = X^T X / n concentrate:

    log p_mean = min(-n ||m||^2 / (2d), -ln 2)
    t          = max(sqrt(1 + ||S - I||_2) - 1 - sqrt(d / n), 0)
    log p_cov  = min(-n t^2 / 2, -ln 2)
    reg        = -(log p_mean + log p_cov)

bound the probability that Gaussian noise deviates that far. reg sits at its floor 2 ln 2
while the noise looks Gaussian and grows like n times the squared deviation once it does not;
its gradient is zero at the floor, so it only acts on noise that has left the typical set.
The statistic is averaged over the original element order and `permutations` random
reorderings (which mix elements of different steps and channels into the same row).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

PENALTY_FLOOR = 2 * math.log(2)
"""reg of noise that looks exactly Gaussian: both log-probabilities clamp at -ln 2."""


def concentration_log_probs(rows: Tensor) -> tuple[Tensor, Tensor]:
    """(log p_mean, log p_cov) of n x d matrices X (..., n, d); float64, one per matrix.

    m and S are accumulated in the noise's dtype (n can be 10^5 or more), the d x d algebra
    and the n-scaled terms in float64.
    """
    n, d = rows.shape[-2:]
    m = rows.mean(dim=-2).double()                              # column means, (..., d)
    log_p_mean = torch.clamp(-n * m.square().sum(dim=-1) / (2 * d), max=-math.log(2))
    S = (rows.mT @ rows).double() / n                           # second moments, (..., d, d)
    M = torch.linalg.eigvalsh(S - torch.eye(d, dtype=S.dtype, device=S.device)).abs().amax(dim=-1)
    t = torch.clamp(torch.sqrt(1 + M) - 1 - math.sqrt(d / n), min=0)
    log_p_cov = torch.clamp(-n * t.square() / 2, max=-math.log(2))
    return log_p_mean, log_p_cov


def concentration_penalty(noise: Tensor, d: int = 4, permutations: int = 16, seed: int = 0) -> Tensor:
    """reg(z): -(log p_mean + log p_cov), averaged over the original order and `permutations`
    random reorderings of all elements of `noise`. Differentiable in `noise`; float64 scalar.

    The permutations come from a generator seeded with `seed`, so reg is one fixed function of
    the noise (comparable across iterations and runs). They are drawn once per (numel, device)
    and kept (`orderings`), and all orderings are scored as one batch: redrawing them on every
    call was 90% of its time at Stable Diffusion's size (docs/dno.md). When numel is not a
    multiple of d, the last numel mod d elements of each ordering are left out.
    """
    flat = noise.reshape(-1)
    N = flat.numel()
    n = N // d
    if n < 1:
        raise ValueError(f"the penalty needs at least d = {d} noise elements, got {N}")
    ordered = flat[None] if permutations == 0 else torch.cat(
        [flat[None], flat.index_select(0, orderings(N, permutations, seed, flat.device)).view(permutations, N)])
    log_p_mean, log_p_cov = concentration_log_probs(ordered[:, : n * d].reshape(-1, n, d))
    return -(log_p_mean + log_p_cov).mean()


@lru_cache(maxsize=2)
def orderings(numel: int, permutations: int, seed: int, device: torch.device) -> Tensor:
    """The penalty's `permutations` reorderings of `numel` elements, end to end as one index
    (permutations * numel,): drawn on the CPU from a generator seeded with `seed`, kept on
    `device` as int32 (4 bytes per element and permutation: 52 MB at Stable Diffusion's size,
    819,200 elements x 16)."""
    generator = torch.Generator().manual_seed(seed)
    index_type = torch.int32 if numel < 2 ** 31 else torch.int64
    return torch.cat([torch.randperm(numel, generator=generator) for _ in range(permutations)]).to(
        device=device, dtype=index_type)
