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
from typing import Callable

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
    """The run failed; `outcome` holds what it kept (status 'failed', the error's line),
    `outcomes` that of every seed of a batch (`batch.align_batch`), and `report` what
    `generate.execute` wrote, when it ran the run."""

    def __init__(self, message: str, *outcomes: Outcome | None):
        super().__init__(message)
        self.outcomes, self.outcome, self.report = list(outcomes), outcomes[0], None


class RunInterrupted(stopping.Stopped):
    """The run was interrupted; `outcome` holds what it kept (status 'interrupted'),
    `outcomes` that of every seed of a batch, and `report` what `generate.execute` wrote,
    when it ran the run."""

    def __init__(self, signum: int, *outcomes: Outcome | None):
        super().__init__(signum)
        self.outcomes, self.outcome, self.report = list(outcomes), outcomes[0], None


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
    context = RunContext(problem, seed, Ledger(query_limit=budget), observer)
    return run_contexts(problem, [context], lambda: [method.run(context)])[0]


def run_contexts(problem: Problem, contexts: list[RunContext],
                 run: Callable[[], list[MethodResult]]) -> list[Outcome]:
    """The Outcome of each context's result from `run()` (one per context, in order), its final
    reward measured outside the budget; RunInterrupted / RunFailed carrying every context's kept
    outcome if it stops."""
    try:
        results = run()
    except KeyboardInterrupt as interrupt:
        raise RunInterrupted(stopping.signal_of(interrupt),
                             *[_kept(problem, c, INTERRUPTED, None) for c in contexts]) from None
    except NoiseAlignError as error:
        raise RunFailed(str(error), *[_kept(problem, c, FAILED, str(error)) for c in contexts]) from None
    seconds = [c.ledger.seconds for c in contexts]
    try:
        final_rewards = [float(evaluate(problem, result.output)[0]) for result in results]
    except NoiseAlignError as error:
        raise RunFailed(str(error), *[Outcome(r, None, c.ledger, s, FAILED, str(error))
                                      for r, c, s in zip(results, contexts, seconds)]) from None
    return [Outcome(r, f, c.ledger, s) for r, f, c, s in zip(results, final_rewards, contexts, seconds, strict=True)]


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
