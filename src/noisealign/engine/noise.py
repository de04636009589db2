"""Where every standard-normal draw comes from: one generator per sample, keyed by seed.

Sample 0 of a run with seed s draws from torch.Generator().manual_seed(s), so its x_T is the
latent diffusers' pipelines draw for `generator=torch.Generator().manual_seed(s)`. Sample
i > 0 uses an independent stream derived from (s, i). Sample i therefore depends only on
(s, i), never on batch size or on how many other samples a method draws.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def sample_generator(seed: int, index: int = 0) -> torch.Generator:
    """The CPU generator of sample `index` of a run seeded with `seed`."""
    if index == 0:
        return torch.Generator().manual_seed(seed)
    derived = np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(derived) & 0x7FFF_FFFF_FFFF_FFFF)


def randn(shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str = "cpu",
          dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal draw on the CPU (reproducible on every device), then moved."""
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


class NoiseStreams:
    """One generator per sample of a batch; `draw()` returns a (B, *shape) tensor, row i from stream i."""

    def __init__(self, seed: int, indices: list[int] | range, shape: tuple[int, ...],
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.generators = [sample_generator(seed, i) for i in indices]
        self.shape, self.device, self.dtype = shape, device, dtype

    def draw(self) -> Tensor:
        rows = [randn((1, *self.shape), g) for g in self.generators]
        return torch.cat(rows).to(device=self.device, dtype=self.dtype)
