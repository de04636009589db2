"""Plain sampling: the model as it is, no alignment. The baseline of every run."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..engine import sample_ancestral, sample_ode
from ..options import check, is_finite, shared
from .base import MethodResult, Problem, RunContext, StepEvent

SOLVERS = ("euler", "heun")


@dataclass(frozen=True)
class PlainConfig:
    """steps: grid points (None: the model's default); solver: "euler" (DDIM) or "heun"
    (None: the model's default); eta: 0 samples the PF-ODE, > 0 the DDIM-eta / ancestral SDE."""

    steps: int | None = shared("steps", None, " (None: the model's default)")
    solver: str | None = shared("solver", None, " (None: the model's default)", choices=SOLVERS)
    eta: float = shared("eta", 0.0)

    def __post_init__(self) -> None:
        check([(self.steps is not None and self.steps < 1, f"--steps {self.steps}: need at least 1 grid point"),
               (self.solver is not None and self.solver not in SOLVERS,
                f"--solver {self.solver!r}: choose {' or '.join(SOLVERS)}"),
               (not is_finite(self.eta) or self.eta < 0, f"--eta {self.eta}: need a finite eta >= 0")],
              "sampler")


def sample_plain(context: RunContext, indices: list[int] | range, config: PlainConfig,
                 observe_steps: bool = False) -> Tensor:
    """Clean states of samples `indices` of the run's seed; the noises come from their streams.

    Stream i yields z_T first, then one z per stochastic step, as diffusers' pipelines draw them.
    """
    model = context.model
    sigmas = model.sigmas(model.default_steps if config.steps is None else config.steps)
    streams = context.noise_streams(indices)
    x = model.prior_std(float(sigmas[0])) * streams.draw()

    def callback(i: int, sigma: float, x_i: Tensor, denoised: Tensor) -> None:
        context.observe(StepEvent(step=i, sigma=sigma, x=x_i, denoised=denoised))

    callback = callback if observe_steps else None
    if config.eta == 0:
        return sample_ode(context.denoiser, x, sigmas, config.solver or model.default_solver, callback)
    noises = [streams.draw() for _ in range(len(sigmas) - 1)]
    return sample_ancestral(context.denoiser, x, sigmas, noises, config.eta, callback)


class Plain:
    """Sample once from the seed; spends no reward query."""

    name = "plain"

    def __init__(self, config: PlainConfig = PlainConfig()):
        self.config = config

    def plan(self, problem: Problem, budget: int | None) -> "Plain":
        """Plain spends no query: every budget is fine."""
        return self

    def run(self, context: RunContext) -> MethodResult:
        with torch.inference_mode():
            sample = sample_plain(context, [0], self.config, observe_steps=True)
            return MethodResult(sample=sample, output=context.model.decode(sample))
