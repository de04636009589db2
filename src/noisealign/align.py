"""One alignment run: the method on a fresh ledger, and the plain baseline from the same seed.

The reward of the final output and of the baseline is measured outside the method's ledger:
it is the run's report, not spending (`reward_queries` counts the method's queries only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .budget import Ledger
from .methods.base import Method, MethodResult, Observer, Problem, RunContext
from .methods.plain import Plain


@dataclass
class Outcome:
    """A finished run: the method's result, its reward, and the ledger that paid for it."""

    result: MethodResult
    final_reward: float
    ledger: Ledger
    seconds: float


def evaluate(problem: Problem, outputs: Tensor) -> Tensor:
    """The reward of outputs, for reporting (not charged to any budget)."""
    with torch.inference_mode():
        return problem.reward(outputs, [problem.prompt] * len(outputs)).float()


def baseline(problem: Problem, seed: int) -> Outcome:
    """The plain sample of this seed: what the model gives without alignment."""
    return align(problem, Plain(), seed, budget=0)


def align(problem: Problem, method: Method, seed: int, budget: int | None,
          observer: Observer | None = None) -> Outcome:
    """Run `method` for `seed` with at most `budget` reward queries."""
    ledger = Ledger(query_limit=budget)
    result = method.run(RunContext(problem, seed, ledger, observer))
    seconds = ledger.seconds
    return Outcome(result, float(evaluate(problem, result.output)[0]), ledger, seconds)
