"""SVDD-PM: soft value-based decoding, one of M candidates kept at every step.

Li, Zhao, Wang, Biancalani, Lee, Regev, Levine, Diamant, "Derivative-Free Guidance in
Continuous and Discrete Diffusion Models with Soft Value-Based Decoding" (2024), Algorithm 1
with the posterior-mean value (SVDD-PM):

    x = prior_std(sigma_0) z_T
    for t = 0 .. T-1:
        x_k = step(x, sigma_t, sigma_t+1, D(x, sigma_t), z_k),  k = 1 .. M     the model's own SDE
        v_k = r(decode(c(x_k, sigma_t+1)))                                    c: Tweedie (PM)
        x = x_k*,  k* ~ softmax(v / alpha)      (alpha = 0: k* = argmax v)
    return x

v_k is the soft value of x_k estimated by the reward of its posterior mean; with alpha > 0 the
kept candidate is a draw of the soft-optimal policy's importance sampling, alpha -> 0 its
greedy limit. Beam search with W = 1 beam is SVDD with alpha = 0 (`beam.py`).

Key: M candidates per step (--candidates); alpha the temperature (--alpha); step the DDIM-eta
step (--eta 1: DDPM); c the clean estimate (--lookahead). Candidate k draws from the seed's
stream k, so M = 1 is plain DDIM-eta sampling of the seed. A budget B pays floor(B / M) valued
steps, on the grid those steps cover by default.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..engine.noise import sample_generator
from ..options import check, is_finite, option, shared
from .base import MethodResult, Problem, RunContext
from .candidates import NoisyStep, ValueConfig, check_lookahead
from .lineage import rebuild
from .resampling import SELECTION_STREAM, categorical
from .stepwise import decode, fit_steps

UNBOUNDED_STEPS = 50
"""The grid without a budget: the official code's 50 DDIM steps."""


def default_candidates(budget: int | None) -> int:
    """M when none is given: 8, fewer below a budget of 64 so that at least 8 steps are valued
    (min(8, B // 8), at least 2). On digits M = 8 did best at budgets 64, 256 and 1024
    (docs/methods.md); the official code's 20 pays too few steps at these budgets."""
    return 8 if budget is None else max(2, min(8, budget // 8))


@dataclass(frozen=True)
class SvddConfig:
    """Options of SVDD-PM; M and the grid are fitted to the budget (`Svdd.plan`)."""

    candidates: int | None = option(None, "M, candidates per step, i.e. reward queries per valued step; a budget B "
                                          "pays floor(B / M) valued steps (None: min(8, B // 8), at least 2)")
    alpha: float = option(0.0, "temperature: keep candidate k with probability softmax(value / alpha); 0 keeps the "
                               "best (argmax)")
    steps: int | None = shared("steps", None, " (None: the smallest grid whose noisy steps the budget pays for, "
                                              f"i.e. B // M + 1 points; {UNBOUNDED_STEPS} without a budget)")
    eta: float = shared("eta", 1.0)
    value: ValueConfig = ValueConfig()

    def __post_init__(self) -> None:
        check([(self.candidates is not None and self.candidates < 1,
                f"--candidates {self.candidates}: need at least 1"),
               (not is_finite(self.alpha) or self.alpha < 0, f"--alpha {self.alpha}: need a finite alpha >= 0"),
               (self.steps is not None and self.steps < 1, f"--steps {self.steps}: need at least 1"),
               (not is_finite(self.eta) or self.eta <= 0, f"--eta {self.eta}: need a finite eta > 0, or the "
                                                          "candidates coincide")], "svdd")


def keep_one(values: Tensor, alpha: float, u: Tensor) -> Tensor:
    """The kept candidate of (1, M) values: argmax at alpha = 0, else a draw from softmax(v / alpha)."""
    if alpha == 0:
        return values[0].argmax()[None]
    return categorical(values / alpha, u)


class Svdd:
    """SVDD-PM under a reward-query budget: M queries per valued step."""

    name = "svdd"

    def __init__(self, config: SvddConfig = SvddConfig()):
        self.config = config

    def plan(self, problem: Problem, budget: int | None) -> "Svdd":
        """SVDD with M and the grid resolved for `budget` (see SvddConfig)."""
        check_lookahead(problem.model, self.config.value.lookahead)
        m = default_candidates(budget) if self.config.candidates is None else self.config.candidates
        steps = fit_steps(problem.model, NoisyStep("ancestral", self.config.eta), m, budget, self.config.steps,
                          UNBOUNDED_STEPS, "svdd")
        return Svdd(replace(self.config, candidates=m, steps=steps))

    def run(self, context: RunContext) -> MethodResult:
        """Spends M queries per valued step; hands back the kept path rebuilt alone."""
        config = self.plan(context.problem, context.ledger.query_limit).config
        selection = sample_generator(context.seed, SELECTION_STREAM)

        def select(values: Tensor) -> Tensor:
            return keep_one(values, config.alpha, torch.rand(1, generator=selection, dtype=torch.float64))

        info = {"candidates": config.candidates, "steps": config.steps, "alpha": config.alpha}
        return decode(context, config.steps, config.eta, 1, config.candidates, config.value, select, info)

    def regenerate(self, context: RunContext, noises: dict[str, Tensor]) -> MethodResult:
        """The kept path (noise.pt) rebuilt alone, as the run rebuilt it."""
        return rebuild(context, self.config.steps, self.config.eta, noises)
