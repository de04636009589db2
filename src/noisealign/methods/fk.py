"""Feynman-Kac steering: N particles of the model's SDE, resampled by reward potentials.

Singhal, Horvitz, Teehan, Ren, Yu, Cho, Ranganath, "A General Framework for Inference-time
Scaling and Steering of Diffusion Models" (ICML 2025), Algorithm 1 (FK-IPS):

    x^i = prior_std(sigma_0) z_T^i,  log w^i = 0                              i = 1 .. N
    for t = 0 .. T-1:
        x^i <- step(x^i, sigma_t, sigma_t+1, D(x^i, sigma_t), z_t^i)            the model's own SDE
        if t is a scoring step:
            r^i = r(decode(c(x^i, sigma_t+1)))                                c: Tweedie; x at sigma 0
            log w^i += log G_t^i
            if t < T-1 and ESS(w) < threshold N:                              ESS = 1 / sum p_i^2
                a = systematic(w);  x, history <- x^a, history^a;  log w <- 0
    best: the particle of largest r;  sample: particle j ~ w

    log G_t = lambda (r_t - r_t')            difference (t' the previous scoring step, r = 0 before)
            = lambda max_{s <= t} r_s        max  (over the particle's scored history)
            = lambda sum_{s <= t} r_s        sum
    last step: log G = lambda r(x_0) - (the log G its lineage received so far)

The last potential makes the product of potentials along any path exp(lambda r(x_0)), so the
weighted particles target p(x_0) exp(lambda r(x_0)) / Z for every potential (with exact model
transitions); for `difference` it is the same formula as the other steps, which telescope.

Key: N particles (--particles); lambda inverse temperature (--lambda); step the DDIM-eta step
(--eta 1: DDPM); a scoring step every k steps (--resample-every) and always the last; threshold
(--ess-threshold) in [0, 1]: 1 resamples at every scoring step, 0 never. Particle i draws z_T
and its step noises from the seed's stream i; resampling and `sample` draw their uniforms from
the selection stream. A budget B pays N x (scoring steps) queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ..engine.noise import sample_generator
from ..errors import NoiseAlignError
from ..options import check, is_finite, option, shared
from .base import MethodResult, Problem, RunContext, StepEvent
from .candidates import CandidateValues, NoisyStep, ValueConfig, check_lookahead
from .lineage import Genealogy, rebuild
from .resampling import SELECTION_STREAM, categorical, effective_sample_size, systematic

POTENTIALS = ("max", "difference", "sum")
SELECTIONS = ("best", "sample")
SCORINGS_PER_RUN = 5
"""Scoring steps the default interval aims at: the official code resamples every 20 of 100 steps."""
UNBOUNDED_PARTICLES = 16
"""N when neither --particles nor a budget says."""


@dataclass(frozen=True)
class FkConfig:
    """Options of FK steering; the defaults follow the official code for images (max potential,
    lambda 10, adaptive resampling below ESS N / 2, DDPM proposals)."""

    particles: int | None = option(None, "N, particles; a budget B pays N x (scoring steps) queries (None: "
                                         "B // scoring steps)")
    lam: float = option(10.0, "inverse temperature lambda: the weighted particles target p(x) exp(lambda r(x))",
                        flag="--lambda")
    potential: str = option("max", "G_t from the particle's rewards: exp(lambda max r), exp(lambda (r_t - r_prev)) "
                                   "or exp(lambda sum r); the last step corrects any of them to exp(lambda r(x_0))",
                            choices=POTENTIALS)
    select: str = option("best", "the result: the final particle of largest reward, or one drawn by the final "
                                 "weights (a sample of p(x) exp(lambda r(x)))", choices=SELECTIONS)
    resample_every: int | None = option(None, "score the particles every k steps and at the last step, each scoring "
                                              "N queries (None: with --particles, the smallest k the budget pays; "
                                              f"else about {SCORINGS_PER_RUN} scorings on the grid)")
    ess_threshold: float = option(0.5, "resample (systematic) at a scoring step when ESS < threshold x N "
                                       "(1: at every scoring step, 0: never)")
    steps: int | None = shared("steps", None, " (None: the model's default)")
    eta: float = shared("eta", 1.0)
    value: ValueConfig = ValueConfig()

    def __post_init__(self) -> None:
        check([(self.particles is not None and self.particles < 1, f"--particles {self.particles}: need at least 1"),
               (not is_finite(self.lam) or self.lam < 0, f"--lambda {self.lam}: need a finite lambda >= 0"),
               (self.potential not in POTENTIALS, f"--potential {self.potential!r}: choose {', '.join(POTENTIALS)}"),
               (self.select not in SELECTIONS, f"--select {self.select!r}: choose {' or '.join(SELECTIONS)}"),
               (self.resample_every is not None and self.resample_every < 1,
                f"--resample-every {self.resample_every}: need at least 1"),
               (not is_finite(self.ess_threshold) or not 0 <= self.ess_threshold <= 1,
                f"--ess-threshold {self.ess_threshold}: need a number in [0, 1]"),
               (self.steps is not None and self.steps < 1, f"--steps {self.steps}: need at least 1"),
               (not is_finite(self.eta) or self.eta <= 0, f"--eta {self.eta}: need a finite eta > 0, or the "
                                                          "particles never differ")], "fk")


def scoring_steps(steps: int, every: int) -> list[int]:
    """The steps after which particles are scored: every `every`-th and the last, 0-based."""
    return list(range(every - 1, steps - 1, every)) + [steps - 1]


def log_potential(kind: str, lam: float, r: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
    """(log G_t, the potential's new running quantity) of particles with rewards r."""
    if kind == "difference":
        return lam * (r - memory), r
    if kind == "max":
        running = torch.maximum(memory, r)
        return lam * running, running
    running = memory + r
    return lam * running, running


INITIAL_MEMORY = {"difference": 0.0, "max": -math.inf, "sum": 0.0}


class Move(NamedTuple):
    """One step of the particle system, for the caller's records (genealogy, trace)."""

    index: int
    sigma: float
    noises: Tensor              # (G N, *shape), the z_t^i the particles took
    ancestors: Tensor           # (G N,) flat index of each particle's parent after the step
    rewards: Tensor | None      # (G N,) when scored, before resampling
    ess: Tensor | None          # (G,) when scored, before resampling
    resampled: Tensor | None    # (G,) bool when scored


@dataclass
class Particles:
    """G independent groups of N particles, flat (G N, ...), group by group."""

    x: Tensor
    rewards: Tensor     # the latest reward of each particle (nan before its first scoring)
    log_w: Tensor       # log-weights since the last resampling
    memory: Tensor      # the potential's running quantity
    received: Tensor    # sum of log G along each particle's lineage

    def take(self, ancestors: Tensor, reset: Tensor) -> "Particles":
        """The resampled system: every field of particle a_i in slot i, the weights of the slots
        in `reset` (those of the groups that resampled) set to 1."""
        log_w = torch.where(reset, torch.zeros_like(self.log_w), self.log_w[ancestors])
        return Particles(self.x[ancestors.to(self.x.device)], self.rewards[ancestors], log_w,
                         self.memory[ancestors], self.received[ancestors])


def steer(denoiser: Callable[[Tensor, float], Tensor], sigmas: Tensor, step: NoisyStep, x: Tensor, config: FkConfig,
          every: int, noise: Callable[[], Tensor], value: Callable[[Tensor, float], Tensor],
          uniform: Callable[[int], Tensor], groups: int = 1, on_step: Callable[[Move], None] | None = None
          ) -> Particles:
    """Algorithm 1 over the grid `sigmas` for `groups` independent systems of len(x) / groups particles.

    noise() draws every particle's z_t (G N, *shape); value(x, sigma) is r(decode(c(x, sigma)));
    uniform(G) gives G uniforms in [0, 1) for systematic resampling.
    """
    n, dtype = len(x) // groups, torch.float64
    flat = lambda t: t.reshape(groups, n)  # noqa: E731
    system = Particles(x, torch.full((len(x),), math.nan, dtype=dtype), torch.zeros(len(x), dtype=dtype),
                       torch.full((len(x),), INITIAL_MEMORY[config.potential], dtype=dtype),
                       torch.zeros(len(x), dtype=dtype))
    last, scored = len(sigmas) - 2, set(scoring_steps(len(sigmas) - 1, every))
    for t in range(last + 1):
        sigma, sigma_next = float(sigmas[t]), float(sigmas[t + 1])
        z = noise()
        system.x = step(system.x, sigma, sigma_next, denoiser(system.x, sigma), z)
        ancestors, rewards, ess, resampled = torch.arange(len(x)), None, None, None
        if t in scored:
            rewards = value(system.x, sigma_next).to(dtype)
            if t == last:
                log_g = config.lam * rewards - system.received
            else:
                log_g, system.memory = log_potential(config.potential, config.lam, rewards, system.memory)
            system.log_w, system.received, system.rewards = system.log_w + log_g, system.received + log_g, rewards
            ess = effective_sample_size(flat(system.log_w))
            resampled = (ess < config.ess_threshold * n) | (config.ess_threshold >= 1)
            if t < last and bool(resampled.any()):
                offsets = torch.arange(groups)[:, None] * n
                chosen = systematic(flat(system.log_w), uniform(groups)) + offsets
                ancestors = torch.where(resampled[:, None], chosen, flat(ancestors)).reshape(-1)
                system = system.take(ancestors, resampled.repeat_interleave(n))
            else:
                resampled = torch.zeros_like(resampled)
        if on_step is not None:
            on_step(Move(t, sigma, z, ancestors, rewards, ess, resampled))
    return system


def choose(system: Particles, select: str, uniform: Callable[[int], Tensor], groups: int = 1) -> Tensor:
    """The flat index of each group's result: its largest final reward, or a draw by its final weights."""
    n = len(system.x) // groups
    offsets = torch.arange(groups) * n
    if select == "best":
        return system.rewards.reshape(groups, n).argmax(1) + offsets
    return categorical(system.log_w.reshape(groups, n), uniform(groups)) + offsets


def plan_schedule(config: FkConfig, steps: int, budget: int | None) -> tuple[int, int]:
    """(N, k): particles and scoring interval, resolved from what is given and what the budget pays."""
    scorings = lambda every: len(scoring_steps(steps, every))  # noqa: E731
    every = max(1, round(steps / SCORINGS_PER_RUN)) if config.resample_every is None else config.resample_every
    if budget is None:
        return UNBOUNDED_PARTICLES if config.particles is None else config.particles, every
    if config.particles is None:
        particles = budget // scorings(every)
        if particles < 2:
            raise NoiseAlignError(f"fk needs at least 2 particles x {scorings(every)} scoring steps = "
                                  f"{2 * scorings(every)} reward queries, got a budget of {budget}; raise --budget "
                                  "or --resample-every")
        return particles, every
    particles = config.particles
    if config.resample_every is not None:
        if particles * scorings(config.resample_every) > budget:
            raise NoiseAlignError(f"fk with {particles} particles scored at {scorings(config.resample_every)} steps "
                                  f"needs {particles * scorings(config.resample_every)} reward queries, got a budget "
                                  f"of {budget}; raise --budget or lower --particles")
        return particles, config.resample_every
    if particles > budget:
        raise NoiseAlignError(f"fk with {particles} particles needs at least {particles} reward queries (the final "
                              f"scoring), got a budget of {budget}; raise --budget or lower --particles")
    return particles, next(k for k in range(1, steps + 1) if particles * scorings(k) <= budget)


class FeynmanKac:
    """FK steering under a reward-query budget: N particles scored at every k-th step and the last."""

    name = "fk"

    def __init__(self, config: FkConfig = FkConfig()):
        self.config = config

    def plan(self, problem: Problem, budget: int | None) -> "FeynmanKac":
        """FK with the grid, N and k resolved for `budget` (see FkConfig)."""
        check_lookahead(problem.model, self.config.value.lookahead)
        steps = problem.model.default_steps if self.config.steps is None else self.config.steps
        particles, every = plan_schedule(self.config, steps, budget)
        return FeynmanKac(replace(self.config, steps=steps, particles=particles, resample_every=every))

    def run(self, context: RunContext) -> MethodResult:
        """Spends N queries per scoring step; hands back the chosen particle's lineage rebuilt alone."""
        method = self.plan(context.problem, context.ledger.query_limit)
        config, model, step = method.config, context.model, NoisyStep("ancestral", method.config.eta)
        sigmas = model.sigmas(config.steps)
        selection = sample_generator(context.seed, SELECTION_STREAM)
        uniform = lambda g: torch.rand(g, generator=selection, dtype=torch.float64)  # noqa: E731
        with torch.inference_mode():
            streams = context.noise_streams(range(config.particles))
            z_T = streams.draw()
            genealogy = Genealogy(z_T)
            leader = [0]   # the particle of largest latest reward: what a stopped run hands back
            info = {"particles": config.particles, "resample_every": config.resample_every, "resamplings": 0,
                    "scorings": len(scoring_steps(config.steps, config.resample_every))}
            context.keep(lambda: method._result(context, genealogy, leader[0], info))

            def record(move: Move) -> None:
                genealogy.record(move.ancestors, move.noises[move.ancestors.to(move.noises.device)])
                if move.rewards is None:
                    return
                resampled = bool(move.resampled[0])
                leader[0] = int(torch.argmax(move.rewards[move.ancestors]))
                info["resamplings"] += resampled
                context.observe(StepEvent(step=move.index, sigma=move.sigma, rewards=move.rewards,
                                          extras={"ess": float(move.ess[0]), "resampled": float(resampled)}))

            system = steer(context.denoiser, sigmas, step, model.prior_std(float(sigmas[0])) * z_T, config,
                           config.resample_every, streams.draw, CandidateValues(context, config.value), uniform,
                           on_step=record)
            chosen = int(choose(system, config.select, uniform)[0])
            info.update(chosen_particle=chosen, final_ess=float(effective_sample_size(system.log_w[None])[0]))
            result = method._result(context, genealogy, chosen, info)
            result.reward = float(system.rewards[chosen])
            return result

    def _result(self, context: RunContext, genealogy: Genealogy, member: int, info: dict) -> MethodResult:
        """Particle `member`'s lineage rebuilt alone, the PF-ODE finishing any step not yet taken."""
        return self.regenerate(context, genealogy.lineage(member), dict(info, steps_taken=genealogy.steps))

    def regenerate(self, context: RunContext, noises: dict[str, Tensor], info: dict | None = None) -> MethodResult:
        """A particle's lineage (noise.pt) rebuilt alone, as the run rebuilt its result."""
        steps = context.model.default_steps if self.config.steps is None else self.config.steps
        return rebuild(context, steps, self.config.eta, noises, info)
