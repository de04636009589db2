"""Best-of-N: draw N = budget plain samples, keep the one the reward likes best."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import NoiseAlignError
from ..options import check, option
from .base import MethodResult, Problem, RunContext, StepEvent
from .plain import PlainConfig, sample_plain


@dataclass(frozen=True)
class BestOfNConfig:
    """n: candidates (None: the whole budget, one query each); batch_size: candidates sampled
    and scored together; sampler: how each candidate is drawn (plain's options)."""

    n: int | None = option(None, "candidates, one reward query each (None: the whole --budget)")
    batch_size: int = option(64, "candidates sampled and scored as one batch (a memory bound)")
    sampler: PlainConfig = PlainConfig()

    def __post_init__(self) -> None:
        check([(self.n is not None and self.n < 1, f"--n {self.n}: need at least 1 candidate"),
               (self.batch_size < 1, f"--batch-size {self.batch_size}: need at least 1")], "best-of-n")


class BestOfN:
    name = "best-of-n"

    def __init__(self, config: BestOfNConfig = BestOfNConfig()):
        self.config = config

    def plan(self, problem: Problem, budget: int | None) -> "BestOfN":
        """N candidates cost N queries: the budget must pay for them (N = the budget by default)."""
        n = self.config.n if self.config.n is not None else budget
        if n is None or budget is not None and not 1 <= n <= budget:
            raise NoiseAlignError(f"best-of-n needs a budget of at least {n or 1} reward queries "
                                  f"(one per candidate), got {budget}; raise --budget")
        return BestOfN(replace(self.config, n=n))

    def run(self, context: RunContext) -> MethodResult:
        n = self.plan(context.problem, context.ledger.query_limit).config.n
        best_reward, best_index = -float("inf"), -1
        with torch.inference_mode():
            for chunk, start in enumerate(range(0, n, self.config.batch_size)):
                indices = range(start, min(start + self.config.batch_size, n))
                samples = sample_plain(context, indices, self.config.sampler)
                outputs = context.model.decode(samples)
                rewards = context.score(outputs)
                top = int(rewards.argmax())
                if rewards[top] > best_reward:
                    best_reward, best_index = float(rewards[top]), indices[top]
                    best = MethodResult(sample=samples[top:top + 1].clone(), output=outputs[top:top + 1].clone(),
                                        reward=best_reward, noises={"candidate": torch.tensor([best_index])},
                                        info={"candidates": n, "best_candidate": best_index})
                    context.keep(lambda best=best: best)    # what an interrupted run hands back
                context.observe(StepEvent(step=chunk, rewards=rewards,
                                          extras={"best_so_far": best_reward}))
        return best

    def regenerate(self, context: RunContext, noises: dict) -> MethodResult:
        """The kept candidate again, from its index in the seed's candidate streams."""
        with torch.inference_mode():
            sample = sample_plain(context, [int(noises["candidate"][0])], self.config.sampler)
            return MethodResult(sample=sample, output=context.model.decode(sample))
