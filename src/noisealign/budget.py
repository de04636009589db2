"""One ledger of what a run spends: reward queries (the budget), model evaluations, seconds.

Every method draws on the same ledger, so `--budget` means the same thing for all of them.
Counting wraps the calls themselves (`CountedDenoiser`, `Ledger.score`), so a method cannot
spend without being counted.

- reward_queries: samples scored by the reward (a batch of 16 is 16 queries).
- nfe: denoiser evaluations per sample, D(x, sigma) counting once even under guidance
  (the convention of the papers' NFE); network_evaluations counts both guidance halves.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from .errors import BudgetExhausted, NonFiniteReward


@dataclass
class Ledger:
    """Counters of one run. `query_limit` None means unbounded (the budget is checked before scoring)."""

    query_limit: int | None = None
    reward_queries: int = 0
    nfe: int = 0
    network_evaluations: int = 0
    denoiser_calls: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def queries_left(self) -> int | float:
        return math.inf if self.query_limit is None else self.query_limit - self.reward_queries

    def charge_queries(self, count: int) -> None:
        if count > self.queries_left:
            raise BudgetExhausted(
                f"reward budget exhausted: {self.reward_queries} of {self.query_limit} queries spent, "
                f"{count} more asked; raise --budget")
        self.reward_queries += count

    def charge_denoiser(self, batch: int, evaluations_per_sample: int = 1) -> None:
        self.denoiser_calls += 1
        self.nfe += batch
        self.network_evaluations += batch * evaluations_per_sample

    def score(self, reward, outputs: Tensor, prompts: Sequence[str]) -> Tensor:
        """reward(outputs, prompts), charged to the budget and checked to be finite."""
        self.charge_queries(len(outputs))
        values = reward(outputs, prompts)
        if not torch.isfinite(values).all():
            bad = int((~torch.isfinite(values)).sum())
            raise NonFiniteReward(
                f"reward {getattr(reward, 'name', reward)!r} returned {bad} non-finite value(s) "
                f"after {self.reward_queries} queries; check the reward model and its inputs")
        return values

    def snapshot(self) -> dict[str, float]:
        return {"queries": self.reward_queries, "nfe": self.nfe, "seconds": round(self.seconds, 4)}


class CountedDenoiser:
    """A denoiser that charges every call to a ledger."""

    def __init__(self, denoiser, ledger: Ledger):
        self.denoiser, self.ledger = denoiser, ledger
        self.per_sample = getattr(denoiser, "evaluations_per_call", 1)

    def __call__(self, x: Tensor, sigma) -> Tensor:
        self.ledger.charge_denoiser(len(x), self.per_sample)
        return self.denoiser(x, sigma)
