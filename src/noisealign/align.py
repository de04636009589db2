"""One alignment run: the method on a fresh ledger, and the plain baseline from the same seed.

The reward of the final output and of the baseline is measured outside the method's ledger:
it is the run's report, not spending (`reward_queries` counts the method's queries only).

A run ends `complete`, `interrupted` (Ctrl-C, SIGTERM) or `failed` (a reward that raised or
returned a non-finite value, ...). Stopped early, it still hands back the method's best
sample so far (`RunContext.keep`) inside the exception: `RunInterrupted.outcome` and
`RunFailed.outcome` carry the same `Outcome` a complete run returns, with its status.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import stopping
from .budget import Ledger, checked_reward
from .errors import NoiseAlignError
from .methods.base import Method, MethodResult, Observer, Problem, RunContext
from .methods.plain import Plain

COMPLETE, INTERRUPTED, FAILED = "complete", "interrupted", "failed"


@dataclass
class Outcome:
    """A run's result, its reward, and the ledger that paid for it.

    `result` is None when a stopped run had nothing to keep yet; `final_reward` is None when
    there is no result, or when scoring it failed (`error` then says why).
    """

    result: MethodResult | None
    final_reward: float | None
    ledger: Ledger
    seconds: float
    status: str = COMPLETE
    error: str | None = None


class RunFailed(NoiseAlignError):
    """The run failed; `outcome` holds what it kept (status 'failed', the error's line), and
    `report` what `generate.execute` wrote, when it ran the run."""

    def __init__(self, message: str, outcome: Outcome | None):
        super().__init__(message)
        self.outcome, self.report = outcome, None


class RunInterrupted(stopping.Stopped):
    """The run was interrupted; `outcome` holds what it kept (status 'interrupted'), and
    `report` what `generate.execute` wrote, when it ran the run."""

    def __init__(self, signum: int, outcome: Outcome | None):
        super().__init__(signum)
        self.outcome, self.report = outcome, None


def evaluate(problem: Problem, outputs: Tensor) -> Tensor:
    """The reward of outputs, for reporting (not charged to any budget), checked like any query."""
    with torch.inference_mode():
        return checked_reward(problem.reward, outputs, [problem.prompt] * len(outputs), "scoring the result").float()


def baseline(problem: Problem, seed: int, observer: Observer | None = None) -> Outcome:
    """The plain sample of this seed: what the model gives without alignment."""
    return align(problem, Plain(), seed, budget=0, observer=observer)


def align(problem: Problem, method: Method, seed: int, budget: int | None,
          observer: Observer | None = None) -> Outcome:
    """Run `method` for `seed` with at most `budget` reward queries.

    Raises RunInterrupted (a KeyboardInterrupt) or RunFailed (a NoiseAlignError) carrying the
    partial Outcome when the run stops early; NoiseAlignError before anything ran when the
    method cannot run on this problem and budget (`Method.plan`).
    """
    method = method.plan(problem, budget)
    ledger = Ledger(query_limit=budget)
    context = RunContext(problem, seed, ledger, observer)
    try:
        result = method.run(context)
    except KeyboardInterrupt as interrupt:
        raise RunInterrupted(stopping.signal_of(interrupt), _kept(problem, context, INTERRUPTED, None)) from None
    except NoiseAlignError as error:
        raise RunFailed(str(error), _kept(problem, context, FAILED, str(error))) from None
    seconds = ledger.seconds
    try:
        final_reward = float(evaluate(problem, result.output)[0])
    except NoiseAlignError as error:
        raise RunFailed(str(error), Outcome(result, None, ledger, seconds, FAILED, str(error))) from None
    return Outcome(result, final_reward, ledger, seconds)


def _kept(problem: Problem, context: RunContext, status: str, error: str | None) -> Outcome:
    """The Outcome of a stopped run: its best sample so far, finished without further queries.

    The ledger's limit drops to what was spent, so the salvage cannot query. Scoring the kept
    sample may fail (the reward that stopped the run); then its final_reward is None.
    """
    ledger = context.ledger
    ledger.query_limit = ledger.reward_queries
    seconds = ledger.seconds
    with stopping.finishing():
        try:
            result = context.best_so_far()
        except (NoiseAlignError, KeyboardInterrupt):
            result = None
        final_reward = None
        if result is not None:
            try:
                final_reward = float(evaluate(problem, result.output)[0])
            except NoiseAlignError as scoring_error:
                error = error or str(scoring_error)
    return Outcome(result, final_reward, ledger, seconds, status, error)
