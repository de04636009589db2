"""Beam search over the sampler's noise: W beams, M candidates each, the W best kept.

The W > 1 generalization of greedy SVDD, the search baseline test-time scaling studies
compare particle methods against, on the same candidates:

    x_w = prior_std(sigma_0) z_T,w,  w = 1 .. W
    for t = 0 .. T-1:
        x_wm = step(x_w, sigma_t, sigma_t+1, D(x_w, sigma_t), z_wm),  m = 1 .. M
        v_wm = r(decode(c(x_wm, sigma_t+1)))
        x_1 .. x_W = the W candidates of largest v among all W M
    return x_1 (the best beam)

W = 1 is greedy SVDD (SVDD-PM with alpha = 0), bit for bit: beam 0's candidate m draws from
stream m as SVDD's does. Unlike FK steering, beams never duplicate a state: the W kept are W
distinct candidates, and nothing is weighted, so beam search optimizes, it does not sample.

Key: W beams (--beams); M candidates per beam (--candidates); step the DDIM-eta step (--eta 1:
DDPM); c the clean estimate (--lookahead). Beam w's candidate m draws from the seed's stream
w M + m. A budget B pays floor(B / (W M)) valued steps, on the grid they cover by default.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..options import check, is_finite, option, shared
from .base import MethodResult, Problem, RunContext
from .candidates import NoisyStep, ValueConfig, check_lookahead
from .lineage import rebuild
from .stepwise import decode, fit_steps

UNBOUNDED_STEPS = 50


def default_widths(budget: int | None) -> tuple[int, int]:
    """(W, M) when neither is given: M = 8 candidates as SVDD's default, W = min(4, B // 128) beams
    (at least 1), so that at least 8 steps are valued (M = min(8, B // (8 W)), at least 2)."""
    if budget is None:
        return 4, 8
    beams = max(1, min(4, budget // 128))
    return beams, max(2, min(8, budget // (8 * beams)))


@dataclass(frozen=True)
class BeamConfig:
    """Options of beam search; W, M and the grid are fitted to the budget (`Beam.plan`)."""

    beams: int | None = option(None, "W, beams kept at every step (None: min(4, B // 128), at least 1)")
    candidates: int | None = option(None, "M, candidates per beam; a step costs W x M queries and a budget B pays "
                                          "floor(B / (W M)) valued steps (None: min(8, B // (8 W)), at least 2)")
    steps: int | None = shared("steps", None, " (None: the smallest grid whose noisy steps the budget pays for, "
                                              f"i.e. B // (W M) + 1 points; {UNBOUNDED_STEPS} without a budget)")
    eta: float = shared("eta", 1.0)
    value: ValueConfig = ValueConfig()

    def __post_init__(self) -> None:
        check([(self.beams is not None and self.beams < 1, f"--beams {self.beams}: need at least 1"),
               (self.candidates is not None and self.candidates < 1,
                f"--candidates {self.candidates}: need at least 1"),
               (self.steps is not None and self.steps < 1, f"--steps {self.steps}: need at least 1"),
               (not is_finite(self.eta) or self.eta <= 0, f"--eta {self.eta}: need a finite eta > 0, or the "
                                                          "candidates coincide")], "beam")


def keep_best(values: Tensor, beams: int) -> Tensor:
    """The `beams` candidates of largest value among (W, M) values, best first (ties: lowest index)."""
    return torch.argsort(values.flatten(), descending=True, stable=True)[:beams]


class Beam:
    """Beam search under a reward-query budget: W x M queries per valued step."""

    name = "beam"

    def __init__(self, config: BeamConfig = BeamConfig()):
        self.config = config

    def plan(self, problem: Problem, budget: int | None) -> "Beam":
        """Beam search with W, M and the grid resolved for `budget` (see BeamConfig)."""
        check_lookahead(problem.model, self.config.value.lookahead)
        default_beams, default_candidates = default_widths(budget)
        beams = default_beams if self.config.beams is None else self.config.beams
        candidates = (max(1, default_beams * default_candidates // beams) if self.config.candidates is None
                      else self.config.candidates)
        steps = fit_steps(problem.model, NoisyStep("ancestral", self.config.eta), beams * candidates, budget,
                          self.config.steps, UNBOUNDED_STEPS, "beam")
        return Beam(replace(self.config, beams=beams, candidates=candidates, steps=steps))

    def run(self, context: RunContext) -> MethodResult:
        """Spends W x M queries per valued step; hands back the best beam rebuilt alone."""
        config = self.plan(context.problem, context.ledger.query_limit).config
        w, m = config.beams, config.candidates
        info = {"beams": w, "candidates": m, "steps": config.steps}
        return decode(context, config.steps, config.eta, w, m, config.value, lambda v: keep_best(v, w), info)

    def regenerate(self, context: RunContext, noises: dict[str, Tensor]) -> MethodResult:
        """The best beam's path (noise.pt) rebuilt alone, as the run rebuilt it."""
        return rebuild(context, self.config.steps, self.config.eta, noises)
