"""Search over paths: N noisy paths re-noised into M branches each, the N best kept, down the grid.

Ma, Tong, Jia, Hu, Su, Zhang, Yang, Li, Jaakkola, Jia, Xie, "Inference-Time Scaling for
Diffusion Models beyond Scaling Denoising Steps" (2025), section 3.2, search over paths, on the
model's grid sigma_0 > .. > sigma_T (sigma_T the end, 0):

    x_n = ODE(prior_std(sigma_0) z_T,n;  sigma_0 -> sigma_s),   n = 1 .. N              start at s
    i = s
    while i < T:
        j = i - f,  k = min(j + b, T)
        x_nm = x_n + sqrt(sigma_j^2 - sigma_i^2) z_nm,   m = 1 .. M         forward noise f steps up
        x_nm = ODE(x_nm;  sigma_j -> sigma_k)                               then b steps down (b > f)
        v_nm = r(decode(c(x_nm, sigma_k)))                                  c: Tweedie; x at sigma 0
        x_1 .. x_N = the N branches of largest v;   i = k
    return x_1

The forward kernel is exact in the EDM parameterization x = x_0 + sigma eps that every model
speaks here; each round moves b - f steps down the grid, and the last one lands on sigma_T, so
its values are the final samples' rewards and x_1 is the best of the final N.

Key: N paths (--paths), M branches per path (--branches); s = start x T (--start, the fraction
of the grid solved before the search); f, b (--forward-steps, --backward-steps); ODE the model's
solver (--solver). Path n's z_T is the first draw of the seed's stream n M, branch m of path n
draws from stream n M + m. A budget B pays floor(B / (N M)) rounds; by default the grid has
exactly the rounds it pays: T = s + rounds (b - f).
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
from .candidates import CandidateValues, ValueConfig, candidate_noises, check_lookahead
from .lineage import Genealogy
from .plain import SOLVERS


def default_widths(budget: int | None) -> tuple[int, int]:
    """(N, M) when neither is given: 2 paths x 16 branches, the reference code's 32 queries a round
    (its 4 x 8 did worse on digits), fewer branches below a budget of 256 so that at least 8
    rounds are paid (M = min(16, B // 16), at least 1)."""
    return 2, (16 if budget is None else max(1, min(16, budget // 16)))


@dataclass(frozen=True)
class PathSearchConfig:
    """Options of search over paths; N, M and the grid are fitted to the budget (`PathSearch.plan`)."""

    paths: int | None = option(None, "N, paths kept after every round (None: 2)")
    branches: int | None = option(None, "M, branches per path; a round costs N x M queries and a budget B pays "
                                        "floor(B / (N M)) rounds (None: min(16, B // 16), at least 1)")
    start: float = option(0.2, "fraction of the grid solved by the ODE before the search starts (the reference's "
                               "0.8 of flow time)")
    forward_steps: int = option(1, "f, grid steps a branch is noised back up")
    backward_steps: int = option(2, "b, grid steps the ODE then solves down (b > f; a round moves b - f steps)")
    steps: int | None = shared("steps", None, " (None: start plus the rounds the budget pays, b - f steps each; "
                                              "the model's default grid without a budget)")
    solver: str | None = shared("solver", None, " (None: the model's default)", choices=SOLVERS)
    value: ValueConfig = ValueConfig()

    def __post_init__(self) -> None:
        check([(self.paths is not None and self.paths < 1, f"--paths {self.paths}: need at least 1"),
               (self.branches is not None and self.branches < 1, f"--branches {self.branches}: need at least 1"),
               (not is_finite(self.start) or not 0 <= self.start < 1,
                f"--start {self.start}: need a fraction in [0, 1)"),
               (self.forward_steps < 1, f"--forward-steps {self.forward_steps}: need at least 1"),
               (self.backward_steps <= self.forward_steps,
                f"--backward-steps {self.backward_steps}: need more than --forward-steps {self.forward_steps}"),
               (self.steps is not None and self.steps < 1, f"--steps {self.steps}: need at least 1"),
               (self.solver is not None and self.solver not in SOLVERS,
                f"--solver {self.solver!r}: choose {' or '.join(SOLVERS)}")], "path-search")

    def first(self, steps: int) -> int:
        """s, the grid point the search starts from (at least f, so that a path can be noised back up)."""
        return max(self.forward_steps, round(self.start * steps))

    def rounds(self, steps: int) -> list[tuple[int, int, int]]:
        """(i, j, k) of every round down the grid of `steps` points: from i, noised up to j, solved to k."""
        f, b, i, found = self.forward_steps, self.backward_steps, self.first(steps), []
        while i < steps:
            found.append((i, i - f, min(i - f + b, steps)))
            i = found[-1][2]
        return found


def fit_grid(config: PathSearchConfig, rounds: int) -> int:
    """The smallest grid whose search takes exactly `rounds` rounds."""
    return next(t for t in range(1, 10 ** 5) if len(config.rounds(t)) >= rounds)


class PathSearch:
    """Search over paths under a reward-query budget: N x M queries per round."""

    name = "path-search"

    def __init__(self, config: PathSearchConfig = PathSearchConfig()):
        self.config = config

    def plan(self, problem: Problem, budget: int | None) -> "PathSearch":
        """Path search with N, M, the grid and the solver resolved for `budget` (see PathSearchConfig)."""
        config, model = self.config, problem.model
        check_lookahead(model, config.value.lookahead)
        default_paths, default_branches = default_widths(budget)
        paths = default_paths if config.paths is None else config.paths
        branches = max(1, default_paths * default_branches // paths) if config.branches is None else config.branches
        if budget is not None and budget < paths * branches:
            raise NoiseAlignError(f"path-search needs at least {paths * branches} reward queries for one round "
                                  f"({paths} paths x {branches} branches), got a budget of {budget}; raise --budget "
                                  "or lower --paths / --branches")
        solver = model.default_solver if config.solver is None else config.solver
        config = replace(config, paths=paths, branches=branches, solver=solver)
        if config.steps is None:
            fitted = model.default_steps if budget is None else fit_grid(config, budget // (paths * branches))
            config = replace(config, steps=fitted)
        return PathSearch(config)

    def run(self, context: RunContext) -> MethodResult:
        """Spends N x M queries per round; hands back the best path rebuilt alone."""
        method = self.plan(context.problem, context.ledger.query_limit)
        config, model = method.config, context.model
        n, m = config.paths, config.branches
        sigmas = model.sigmas(config.steps)
        rounds = config.rounds(config.steps)
        if context.ledger.query_limit is not None:
            rounds = rounds[:context.ledger.query_limit // (n * m)]
        values = CandidateValues(context, config.value)
        info = {"paths": n, "branches": m, "steps": config.steps, "rounds": len(rounds)}
        with torch.inference_mode():
            streams = context.noise_streams(range(n * m))
            z_T = candidate_noises(streams, n)[:, 0]
            genealogy = Genealogy(z_T)
            context.keep(lambda: method._result(context, genealogy, info))
            x = method._solve(context, model.prior_std(float(sigmas[0])) * z_T, sigmas[:config.first(config.steps) + 1])
            for r, (i, j, k) in enumerate(rounds):
                z = candidate_noises(streams, n)                                         # (N, M, *shape)
                noised = (x[:, None] + math.sqrt(float(sigmas[j]) ** 2 - float(sigmas[i]) ** 2) * z).flatten(0, 1)
                branches = method._solve(context, noised, sigmas[j:k + 1])
                v = values(branches, float(sigmas[k]))
                kept = torch.argsort(v, descending=True, stable=True)[:n]
                x = branches[kept.to(branches.device)]
                genealogy.record(kept // m, z.flatten(0, 1)[kept.to(z.device)])
                context.observe(StepEvent(step=r, sigma=float(sigmas[k]), rewards=v,
                                          extras={"kept_value": float(v[kept[0]])}))
            result = method._result(context, genealogy, info)
            result.reward = float(v[kept[0]]) if rounds and k == config.steps else None
            return result

    def _solve(self, context: RunContext, x: Tensor, sigmas: Tensor) -> Tensor:
        """The PF-ODE along `sigmas` for a batch of states, in chunks of candidate_batch."""
        chunks = x.split(self.config.value.candidate_batch)
        solver = context.model.default_solver if self.config.solver is None else self.config.solver
        return torch.cat([sample_ode(context.denoiser, chunk, sigmas, solver) for chunk in chunks])

    def _result(self, context: RunContext, genealogy: Genealogy, info: dict) -> MethodResult:
        """The best kept path (path 0) rebuilt alone."""
        result = self.regenerate(context, genealogy.lineage(0))
        result.info = {**info, "rounds_taken": genealogy.steps}
        return result

    def regenerate(self, context: RunContext, noises: dict[str, Tensor]) -> MethodResult:
        """A path from its z_T and the forward noise of each round taken (noise.pt), alone; the ODE
        finishes the grid after the last round taken."""
        model, config = context.model, self.config
        sigmas = model.sigmas(config.steps)
        z_T, z = noises["z_T"].to(context.device), noises["z"].to(context.device)
        with torch.inference_mode():
            position = config.first(config.steps)
            x = self._solve(context, model.prior_std(float(sigmas[0])) * z_T, sigmas[:position + 1])
            for (i, j, k), noise in zip(config.rounds(config.steps), z):
                x = self._solve(context, x + math.sqrt(float(sigmas[j]) ** 2 - float(sigmas[i]) ** 2) * noise,
                                sigmas[j:k + 1])
                position = k
            sample = self._solve(context, x, sigmas[position:])
            return MethodResult(sample=sample, output=model.decode(sample), noises=noises)
