"""Candidates of a stochastic step, valued by the reward of their clean estimates.

What Demon, SVDD, beam search and FK steering share (path-search and zo-search value their
states the same way). At a step sigma -> sigma_next, a population of P states x_p, denoised by
one model call D(x, sigma) for all of them, proposes K candidates each:

    x_pk = step(x_p, sigma, sigma_next, D(x_p, sigma), z_pk),     z_pk ~ N(0, I),

`step` being the engine's DDIM-eta (ancestral) step or Demon's beta-SDE step (`NoisyStep`). A
candidate's value is the reward of its decoded clean estimate,

    v(x_pk) = r(decode(c(x_pk, sigma_next))),

c being Tweedie's D(x, sigma_next) (one call), the PF-ODE look-ahead to 0 (Heun), or the
model's consistency estimate; c(x, 0) = x. Estimates, decoding and scoring run in chunks of at
most `candidate_batch` candidates (a memory bound); every value is one reward query on the
run's ledger.

Demon's step is this at P = 1 with NoisyStep("beta-sde", beta): `DemonSession.propose()` is
`candidate_noises` + `propose` + `CandidateValues.outputs`, scored by the run's reward in one
call (or judged by a person), and `choose()` combines the K noises into z* where the methods
here keep one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator

import torch
from torch import Tensor

from ..budget import CountedDenoiser
from ..engine import ancestral_sigmas, ancestral_step, beta_sde_step, euler_step, ode_lookahead
from ..engine.noise import NoiseStreams
from ..engine.samplers import ODE_SOLVERS
from ..errors import NoiseAlignError
from ..models.base import DiffusionModel
from ..options import check, option
from .base import RunContext

STEP_KINDS = ("ancestral", "beta-sde")
LOOKAHEADS = ("tweedie", "ode", "consistency")
Estimator = Callable[[Tensor, float], Tensor]
"""c(x, sigma): the clean-state estimate of a batch of states at one sigma."""


@dataclass(frozen=True)
class NoisyStep:
    """x' = step(x, sigma, sigma_next, D(x, sigma), z): DDIM-eta / ancestral (`level` = eta, 1 is
    DDPM) or Demon's beta-SDE (`level` = beta; its step into 0 is the Euler step)."""

    kind: str = "ancestral"
    level: float = 1.0

    def __call__(self, x: Tensor, sigma: float, sigma_next: float, denoised: Tensor, z: Tensor) -> Tensor:
        if self.kind == "ancestral":
            return ancestral_step(x, sigma, sigma_next, denoised, z, self.level)
        if sigma_next == 0:
            return euler_step(x, sigma, sigma_next, denoised)
        return beta_sde_step(x, sigma, sigma_next, denoised, z, self.level)

    def injects(self, sigma: float, sigma_next: float) -> bool:
        """Whether z enters this step; where it does not, every candidate is the same state."""
        if self.kind == "ancestral":
            return ancestral_sigmas(sigma, sigma_next, self.level)[1] > 0
        return sigma_next > 0 and self.level > 0

    def injecting_steps(self, sigmas: Tensor) -> int:
        """How many steps of the grid `sigmas` inject noise (the ones candidates can differ at)."""
        return sum(self.injects(float(sigmas[i]), float(sigmas[i + 1])) for i in range(len(sigmas) - 1))


@dataclass(frozen=True)
class ValueConfig:
    """How candidates are valued: the clean estimate scored, and how many run as one batch."""

    lookahead: str = option("tweedie", "clean estimate each candidate is scored on: Tweedie D(x, sigma) (one "
                                       "call), the PF-ODE to 0 (--lookahead-solver), or the model's consistency model",
                            choices=LOOKAHEADS)
    lookahead_solver: str = option("unipc", "solver of the ODE look-ahead (unipc, dpmpp-2m: one call a step; "
                                            "heun: two)", choices=ODE_SOLVERS)
    lookahead_steps: int = option(15, "steps of the ODE look-ahead from sigma_max (fewer further down)")
    candidate_batch: int = option(64, "candidates estimated, decoded and scored as one batch (a memory bound)")

    def __post_init__(self) -> None:
        check([(self.lookahead not in LOOKAHEADS, f"--lookahead {self.lookahead!r}: choose {', '.join(LOOKAHEADS)}"),
               (self.lookahead_solver not in ODE_SOLVERS,
                f"--lookahead-solver {self.lookahead_solver!r}: choose {', '.join(ODE_SOLVERS)}"),
               (self.lookahead_steps < 1, f"--lookahead-steps {self.lookahead_steps}: need at least 1"),
               (self.candidate_batch < 1, f"--candidate-batch {self.candidate_batch}: need at least 1")], "value")


def supports_consistency(model: DiffusionModel) -> bool:
    """Whether the model has a few-step (consistency) estimate for the look-ahead."""
    return getattr(model, "consistency_estimate", None) is not None and getattr(model, "supports_consistency", True)


def check_lookahead(model: DiffusionModel, lookahead: str) -> None:
    """NoiseAlignError if `model` cannot compute the `lookahead` estimate (for a method's plan())."""
    if lookahead == "consistency" and not supports_consistency(model):
        raise NoiseAlignError(f"model {model.name!r} offers no consistency (few-step) estimate; "
                              "use --lookahead ode or --lookahead tweedie")


def clean_estimator(context: RunContext, value: ValueConfig) -> Estimator:
    """c(x, sigma) over a batch of states, every model call counted on the run's ledger."""
    model = context.model
    check_lookahead(model, value.lookahead)
    if value.lookahead == "tweedie":
        return context.denoiser
    if value.lookahead == "ode":
        return partial(_ode, context.denoiser, model.sigma_min, model.sigma_max, value.lookahead_steps,
                       value.lookahead_solver)
    estimate, cond = model.consistency_estimate, model.encode_prompt(context.problem.prompt)

    def consistency(x: Tensor, sigma: float) -> Tensor:
        return estimate(x, torch.as_tensor(sigma, dtype=x.dtype, device=x.device), cond)

    return CountedDenoiser(consistency, context.ledger)


def _ode(denoiser: Estimator, sigma_min: float, sigma_max: float, steps: int, solver: str,
         x: Tensor, sigma: float) -> Tensor:
    return ode_lookahead(denoiser, x, sigma, sigma_min, sigma_max, steps, solver)


def candidate_noises(streams: NoiseStreams, states: int) -> Tensor:
    """One draw of every stream, as (P, K, *shape): candidate k of state p draws from stream p K + k."""
    z = streams.draw()
    return z.view(states, len(z) // states, *z.shape[1:])


def propose(step: NoisyStep, x: Tensor, sigma: float, sigma_next: float, denoised: Tensor, z: Tensor) -> Tensor:
    """The candidates x_pk = step(x_p, z_pk): x and denoised (P, *shape), z (P, K, *shape) -> (P, K, *shape)."""
    return step(x[:, None], sigma, sigma_next, denoised[:, None], z)


class CandidateValues:
    """v(x) = r(decode(c(x, sigma))) of a batch of states at one sigma, in chunks: one query each."""

    def __init__(self, context: RunContext, config: ValueConfig):
        self.context, self.batch = context, config.candidate_batch
        self.estimate = clean_estimator(context, config)

    def outputs(self, x: Tensor, sigma: float) -> Iterator[Tensor]:
        """decode(c(x, sigma)) of states x (B, *shape), chunk by chunk; no query (a person may judge them)."""
        for chunk in x.split(self.batch):
            yield self.context.model.decode(chunk if sigma == 0 else self.estimate(chunk, sigma))

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        """Values (B,) in float64 on the CPU of states x (B, *shape) at noise level sigma."""
        return torch.cat([self.context.score(output).detach().to("cpu", torch.float64)
                          for output in self.outputs(x, sigma)])
