"""Training-free reward guidance: DPS (Chung et al., ICLR 2023), universal guidance (Bansal et
al., 2023) and FreeDoM (Yu et al., ICCV 2023) in one sampler.

    x = prior_std(sigma_0) z_T
    for i = 0 .. n - 1:                                            (sigma_i > sigma_{i+1})
        for k = 1 .. N:                                            (self-recurrence)
            x0_hat = D(x, sigma_i)                                 (Tweedie's estimate)
            g      = grad_x r(decode(x0_hat))                      (one reward query)
            x'     = step(x, sigma_i, sigma_{i+1}, x0_hat, z_ik) + s w_i g
            if k < N:  x = x' + sqrt(sigma_i^2 - sigma_{i+1}^2) eps_ik   (re-noise to sigma_i)
        x = x'
    return decode(x)

Key: D the model's denoiser (its guidance folded in), decode its decoder (the VAE for latent
models: part of the gradient's graph), r the reward, step the DDIM-eta step (`--eta`; 1 is
DDPM, as DPS samples), z_ik and eps_ik standard normal, s the scale (`--scale`), N the
recurrences (`--recurrence`, universal guidance's self-recurrence; 1: none), w_i the schedule:

- tilt (default): w_i = sigma_i (sigma_i - sigma_down,i), i.e. the step of the guided denoiser
  D + s sigma^2 g. This is universal guidance's forward guidance (eps_hat - s sigma g, written
  in sigma) and DPS's approximation of the score of p(x) exp(s r(x)): exact for a Gaussian
  with a linear reward, so s is an inverse temperature on the reward, whatever the grid.
- constant: w_i = 1, DPS's and FreeDoM's fixed step in x, whose effect grows with the steps.

Cost: n N reward queries (`plan` fits N to the budget, or refuses steps x recurrences it cannot
pay); 2 n N NFE with checkpointing, which keeps one call's activations of the denoiser, the
decoder and the reward at a time, not their sum. The result is the sampler replayed from the
saved noises and the applied guidance terms s w_i g (noise.pt), no reward needed: that is
`regenerate`, bit for bit (a reward's backward pass is not recomputed, as it need not be
bit-stable across thread counts). A run stopped early keeps its state so far, finished by the
same sampler without guidance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..engine import ancestral_sigmas, ancestral_step
from ..errors import NoiseAlignError
from ..models.base import DiffusionModel
from ..options import check, is_finite, option, shared
from .base import MethodResult, Problem, RunContext, StepEvent
from .dno_checkpointing import checkpointed
from .seed_batch import SeedBatch

SCHEDULES = ("tilt", "constant")
MAX_RECURRENCE = 10
"""Recurrences a budget buys at most when --recurrence is not given (universal guidance's largest)."""

Guide = Callable[[int, int, Tensor], tuple[Tensor, Tensor]]
"""guide(i, k, x) -> (D(x, sigma_i), the guidance term added to step i's k-th pass)."""


@dataclass(frozen=True)
class GuidanceConfig:
    """Reward guidance's options.

    steps, eta: the DDIM-eta sampler (50 steps, eta = 1: DDPM, as DPS).
    scale, schedule: s and w (tilt: s is the inverse temperature of p(x) exp(s r(x))).
    recurrence: passes per step (None: what the budget pays over the steps, at most 10).
    checkpointing: recompute the denoiser and the decode in the backward pass.
    """

    steps: int = shared("steps", 50)
    eta: float = shared("eta", 1.0)
    scale: float = option(1.0, "guidance scale s (tilt: inverse temperature on the reward)")
    schedule: str = option("tilt", "guidance weight over sigma: tilt (s sigma^2 on the denoiser) or constant",
                           choices=SCHEDULES)
    recurrence: int | None = option(None, "passes per step, re-noised in between (None: as many as --budget "
                                          f"pays, at most {MAX_RECURRENCE})")
    checkpointing: bool = option(True, "recompute the denoiser and the decode in the backward pass")

    def __post_init__(self) -> None:
        check([(self.schedule not in SCHEDULES, f"--schedule {self.schedule!r}: choose {', '.join(SCHEDULES)}"),
               (self.steps < 1, f"--steps {self.steps}: need at least 1"),
               (not (is_finite(self.eta) and self.eta >= 0), f"--eta {self.eta}: need a finite value >= 0"),
               (not is_finite(self.scale), f"--scale {self.scale}: need a finite number"),
               (self.recurrence is not None and self.recurrence < 1, f"--recurrence {self.recurrence}: need at least 1")],
              "guidance")


def schedule_weight(schedule: str, sigma: float, sigma_next: float, eta: float) -> float:
    """w_i: tilt sigma (sigma - sigma_down), constant 1."""
    if schedule == "constant":
        return 1.0
    return sigma * (sigma - ancestral_sigmas(sigma, sigma_next, eta)[0])


def guided_sample(guide: Guide, x: Tensor, sigmas: Tensor, eta: float, z: Tensor, renoise: Tensor) -> Tensor:
    """The loop above with guide(i, k, x) giving D and the term: z (n, N, B, *shape),
    renoise (n, N - 1, B, *shape). The run's guide takes gradients, the replay's reads terms."""
    recurrence = z.shape[1]
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        for k in range(recurrence):
            denoised, term = guide(i, k, x)
            x_next = ancestral_step(x, sigma, sigma_next, denoised, z[i, k], eta) + term
            if k < recurrence - 1:
                x = x_next + math.sqrt(sigma ** 2 - sigma_next ** 2) * renoise[i, k]
        x = x_next
    return x


def reward_gradient(denoiser: Callable[[Tensor, float], Tensor], decode: Callable[[Tensor], Tensor],
                    score: Callable[[Tensor], Tensor], x: Tensor, sigma: float) -> tuple[Tensor, Tensor, Tensor]:
    """(D(x, sigma), r(decode(D)), grad_x r(decode(D(x, sigma)))), each row's gradient its own."""
    x_in = x.detach().requires_grad_(True)
    with torch.enable_grad():
        denoised = denoiser(x_in, sigma)
        reward = score(decode(denoised))                                              # (B,)
        if not reward.requires_grad:
            raise NoiseAlignError("the reward returned no gradient; guidance needs a differentiable reward")
        (g,) = torch.autograd.grad(reward.sum(), x_in)
    return denoised.detach(), reward.detach(), g


def replay(denoiser: Callable[[Tensor, float], Tensor], model: DiffusionModel, steps: int, eta: float,
           noises: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(sample, output) from saved noises and guidance terms, no reward and no gradient."""
    sigmas, shape = model.sigmas(steps), tuple(model.sample_shape)
    z_T, z, renoise, terms = (noises.get(k) for k in ("z_T", "z", "renoise", "guidance"))
    N = None if z is None else z.shape[1]
    expected = {"z_T": (1, *shape), "z": (steps, N, 1, *shape), "renoise": (steps, (N or 1) - 1, 1, *shape),
                "guidance": (steps, N, 1, *shape)}
    if any(noises.get(k) is None or tuple(noises[k].shape) != v for k, v in expected.items()):
        raise NoiseAlignError(f"saved noises do not fit {steps} guided steps of a {shape} state; "
                              "regenerate with the model and config of the run that saved them")
    device = getattr(model, "device", torch.device("cpu"))
    z, renoise, terms = z.to(device), renoise.to(device), terms.to(device)
    with torch.inference_mode():
        x = guided_sample(lambda i, k, x: (denoiser(x, float(sigmas[i])), terms[i, k]),
                          model.prior_std(float(sigmas[0])) * z_T.to(device), sigmas, eta, z, renoise)
        return x, model.decode(x)


class Guidance:
    """Guide each seed's sampler by the reward's gradient at every step; all seeds as one batch."""

    name = "guidance"

    def __init__(self, config: GuidanceConfig = GuidanceConfig()):
        self.config = config

    def plan(self, problem: Problem, budget: int | None) -> "Guidance":
        """Checked to run, with the recurrences fitted to the budget (result.json records them)."""
        if not problem.reward.differentiable:
            raise NoiseAlignError(f"reward {problem.reward.name!r} is not differentiable, and guidance follows its "
                                  "gradient; use --method dno --dno-mode hybrid, demon or best-of-n")
        return Guidance(replace(self.config, recurrence=self.recurrence(budget)))

    def recurrence(self, budget: int | float | None) -> int:
        """N: the given one, or what the budget pays over the steps (at most MAX_RECURRENCE); a budget
        below steps x N is an error."""
        steps, bounded = self.config.steps, budget not in (None, math.inf)
        paid = min(MAX_RECURRENCE, int(budget) // steps) if bounded else 1
        N = max(paid if self.config.recurrence is None else self.config.recurrence, 1)
        if bounded and steps * N > budget:
            raise NoiseAlignError(f"a budget of {int(budget)} reward queries cannot pay {steps} guided steps x "
                                  f"{N} recurrence(s); raise --budget to at least {steps * N} "
                                  "or lower --steps or --recurrence")
        return N

    def run(self, context: RunContext) -> MethodResult:
        return self.run_batch([context])[0]

    def run_batch(self, contexts: Sequence[RunContext]) -> list[MethodResult]:
        """One guided sample per seed, all seeds as one batch; one result per context."""
        config, batch = self.config, SeedBatch(contexts)
        model, steps, N = batch.model, self.config.steps, self.recurrence(batch.queries_left)
        sigmas = model.sigmas(steps)
        streams = batch.streams()
        z_T = streams.draw()                                                       # (B, *shape)
        z, renoise = draw_step_noises(streams.draw, steps, N)                      # (n, N, B, ...), (n, N-1, B, ...)
        terms = torch.zeros_like(z)                                                # s w_i g, filled as the run goes
        for b, context in enumerate(contexts):
            context.keep(partial(self._result, context, row_noises(b, z_T, z, renoise, terms)))
        denoiser, decode = batch.denoiser, model.decode
        if config.checkpointing:
            denoiser, decode = checkpointed(denoiser), checkpointed(decode)

        def guide(i: int, k: int, x: Tensor) -> tuple[Tensor, Tensor]:
            sigma = float(sigmas[i])
            denoised, reward, g = reward_gradient(denoiser, decode, batch.score, x, sigma)
            terms[i, k] = config.scale * schedule_weight(config.schedule, sigma, float(sigmas[i + 1]), config.eta) * g
            for b, context in enumerate(contexts):
                context.observe(StepEvent(step=i, sigma=sigma, x=x[b:b + 1].detach(), denoised=denoised[b:b + 1],
                                          rewards=reward[b:b + 1],
                                          extras={"recurrence": k, "grad_norm": float(g[b].norm()),
                                                  "guidance_norm": float(terms[i, k, b].norm())}))
            return denoised, terms[i, k]

        guided_sample(guide, model.prior_std(float(sigmas[0])) * z_T, sigmas, config.eta, z, renoise)
        return [self._result(context, row_noises(b, z_T, z, renoise, terms)) for b, context in enumerate(contexts)]

    def regenerate(self, context: RunContext, noises: dict[str, Tensor]) -> MethodResult:
        """The sample of a run from its noise.pt: the same sampler with the saved guidance terms."""
        sample, output = replay(context.denoiser, context.model, self.config.steps, self.config.eta, noises)
        return MethodResult(sample=sample, output=output, noises=noises)

    def _result(self, context: RunContext, noises: dict[str, Tensor]) -> MethodResult:
        """One seed's sample replayed from its noises and the terms applied so far (the rest 0):
        the result of a finished run, the kept one of a stopped run (steps x N NFE, no query)."""
        saved = {key: value.detach().clone() for key, value in noises.items()}
        result = self.regenerate(context, saved)
        return MethodResult(sample=result.sample, output=result.output, noises=saved,
                            info={"recurrence": saved["z"].shape[1]})


def draw_step_noises(draw: Callable[[], Tensor], steps: int, recurrence: int) -> tuple[Tensor, Tensor]:
    """z (steps, N, B, *shape) and eps (steps, N - 1, B, *shape) in the order the sampler uses them:
    with N = 1 exactly the per-step noises `plain --eta` draws after z_T."""
    z, renoise = [], []
    for _ in range(steps):
        row, again = [], []
        for k in range(recurrence):
            row.append(draw())
            if k < recurrence - 1:
                again.append(draw())
        z.append(torch.stack(row))
        renoise.append(torch.stack(again) if again else row[0].new_zeros((0, *row[0].shape)))
    return torch.stack(z), torch.stack(renoise)


def row_noises(b: int, z_T: Tensor, z: Tensor, renoise: Tensor, terms: Tensor) -> dict[str, Tensor]:
    """Seed b's noises as noise.pt holds them (views: the terms fill in as the run goes)."""
    return {"z_T": z_T[b:b + 1], "z": z[:, :, b:b + 1], "renoise": renoise[:, :, b:b + 1],
            "guidance": terms[:, :, b:b + 1]}
