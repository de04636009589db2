"""Zero-order search over the initial noise: move a pivot to its best neighbour on the sphere.

Ma, Tong, Jia, Hu, Su, Zhang, Yang, Li, Jaakkola, Jia, Xie, "Inference-Time Scaling for
Diffusion Models beyond Scaling Denoising Steps" (2025), section 3.2, zero-order search:

    z = z_T,  r_z = r(decode(ODE(z)))                                     the pivot
    while the budget lasts:
        y_n = cos(lambda) z + sin(lambda) |z| u_n,   n = 1 .. N             u_n unit, orthogonal to z
        r_n = r(decode(ODE(y_n)))
        if max_n r_n > r_z:  z, r_z = y_n*, r_n*                           move to the best neighbour
        else:                z = a fresh N(0, I) noise, r_z = r(decode(ODE(z)))      restart
    return ODE(z_best), the best noise scored

The neighbours lie on the pivot's sphere |y| = |z|, where Gaussian noise concentrates, at the
angle lambda from it: lambda is the distance d(y, z) = lambda of the paper's neighbourhood
S_z^lambda, measured on the unit sphere (two independent noises sit near pi / 2).

Key: N neighbours (--neighbours); lambda the angle in radians (--lambda); ODE the model's plain
sampler (--steps, --solver). The first pivot is the seed's z_T (stream 0), so the first query
scores the plain sample of the seed; neighbour n draws its direction from stream n + 1, the j-th
restart its pivot from stream N + 1 + j. A budget B pays 1 + N per round (+ 1 per restart); the
last round takes as many neighbours as the queries left pay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..engine import sample_ode
from ..errors import NoiseAlignError
from ..options import check, is_finite, option, shared
from .base import MethodResult, Problem, RunContext, StepEvent
from .plain import SOLVERS

UNBOUNDED_ROUNDS = 16
"""Rounds without a budget."""


def default_neighbours(budget: int | None) -> int:
    """N when none is given: 8, fewer for budgets below 65 (at least 8 rounds: (B - 1) // 8)."""
    return 8 if budget is None else max(1, min(8, (budget - 1) // 8))


@dataclass(frozen=True)
class ZoSearchConfig:
    """Options of zero-order search; N is fitted to the budget (`ZoSearch.plan`)."""

    neighbours: int | None = option(None, "N, neighbours scored per round, one query each; a budget B pays 1 + N "
                                          "per round, 1 more per restart (None: min(8, (B - 1) // 8))")
    lam: float = option(0.3, "angle in radians between the pivot and its neighbours on the sphere |z| "
                             "(independent noises: about pi / 2)", flag="--lambda")
    steps: int | None = shared("steps", None, " (None: the model's default)")
    solver: str | None = shared("solver", None, " (None: the model's default)", choices=SOLVERS)
    candidate_batch: int = option(64, "neighbours sampled and scored as one batch (a memory bound)")

    def __post_init__(self) -> None:
        check([(self.neighbours is not None and self.neighbours < 1,
                f"--neighbours {self.neighbours}: need at least 1"),
               (not is_finite(self.lam) or not 0 < self.lam <= math.pi,
                f"--lambda {self.lam}: need an angle in (0, pi]"),
               (self.steps is not None and self.steps < 1, f"--steps {self.steps}: need at least 1"),
               (self.solver is not None and self.solver not in SOLVERS,
                f"--solver {self.solver!r}: choose {' or '.join(SOLVERS)}"),
               (self.candidate_batch < 1, f"--candidate-batch {self.candidate_batch}: need at least 1")], "zo-search")


def neighbours_of(z: Tensor, directions: Tensor, lam: float) -> Tensor:
    """cos(lam) z + sin(lam) |z| u_n, u_n the directions (N, *shape) made unit and orthogonal to z (1, *shape)."""
    flat, g = z.reshape(1, -1).double(), directions.reshape(len(directions), -1).double()
    unit = flat / flat.norm()
    u = g - (g @ unit.T) * unit
    u = u / u.norm(dim=1, keepdim=True)
    y = math.cos(lam) * flat + math.sin(lam) * flat.norm() * u
    return y.to(z.dtype).reshape(len(directions), *z.shape[1:])


class ZoSearch:
    """Zero-order search under a reward-query budget: 1 + N queries a round, 1 per restart."""

    name = "zo-search"

    def __init__(self, config: ZoSearchConfig = ZoSearchConfig()):
        self.config = config

    def plan(self, problem: Problem, budget: int | None) -> "ZoSearch":
        """Zero-order search with N, the grid and the solver resolved; a budget must pay the pivot
        and one neighbour."""
        model = problem.model
        if budget is not None and budget < 2:
            raise NoiseAlignError(f"zo-search needs at least 2 reward queries (the pivot and one neighbour), got a "
                                  f"budget of {budget}; raise --budget")
        config = self.config
        neighbours = default_neighbours(budget) if config.neighbours is None else config.neighbours
        return ZoSearch(replace(config, neighbours=neighbours,
                                steps=model.default_steps if config.steps is None else config.steps,
                                solver=model.default_solver if config.solver is None else config.solver))

    def run(self, context: RunContext) -> MethodResult:
        """Spends every query of the budget (UNBOUNDED_ROUNDS rounds without one)."""
        method = self.plan(context.problem, context.ledger.query_limit)
        config, ledger = method.config, context.ledger
        n = config.neighbours
        directions = context.noise_streams(range(1, n + 1))
        max_rounds = UNBOUNDED_ROUNDS if ledger.query_limit is None else math.inf
        with torch.inference_mode():
            z = context.noise_streams([0]).draw()
            r = float(method._score(context, z)[0])
            best, info = (r, z), {"neighbours": n, "rounds": 0, "moves": 0, "restarts": 0}
            context.keep(lambda: method._result(context, best[1], best[0], info))
            while info["rounds"] < max_rounds and ledger.queries_left >= 1:
                candidates = neighbours_of(z, directions.draw()[:int(min(n, ledger.queries_left))], config.lam)
                rewards = method._score(context, candidates)
                top = int(rewards.argmax())
                info["rounds"] += 1
                if rewards[top] > r:
                    z, r = candidates[top:top + 1], float(rewards[top])
                    info["moves"] += 1
                elif ledger.queries_left >= 1:
                    z = context.noise_streams([n + 1 + info["restarts"]]).draw()
                    r = float(method._score(context, z)[0])
                    info["restarts"] += 1
                if r > best[0]:
                    best = (r, z)
                context.observe(StepEvent(step=info["rounds"] - 1, rewards=rewards, extras={"best_so_far": best[0]}))
            return method._result(context, best[1], best[0], info)

    def _score(self, context: RunContext, z: Tensor) -> Tensor:
        """Rewards of the ODE samples of noises z (B, *shape), in chunks; one query each."""
        rewards = [context.score(context.model.decode(self._sample(context, chunk)))
                   for chunk in z.split(self.config.candidate_batch)]
        return torch.cat(rewards).detach().to("cpu", torch.float64)

    def _sample(self, context: RunContext, z: Tensor) -> Tensor:
        """The plain ODE sample of noises z (the model's grid and solver where the config has none)."""
        model, config = context.model, self.config
        sigmas = model.sigmas(model.default_steps if config.steps is None else config.steps)
        x = model.prior_std(float(sigmas[0])) * z.to(context.device)
        solver = model.default_solver if config.solver is None else config.solver
        return sample_ode(context.denoiser, x, sigmas, solver)

    def _result(self, context: RunContext, z: Tensor, reward: float, info: dict) -> MethodResult:
        result = self.regenerate(context, {"z_T": z.clone()})
        result.reward, result.info = reward, dict(info)
        return result

    def regenerate(self, context: RunContext, noises: dict[str, Tensor]) -> MethodResult:
        """The best noise's ODE sample, alone (batch 1), as the run hands it back."""
        with torch.inference_mode():
            sample = self._sample(context, noises["z_T"])
            return MethodResult(sample=sample, output=context.model.decode(sample), noises=noises)
