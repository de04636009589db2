"""Sampling demons: choose each injected noise of a beta-SDE from K scored candidates.

Yeh, Lee, Chen, "Training-Free Diffusion Model Alignment with Sampling Demons" (ICLR 2025),
docs/demon.md. At a step sigma -> sigma_next, K noises z_k give K candidates
x_k = step(x, z_k); each is scored through a clean estimate, r_k = r(decode(c(x_k, sigma_next))),
and the step is taken with z* = sqrt(N) normalize(sum_k b_k z_k), b the demon's weights.
No gradient is ever taken, so any reward works (a classifier, JPEG size, a person's clicks).
The candidate step and the look-ahead are candidates.py's, shared with SVDD, beam and FK;
what is Demon's own is `weigh`, the step from K rewards to z*.

Departures from the official code, on purpose: D(x, sigma) is computed once per step and
shared by the K candidates; the adaptive tau is the std of each step's own rewards (the
official code freezes the first step's); rewards are used in float64.

Noise streams (same seed, same bits): candidate slot k draws from the seed's stream k, so
stream 0 yields z_T first and then candidate 0's noise at every step, exactly as a plain
stochastic sampler's sample 0 draws them; the other streams' first draw is unused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor

from ..engine import karras_sigmas, sample_beta_sde, sample_ode
from ..engine.samplers import ODE_SOLVERS
from ..engine.schedules import karras_position
from ..errors import NoiseAlignError
from ..models.base import DiffusionModel
from ..options import check, is_finite, number_or, option, shared
from .base import MethodResult, Problem, RunContext, StepEvent
from .candidates import CandidateValues, NoisyStep, ValueConfig, candidate_noises, check_lookahead, propose

PAPER_SIGMA_MAX, PAPER_SIGMA_MIN, PAPER_ODE_AFTER, PAPER_BETA = 14.648, 0.002, 0.11, 0.1
"""The official code's Stable Diffusion grid, its switch to the ODE and its beta, for scaling."""

DEMONS = ("tanh", "boltzmann")
LOOKAHEADS = ("ode", "tweedie", "consistency")


@dataclass(frozen=True)
class DemonConfig:
    """Options of Demon. Defaults follow the paper's code (tanh, adaptive tau, beta 0.1, ODE
    look-ahead), with beta and ode_after carried over to the model's sigma range, and K and
    the grid fitted to the budget (`Demon.plan`): what `noisealign generate --method demon
    --budget B` runs with no other flag is `Demon(DemonConfig()).plan(problem, B)`, the
    configuration benchmarks/demon_vs_best_of_n.py measures (docs/demon.md).

    demon: "tanh" (b_k = tanh((r_k - mean r) / tau)) or "boltzmann" (b = softmax(r / tau)).
    K: candidates per step, i.e. reward queries per demon step. None: `default_K(B)`,
        min(16, B // 16), at least 1 (16 demon steps up to B = 256, then K = 16).
    beta: noise level of the reverse SDE (0 would make every candidate identical). None: the
        paper's 0.1 scaled by 14.648 / sigma_max, so that beta * sigma_max, the ratio of the
        Langevin part to the ODE part at the top of the grid, is the paper's 1.46 (0.018 for
        sigma_max 80; at beta 0.1 there the Langevin part washes out the early choices).
    tau: weight temperature, a positive number or "adaptive" (the std of each step's rewards).
    lookahead: the clean estimate c(x_k, sigma_next) scored: "ode" (the PF-ODE to sigma_min),
        "tweedie" (D(x_k, sigma_next), one call) or "consistency" (the model's few-step estimate).
    lookahead_solver, lookahead_steps: the ODE look-ahead's solver (engine.samplers.ODE_SOLVERS)
        and c_steps, its steps from sigma_max (fewer lower down). UniPC with 15 steps scores as
        Heun with 20 on digits (paired over 48 runs: +0.04 +- 0.17 log-odds at B = 64, -0.01 +-
        0.05 at B = 256) at 0.41x the model calls (benchmarks/lookahead_solvers.py, docs/demon.md).
    ode_after: sigma below which the sampler finishes with the ODE, no queries. None: the sigma
        at the same Karras position (rho 7) on the model's sigma range as the paper's 0.11 on
        its 14.648 .. 0.002 grid, i.e. about 70% of the way from sigma_max to sigma_min.
    grid_points: T, the Karras grid's points from sigma_max to sigma_min (then 0). None: the
        smallest grid whose steps down to ode_after the budget pays for (`fit_grid`); the
        paper's 64 when the budget is unbounded.
    candidate_batch: most candidates whose look-aheads run as one batch (a memory bound).
    """

    demon: str = option("tanh", "weights b_k = tanh((r_k - mean r) / tau) or softmax(r / tau)",
                        choices=DEMONS)
    K: int | None = option(None, "candidate noises per step, i.e. reward queries per demon step "
                                 "(None: min(16, budget // 16)); a budget B pays floor(B / K) demon steps",
                           flag="--K")
    beta: float | None = option(None, "noise level of the reverse SDE (None: the paper's 0.1 scaled by "
                                      "14.648 / sigma_max, keeping its beta * sigma_max; 0.018 for digits)")
    tau: float | str = option("adaptive", "weight temperature, a number or 'adaptive' (each step's reward std)",
                              parse=number_or("adaptive"))
    lookahead: str = option("ode", "clean estimate each candidate is scored on: the PF-ODE to 0 (--lookahead-solver), "
                                   "Tweedie D(x, sigma) (one call), or the model's consistency model",
                            choices=LOOKAHEADS)
    lookahead_solver: str = option("unipc", "solver of the ODE look-ahead (unipc, dpmpp-2m: one call a step; "
                                            "heun: two)", choices=ODE_SOLVERS)
    lookahead_steps: int = option(15, "steps of the ODE look-ahead from sigma_max (fewer further down)")
    ode_after: float | None = option(None, "sigma below which to finish with the ODE, no queries (None: the "
                                           "paper's 0.11 on SD's 14.6..0.002 grid, moved to the same Karras "
                                           "position of the model's range)")
    grid_points: int | None = shared("steps", None, " of the Karras grid (None: the smallest grid whose steps down "
                                                    "to ode_after the budget pays for)", flag="--steps")
    candidate_batch: int = option(64, "candidates whose look-aheads run as one batch (a memory bound)")

    def __post_init__(self) -> None:
        check([
            (self.demon not in DEMONS, f"--demon {self.demon!r}: choose {' or '.join(DEMONS)}"),
            (self.K is not None and self.K < 1, f"--K {self.K}: need at least 1 candidate per step"),
            (self.beta is not None and not (is_finite(self.beta) and self.beta > 0),
             f"--beta {self.beta}: need a finite beta > 0, or the K candidates coincide"),
            (self.tau != "adaptive" and not (is_finite(self.tau) and self.tau > 0),
             f"--tau {self.tau!r}: give a finite positive number or 'adaptive'"),
            (self.lookahead not in LOOKAHEADS, f"--lookahead {self.lookahead!r}: choose {', '.join(LOOKAHEADS)}"),
            (self.lookahead_solver not in ODE_SOLVERS,
             f"--lookahead-solver {self.lookahead_solver!r}: choose {', '.join(ODE_SOLVERS)}"),
            (self.lookahead_steps < 1, f"--lookahead-steps {self.lookahead_steps}: need at least 1"),
            (self.ode_after is not None and not (is_finite(self.ode_after) and self.ode_after >= 0),
             f"--ode-after {self.ode_after}: need a finite sigma >= 0"),
            (self.grid_points is not None and self.grid_points < 2,
             f"--steps {self.grid_points}: Demon needs at least 2 grid points"),
            (self.candidate_batch < 1, f"--candidate-batch {self.candidate_batch}: need at least 1"),
        ], "demon")

    @property
    def value(self) -> ValueConfig:
        """The look-ahead options as the shared candidate machinery takes them (candidates.py)."""
        return ValueConfig(self.lookahead, self.lookahead_solver, self.lookahead_steps, self.candidate_batch)

    def beta_for(self, model: DiffusionModel) -> float:
        """The resolved beta on `model`'s sigma range (see the class docstring)."""
        return PAPER_BETA * PAPER_SIGMA_MAX / model.sigma_max if self.beta is None else self.beta

    def ode_after_for(self, model: DiffusionModel) -> float:
        """The resolved ode_after on `model`'s sigma range (see the class docstring)."""
        if self.ode_after is not None:
            return self.ode_after
        position = karras_position(PAPER_ODE_AFTER, PAPER_SIGMA_MIN, PAPER_SIGMA_MAX)
        top, bottom = model.sigma_max ** (1 / 7), model.sigma_min ** (1 / 7)
        return (top + position * (bottom - top)) ** 7


def default_K(budget: int | None) -> int:
    """K when none is given: min(16, B // 16), at least 1; the paper's 16 without a budget.

    So a budget below 256 pays for 16 demon steps (on digits: K 4 at B = 64, 8 at 128, 16 at
    256, each on fit_grid's 23-point grid) and a larger one for B / 16 steps of 16 candidates.
    Measured on digits (docs/demon.md, seeds 200..231 x 3 targets): at B = 64, K 4 beats K 3,
    5 and 6 (by 0.3 to 0.9 log-odds); at B = 128, K 8 beats K 4, 6 and 12; at B = 512, K 16
    (32 steps) beats K 32 (16 steps) and ties K 24. A trade-off, as we read it: fewer
    candidates on more, finer steps have less injected noise per step to choose among; more
    candidates on fewer, coarser steps choose less often.
    """
    return 16 if budget is None else max(1, min(16, budget // 16))


def demon_steps_on(grid_points: int, model: DiffusionModel, ode_after: float) -> int:
    """Steps of a Karras grid with sigma >= ode_after that end above 0: Demon's steps at most."""
    sigmas = karras_sigmas(grid_points, model.sigma_min, model.sigma_max)
    return sum(1 for sigma in sigmas[:-2].tolist() if sigma >= ode_after)


def fit_grid(config: DemonConfig, model: DiffusionModel, budget: int) -> DemonConfig:
    """`config` on the smallest grid whose steps above ode_after a budget pays for in full
    (K None: `default_K(budget)`).

    A budget B pays for B // K demon steps, taken from sigma_max down; on a fine grid they
    all fall at the top, where choices matter least. Fitting the grid spreads them down to
    ode_after instead (on digits: 23 points for 16 steps, 46 for 32, 183 for 128). A coarser
    tail below ode_after costs nothing measurable: finishing on a 20-point tail instead
    changes the digits rewards by 0.001.
    """
    if config.K is None:
        config = replace(config, K=default_K(budget))
    steps, ode_after = budget // config.K, config.ode_after_for(model)
    points = next(t for t in range(2, steps + 10**4) if demon_steps_on(t, model, ode_after) >= steps)
    return replace(config, grid_points=points)


def tanh_weights(rewards: Tensor, tau: float) -> Tensor:
    """Tanh demon: b_k = tanh((r_k - mean r) / tau); low-reward noises get negative weight."""
    return torch.tanh((rewards - rewards.mean()) / tau)


def boltzmann_weights(rewards: Tensor, tau: float) -> Tensor:
    """Boltzmann demon: b_k = exp(r_k / tau) / sum_j exp(r_j / tau)."""
    return torch.softmax(rewards / tau, dim=0)


WEIGHTS = {"tanh": tanh_weights, "boltzmann": boltzmann_weights}


def rewards_tied(rewards: Tensor) -> bool:
    """All rewards equal up to float32 rounding: they carry no preference."""
    spread = float(rewards.max() - rewards.min())
    return spread <= 8 * torch.finfo(torch.float32).eps * float(rewards.abs().max())


def combine_noises(z: Tensor, weights: Tensor) -> Tensor | None:
    """z* = sqrt(N) normalize(sum_k b_k z_k), N the elements of one state; None if the sum vanishes.

    A standard normal in N dimensions lies near the sphere of radius sqrt(N), so z* stays a
    plausible noise however the weights are scaled. z: (K, *shape), weights: (K,).
    """
    total = torch.tensordot(weights.to(device=z.device, dtype=torch.float64), z.to(torch.float64), dims=1)
    norm = float(total.norm())
    scale = float(weights.abs().sum()) * math.sqrt(total.numel())
    if norm <= 1e-9 * scale or scale == 0:
        return None
    return (math.sqrt(total.numel()) / norm * total).to(z.dtype).unsqueeze(0)


class Weighing(NamedTuple):
    """One demon step's choice: z*, the temperature used, whether it fell back to candidate 0's
    noise, and the largest |b_k| as a share of sum |b_k|."""

    z_star: Tensor
    tau: float
    degenerate: bool
    max_weight: float


def weigh(z: Tensor, rewards: Tensor, demon: str, tau: float | str) -> Weighing:
    """z* of one step from its K noises z (K, *shape) and their rewards (K,), float64.

    K = 1 has nothing to choose: the candidate's noise is used as drawn, so Demon with K = 1 is
    plain beta-SDE sampling. Tied rewards, or weights whose sum of noises vanishes, fall back to
    candidate 0's noise: a fresh standard normal, like plain. tau "adaptive" is the std of these
    rewards (undefined for a single candidate).
    """
    if tau == "adaptive":
        tau = float(rewards.std()) if len(rewards) > 1 else math.nan
    tau = float(tau)
    if len(z) == 1:
        return Weighing(z[:1], tau, False, 1.0)
    if rewards_tied(rewards):
        return Weighing(z[:1], tau, True, 1.0)
    weights = WEIGHTS[demon](rewards, tau)
    z_star = combine_noises(z, weights)
    if z_star is None:
        return Weighing(z[:1], tau, True, 1.0)
    return Weighing(z_star, tau, False, float(weights.abs().max() / weights.abs().sum()))


@dataclass(frozen=True)
class DemonState:
    """Where a Demon run stands between two steps. Its tensors are never written in place."""

    x: Tensor                               # the state at the grid's point `index`
    index: int = 0
    chosen: tuple[Tensor, ...] = ()         # z* of every step taken
    degenerate_steps: int = 0
    tau: float | None = None                # the last step's temperature
    last_rewards: Tensor | None = None      # the last step's candidate rewards

    def advance(self, x: Tensor, weighing: Weighing, rewards: Tensor) -> "DemonState":
        """The state after a step to x with `weighing`'s z*."""
        return DemonState(x, self.index + 1, (*self.chosen, weighing.z_star),
                          self.degenerate_steps + weighing.degenerate, weighing.tau, rewards)


@dataclass(frozen=True)
class DemonSnapshot:
    """Everything `DemonSession.restore` needs to continue exactly as from here: the state, the
    noise streams' generator states and the ledger's counters (queries, NFE, evaluations, calls)."""

    state: DemonState
    generators: tuple[Tensor, ...]
    counts: tuple[int, int, int, int]


class DemonSession:
    """Demon one step at a time, for the automatic reward and for a person alike.

    One step from x at sigma to sigma_next (the paper's algorithm, section 4):

        D = D(x, sigma)                                       one model call, shared
        z_k ~ N(0, I),  x_k = step(x, D, z_k),  k = 1..K      the candidates (candidates.propose)
        r_k = r(decode(c(x_k, sigma_next)))                   propose() -> the caller's reward
        b = tanh((r - mean r) / tau)  or  softmax(r / tau)    choose(r): `weigh`
        z* = sqrt(N) normalize(sum_k b_k z_k),  x <- step(x, D, z*)

    `propose()` returns the decoded look-aheads; `choose(rewards)` takes the step with those
    rewards (scores, or a person's clicks: chosen +1, others -1) and returns its StepEvent;
    `finish()` integrates the PF-ODE over the rest of the grid. `snapshot()` and `restore()`
    take the session back to an earlier step (the web app's undo). `Demon.run` is this loop
    with the run's reward.
    """

    def __init__(self, context: RunContext, config: DemonConfig):
        if config.K is None or config.grid_points is None:  # resolved for the ledger's budget, as Demon.run does
            config = Demon(config).plan(context.problem, context.ledger.query_limit).config
        self.context, self.config = context, config
        model = context.model
        self.sigmas = karras_sigmas(config.grid_points, model.sigma_min, model.sigma_max)
        self.beta, self.ode_after = config.beta_for(model), config.ode_after_for(model)
        self.step = NoisyStep("beta-sde", self.beta)
        self.demon_steps = demon_steps_on(config.grid_points, model, self.ode_after)
        self.values = CandidateValues(context, config.value)
        self.streams = context.noise_streams(range(config.K))
        self.z_T = self.streams.draw()[:1]
        self.state = DemonState(model.prior_std(float(self.sigmas[0])) * self.z_T)
        self._pending: tuple[Tensor, Tensor] | None = None  # (z_k, D) of the proposed step

    @property
    def x(self) -> Tensor:
        return self.state.x

    @property
    def index(self) -> int:
        """The grid position of x."""
        return self.state.index

    @property
    def sigma(self) -> float:
        return float(self.sigmas[self.index])

    @property
    def stochastic_steps_left(self) -> int:
        """Steps left with sigma >= ode_after that end above 0 (the step into 0 is always the ODE's)."""
        return max(self.demon_steps - self.index, 0)

    def propose(self) -> Tensor:
        """Decoded clean estimates c(x_k, sigma_next) of K candidates x_k = step(x, z_k), (K, ...)."""
        if self.stochastic_steps_left == 0:
            raise NoiseAlignError(f"no demon step left below sigma {self.sigma:.4g}; call finish()")
        sigma, sigma_next = self.sigma, float(self.sigmas[self.index + 1])
        denoised = self.context.denoiser(self.x, sigma)
        z = candidate_noises(self.streams, 1)
        candidates = propose(self.step, self.x, sigma, sigma_next, denoised, z)[0]
        self._pending = (z[0], denoised)
        return torch.cat(list(self.values.outputs(candidates, sigma_next)))

    def choose(self, rewards: Tensor) -> StepEvent:
        """Weigh the proposed noises by `rewards` (K,), take the step with z*, report it."""
        if self._pending is None:
            raise NoiseAlignError("choose() needs candidates: call propose() first")
        z, denoised = self._pending
        if rewards.shape != (len(z),):
            raise NoiseAlignError(f"choose() needs {len(z)} rewards, one per candidate, got shape "
                                  f"{tuple(rewards.shape)}")
        weighing = weigh(z, rewards.detach().to(torch.float64).cpu(), self.config.demon, self.config.tau)
        sigma, sigma_next = self.sigma, float(self.sigmas[self.index + 1])
        event = StepEvent(step=self.index, sigma=sigma, x=self.x, denoised=denoised, rewards=rewards,
                          extras={"tau": weighing.tau, "degenerate": float(weighing.degenerate),
                                  "max_weight": weighing.max_weight})
        x = self.step(self.x, sigma, sigma_next, denoised, weighing.z_star)
        self.state, self._pending = self.state.advance(x, weighing, rewards), None
        return event

    def finish(self) -> Tensor:
        """Integrate the PF-ODE (Heun) from the current sigma over the rest of the grid to 0."""
        return sample_ode(self.context.denoiser, self.x, self.sigmas[self.index:], solver="heun")

    def snapshot(self) -> DemonSnapshot:
        """The session as it stands (take it before propose(): a proposal is not part of it)."""
        ledger = self.context.ledger
        return DemonSnapshot(self.state, tuple(g.get_state() for g in self.streams.generators),
                             (ledger.reward_queries, ledger.nfe, ledger.network_evaluations, ledger.denoiser_calls))

    def restore(self, snapshot: DemonSnapshot) -> None:
        """Back to `snapshot`: the next propose() draws the very candidates it drew then."""
        self.state, self._pending = snapshot.state, None
        for generator, state in zip(self.streams.generators, snapshot.generators):
            generator.set_state(state)
        ledger = self.context.ledger
        ledger.reward_queries, ledger.nfe, ledger.network_evaluations, ledger.denoiser_calls = snapshot.counts

    def noises(self) -> dict[str, Tensor]:
        """z_T and the z* of every step taken: with the grid, they regenerate the sample exactly
        (sample_beta_sde over the first len(z_star) steps, then sample_ode)."""
        chosen = self.state.chosen
        z_star = torch.stack(chosen) if chosen else self.z_T.new_zeros((0, *self.z_T.shape))
        return {"z_T": self.z_T, "z_star": z_star}


class Demon:
    """Demon under a reward-query budget B: floor(B / K) demon steps at most, from sigma_max
    down; the steps the budget cannot pay for, and those below ode_after, use the ODE."""

    name = "demon"

    def __init__(self, config: DemonConfig = DemonConfig()):
        self.config = config

    def plan(self, problem: Problem, budget: int | None) -> "Demon":
        """Demon with K and the grid resolved for `budget` (see DemonConfig), checked to run."""
        config, model = self.config, problem.model
        K = config.K if config.K is not None else default_K(budget)
        if budget is not None and budget < K:
            raise NoiseAlignError(f"demon needs at least K = {K} reward queries for one step, got a budget of "
                                  f"{budget}; raise --budget or lower --K")
        check_lookahead(model, config.lookahead)
        config = replace(config, K=K)
        if config.grid_points is None:
            config = fit_grid(config, model, budget) if budget is not None else replace(config, grid_points=64)
        return Demon(config)

    def run(self, context: RunContext) -> MethodResult:
        """Spends K queries per demon step and none on the final sample.

        MethodResult.reward is None: no query is spent scoring the final output (the caller
        scores it outside the budget); info holds the last step's candidate rewards. Stopped
        early, the run hands back the current state finished by the ODE (no further query).
        """
        config = self.plan(context.problem, context.ledger.query_limit).config
        with torch.inference_mode():
            session = DemonSession(context, config)
            context.keep(lambda: self._result(context, session))
            while session.stochastic_steps_left > 0 and context.ledger.queries_left >= config.K:
                context.observe(session.choose(context.score(session.propose())))
            return self._result(context, session)

    @staticmethod
    def _result(context: RunContext, session: "DemonSession") -> MethodResult:
        """The session's state finished by the PF-ODE: the sample Demon hands back."""
        with torch.inference_mode():
            sample = session.finish()
            output = context.model.decode(sample)
        state = session.state
        last = state.last_rewards
        info = {"K": session.config.K, "grid_points": session.config.grid_points,
                "demon_steps": len(state.chosen), "degenerate_steps": state.degenerate_steps,
                "final_tau": state.tau, "beta": session.beta, "ode_after": session.ode_after,
                "last_step_reward_mean": None if last is None else float(last.mean()),
                "last_step_reward_max": None if last is None else float(last.max())}
        return MethodResult(sample=sample, output=output, reward=None, noises=session.noises(), info=info)

    def regenerate(self, context: RunContext, noises: dict[str, Tensor]) -> MethodResult:
        """The sample again from its noises: the beta-SDE with the chosen z*, then the ODE. No queries."""
        model, beta = context.model, self.config.beta_for(context.model)
        sigmas = karras_sigmas(self.config.grid_points, model.sigma_min, model.sigma_max)
        z_T, z_star = noises["z_T"].to(context.device), noises["z_star"].to(context.device)
        steps = len(z_star)
        with torch.inference_mode():
            x = model.prior_std(float(sigmas[0])) * z_T
            x = sample_beta_sde(context.denoiser, x, sigmas[:steps + 1], list(z_star), beta)
            sample = sample_ode(context.denoiser, x, sigmas[steps:], solver="heun")
            return MethodResult(sample=sample, output=model.decode(sample))
