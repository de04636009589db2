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

from .errors import BudgetExhausted, NoiseAlignError, NonFiniteReward, RewardFailed
from .stopping import stop_point


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
        """reward(outputs, prompts), charged to the budget and checked (`checked_reward`)."""
        stop_point()
        self.charge_queries(len(outputs))
        return checked_reward(reward, outputs, prompts, f"after {self.reward_queries} queries")

    def snapshot(self) -> dict[str, float]:
        return {"queries": self.reward_queries, "nfe": self.nfe, "seconds": round(self.seconds, 4)}


class CountedDenoiser:
    """A denoiser that charges every call to a ledger."""

    def __init__(self, denoiser, ledger: Ledger):
        self.denoiser, self.ledger = denoiser, ledger
        self.per_sample = getattr(denoiser, "evaluations_per_call", 1)

    def __call__(self, x: Tensor, sigma) -> Tensor:
        stop_point()
        self.ledger.charge_denoiser(len(x), self.per_sample)
        return self.denoiser(x, sigma)


def checked_reward(reward, outputs: Tensor, prompts: Sequence[str], when: str) -> Tensor:
    """reward(outputs, prompts), which must be a finite floating-point tensor of shape (B,).

    Anything else (an exception from the reward, a list, an integer tensor, a wrong shape,
    NaN or infinity) is one RewardFailed / NonFiniteReward line naming the reward and `when`.
    """
    name = getattr(reward, "name", type(reward).__name__)
    try:
        values = reward(outputs, prompts)
    except (NoiseAlignError, KeyboardInterrupt):
        raise
    except Exception as error:  # a reward is user code: any failure ends the run, keeping what it computed
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        raise RewardFailed(f"reward {name!r} raised {type(error).__name__}: {detail} ({when}); "
                           "fix the reward or its inputs") from error
    expected = (len(outputs),)
    if not isinstance(values, Tensor) or not values.is_floating_point() or tuple(values.shape) != expected:
        got = (f"a {values.dtype} tensor of shape {tuple(values.shape)}" if isinstance(values, Tensor)
               else f"a {type(values).__name__}")
        raise RewardFailed(f"reward {name!r} returned {got} ({when}); a reward returns a float tensor of "
                           f"shape {expected}, one value per output")
    if not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise NonFiniteReward(f"reward {name!r} returned {bad} non-finite value(s) ({when}); "
                              "check the reward model and its inputs")
    return values
