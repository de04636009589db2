"""Value-guided decoding, one step at a time: P states, K candidates each, a rule keeps P.

The loop SVDD (P = 1, keep one by softmax(v / alpha)) and beam search (P = W, keep the W best)
share. At every step the P states are denoised by one model call, each proposes K candidates
of the stochastic step (`candidates.propose`), all P K are valued by the reward of their clean
estimates, and `select` returns the kept candidates, best first. State p's candidate k draws
its noise from the seed's stream p K + k, so stream 0 yields z_T and then candidate 0's noise
at every step, as plain sampling's sample 0 does: with K = 1 the run is `plain --eta` exactly.

Steps the budget does not pay for, and steps that inject no noise (the step into sigma = 0),
take every state's candidate-0 noise unvalued. The result is the best kept state's lineage
rebuilt alone (`lineage.replay`), as `regenerate` rebuilds it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..errors import NoiseAlignError
from ..models.base import DiffusionModel
from .base import MethodResult, RunContext, StepEvent
from .candidates import CandidateValues, NoisyStep, ValueConfig, candidate_noises, propose
from .lineage import Genealogy, rebuild

Select = Callable[[Tensor], Tensor]
"""values (P, K) float64 -> flat indices p K + k of the kept candidates, best first."""


def paid_steps(model: DiffusionModel, step: NoisyStep, cost: int, budget: int | None, steps: int) -> int:
    """Noisy steps of the grid of `steps` points that a budget pays `cost` queries each for."""
    noisy = step.injecting_steps(model.sigmas(steps))
    return noisy if budget is None else min(budget // cost, noisy)


def fit_steps(model: DiffusionModel, step: NoisyStep, cost: int, budget: int | None, steps: int | None,
              unbounded_steps: int, method: str) -> int:
    """Grid points: `steps`, or the smallest grid with budget // cost noisy steps, so that the
    budget pays every noisy step (`unbounded_steps` without a budget). Refuses a budget below `cost`."""
    if budget is not None and budget < cost:
        raise NoiseAlignError(f"{method} needs at least {cost} reward queries for one step ({cost} candidates), "
                              f"got a budget of {budget}; raise --budget or lower the candidates")
    if steps is not None:
        return steps
    if budget is None:
        return unbounded_steps
    paid = budget // cost
    return next(t for t in range(1, paid + 10 ** 4) if step.injecting_steps(model.sigmas(t)) >= paid)


class StepwiseDecoder:
    """The population between steps (member 0 the best kept so far) and its genealogy."""

    def __init__(self, context: RunContext, steps: int, eta: float, states: int, candidates: int, value: ValueConfig):
        self.context, self.steps, self.eta = context, steps, eta
        self.sigmas, self.step = context.model.sigmas(steps), NoisyStep("ancestral", eta)
        self.states, self.candidates = states, candidates
        self.values = CandidateValues(context, value)
        self.streams = context.noise_streams(range(states * candidates))
        z_T = candidate_noises(self.streams, states)[:, 0]         # state p's z_T: stream p K's first draw
        self.x = context.model.prior_std(float(self.sigmas[0])) * z_T
        self.genealogy = Genealogy(z_T)
        self.valued_steps = 0

    def run(self, paid: int, select: Select) -> None:
        """Every step of the grid, valuing the first `paid` noisy ones."""
        for i in range(len(self.sigmas) - 1):
            sigma, sigma_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
            denoised = self.context.denoiser(self.x, sigma)               # one call for all P states
            z = candidate_noises(self.streams, self.states)             # (P, K, *shape)
            values, kept = None, torch.arange(self.states) * self.candidates
            if self.valued_steps < paid and self.step.injects(sigma, sigma_next):
                values = self.values(propose(self.step, self.x, sigma, sigma_next, denoised, z).flatten(0, 1),
                                     sigma_next)
                kept = select(values.view(self.states, self.candidates))
                self.valued_steps += 1
            parents, chosen = (kept // self.candidates).to(z.device), (kept % self.candidates).to(z.device)
            noise = z[parents, chosen]
            self.x = self.step(self.x[parents], sigma, sigma_next, denoised[parents], noise)
            self.genealogy.record(parents, noise)
            if values is not None:
                self.context.observe(StepEvent(step=i, sigma=sigma, rewards=values,
                                               extras={"kept_value": float(values[kept[0]])}))

    def result(self, info: dict) -> MethodResult:
        """The best kept state's lineage rebuilt alone, the PF-ODE finishing the steps not taken."""
        return rebuild(self.context, self.steps, self.eta, self.genealogy.lineage(0),
                       {**info, "valued_steps": self.valued_steps, "steps_taken": self.genealogy.steps})


def decode(context: RunContext, steps: int, eta: float, states: int, candidates: int, value: ValueConfig,
           select: Select, info: dict) -> MethodResult:
    """The loop on the model's grid of `steps` points with DDIM-eta steps, valuing the noisy steps
    the run's budget pays for; keep() holds the best member rebuilt."""
    paid = paid_steps(context.model, NoisyStep("ancestral", eta), states * candidates, context.ledger.query_limit,
                      steps)
    with torch.inference_mode():
        decoder = StepwiseDecoder(context, steps, eta, states, candidates, value)
        context.keep(lambda: decoder.result(info))
        decoder.run(paid, select)
        return decoder.result(info)
