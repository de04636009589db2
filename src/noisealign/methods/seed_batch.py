"""Several seeds of one method run as one batch (DNO, ReNO, guidance): row b is seed b.

Each seed keeps its own RunContext, so its ledger, best-so-far and trace are those of a run of
that seed alone: a batched denoiser call or reward query charges every seed one evaluation or
query per row of its own, and row b's noise comes from seed b's stream 0. A single-seed run is
a batch of one.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..budget import checked_reward
from ..engine.noise import NoiseStreams
from ..stopping import stop_point
from .base import RunContext


class SeedBatch:
    """The seeds' contexts seen as one: a counted denoiser and reward over the stacked rows."""

    def __init__(self, contexts: Sequence[RunContext]):
        if not contexts or any(c.problem != contexts[0].problem for c in contexts):
            raise ValueError("a seed batch needs one or more contexts of the same problem")
        self.contexts = list(contexts)
        self.problem, self.model = contexts[0].problem, contexts[0].model
        self._denoiser = contexts[0].denoiser.denoiser                     # the uncounted one
        self._per_sample = contexts[0].denoiser.per_sample

    def __len__(self) -> int:
        return len(self.contexts)

    @property
    def queries_left(self) -> int | float:
        return min(c.ledger.queries_left for c in self.contexts)

    def streams(self) -> "RowStreams":
        """Each seed's stream 0, the one its plain sample and a run of it alone draw from."""
        return RowStreams([c.noise_streams([0]) for c in self.contexts])

    def denoiser(self, x: Tensor, sigma: float) -> Tensor:
        """D(x, sigma) on all rows, each seed charged its share of rows."""
        stop_point()
        for c in self.contexts:
            c.ledger.charge_denoiser(len(x) // len(self), self._per_sample)
        return self._denoiser(x, sigma)

    def score(self, outputs: Tensor) -> Tensor:
        """The reward of all rows, each seed charged its share of queries (B,) or (B k,)."""
        stop_point()
        for c in self.contexts:
            c.ledger.charge_queries(len(outputs) // len(self))
        prompts = [self.problem.prompt] * len(outputs)
        return checked_reward(self.problem.reward, outputs, prompts,
                              f"after {self.contexts[0].ledger.reward_queries} queries")


class RowStreams:
    """One noise stream per row: `draw()` is (B, *shape), row b from seed b's stream."""

    def __init__(self, streams: list[NoiseStreams]):
        self.streams = streams

    def draw(self) -> Tensor:
        return torch.cat([s.draw() for s in self.streams])
