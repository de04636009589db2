"""Best-of-N: draw N = budget plain samples, keep the one the reward likes best."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import NoiseAlignError
from .base import MethodResult, RunContext, StepEvent
from .plain import PlainConfig, sample_plain


@dataclass(frozen=True)
class BestOfNConfig:
    """n: candidates (None: the whole budget, one query each); batch_size: candidates sampled
    and scored together; sampler: how each candidate is drawn (plain's options)."""

    n: int | None = None
    batch_size: int = 64
    sampler: PlainConfig = PlainConfig()


class BestOfN:
    name = "best-of-n"

    def __init__(self, config: BestOfNConfig = BestOfNConfig()):
        self.config = config

    def run(self, context: RunContext) -> MethodResult:
        n = self.config.n if self.config.n is not None else context.ledger.queries_left
        if n == float("inf") or n < 1:
            raise NoiseAlignError(f"best-of-n needs a budget of at least 1 reward query, got {n}; "
                                  "pass --budget N (N candidates, one query each)")
        n = int(n)
        best_reward, best_index, best_sample, best_output = -float("inf"), -1, None, None
        with torch.inference_mode():
            for chunk, start in enumerate(range(0, n, self.config.batch_size)):
                indices = range(start, min(start + self.config.batch_size, n))
                samples = sample_plain(context, indices, self.config.sampler)
                outputs = context.model.decode(samples)
                rewards = context.score(outputs)
                top = int(rewards.argmax())
                if rewards[top] > best_reward:
                    best_reward, best_index = float(rewards[top]), indices[top]
                    best_sample, best_output = samples[top:top + 1].clone(), outputs[top:top + 1].clone()
                context.observe(StepEvent(step=chunk, rewards=rewards,
                                          extras={"best_so_far": best_reward}))
        return MethodResult(sample=best_sample, output=best_output, reward=best_reward,
                            noises={"candidate": torch.tensor([best_index])},
                            info={"candidates": n, "best_candidate": best_index})

    def regenerate(self, context: RunContext, noises: dict) -> MethodResult:
        """The kept candidate again, from its index in the seed's candidate streams."""
        with torch.inference_mode():
            sample = sample_plain(context, [int(noises["candidate"][0])], self.config.sampler)
            return MethodResult(sample=sample, output=context.model.decode(sample))
