"""DNO: direct noise optimization (Tang et al. 2024, arXiv 2405.18881).

A stochastic sampler is a deterministic map from its noises to a sample. With DDIM-eta
(`engine.sample_ancestral`), x_T = prior_std(sigma_0) z_T and step i injects sigma_up,i z_i,
so the decoded output is x = decode(sample(z_T, z_1 ... z_n)). DNO maximizes

    r(x(z)) - gamma * reg(z)

over z with Adam, starting from the seed's own noises: iteration 0 is the seed's sample from
this DDIM-eta sampler (`plain` with DNO's steps and eta; DDPM at eta = 1), not from the model's
default sampler that a run's `baseline_reward` scores; its reward is `start_reward`. The best
iterate is kept (`RunContext.keep`) as soon as it is scored, so a run stopped early has it.
The gradient of r comes from one of three estimators (`mode`):

- grad:   back-propagation through reward, decoder and every sampler step (section 4.1).
- zo:     ZO-SGD in noise space from q perturbed samples (section 4.3), no backward at all.
- hybrid: image-space direction from q perturbed samples, back-propagated through decoder
          and sampler (section 4.3, the paper's best for non-differentiable rewards).

reg is the concentration-bound penalty of `dno_regularizer`; its gradient is always exact. At
gamma = 0 it is not computed per iteration (only at the start and for the result).

Cost accounting (the run's Ledger):
- Iterations are Adam steps. z_0 ... z_T are each scored once (T + 1 queries); zo and hybrid
  add q perturbed samples per step: a budget B pays T = (B - 1) // cost steps, cost = 1 or q + 1.
- nfe counts every forward evaluation of the denoiser, including the recomputation that
  gradient checkpointing does during the backward pass (it is real model work): a grad step
  costs 2 * steps with checkpointing, `steps` without. Backward passes are not counted.
- The kept sample is regenerated from the best noises once more at the end, or when a run
  stopped early asks for its best so far (steps NFE, no query), so `result.output` is exactly
  what `Dno.regenerate` returns from noise.pt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..engine import ancestral_sigmas, sample_ancestral
from ..engine.noise import randn, sample_generator
from ..errors import NoiseAlignError
from ..models.base import DiffusionModel
from ..options import check, is_finite, option, shared
from .base import MethodResult, Problem, RunContext, StepEvent
from .dno_regularizer import concentration_penalty
from .zo import image_gradient, zo_gradient

MODES = ("auto", "grad", "zo", "hybrid")
PERTURBATION_STREAM = 0x444E4F
"""Index of the noise stream the perturbations xi_i are drawn from ("DNO"); no sample uses it."""


@dataclass(frozen=True)
class DnoConfig:
    """DNO's options; defaults follow the paper's code where it has one.

    mode: "grad" | "zo" | "hybrid" | "auto" (grad for differentiable rewards, else hybrid).
    steps, eta: the DDIM-eta sampler whose noises are optimized (50 steps, eta = 1: DDPM).
    lr: Adam's step size (no weight decay). iterations: Adam steps (None: what the budget pays).
    gamma: weight of the probability regularization (0: none). Its gradient is zero while the
        noise looks Gaussian, so 1 costs little (digit:3, 100 steps: -1% reward) and stops the
        noise's gross drift; set it against the reward's scale.
    permutations: random reorderings the penalty averages over (besides the original order).
    grad_clip: max norm of the gradient over all optimized noise.
    q, mu: perturbations per step and their scale (zo and hybrid).
    checkpointing: recompute each denoiser call and the decode in the backward pass.
    micro_batch: perturbed samples run together (zo and hybrid).
    """

    mode: str = option("auto", "gradient estimator; auto = grad for differentiable rewards, else hybrid",
                       flag="--dno-mode", choices=MODES)
    steps: int = shared("steps", 50)
    eta: float = shared("eta", 1.0)
    lr: float = option(1e-2, "Adam step size")
    iterations: int | None = option(None, "Adam steps (None: as many as --budget pays)")
    gamma: float = option(1.0, "weight of the probability regularization (0: none)")
    permutations: int = option(16, "random reorderings the penalty averages over")
    grad_clip: float = option(1.0, "max gradient norm over all optimized noise")
    q: int = option(16, "zo / hybrid: perturbations per step")
    mu: float = option(0.01, "zo / hybrid: perturbation scale")
    checkpointing: bool = option(True, "recompute each denoiser call in the backward pass (memory flat in "
                                       "--steps; --no-checkpointing is faster and keeps every activation)")
    micro_batch: int = option(16, "zo / hybrid: perturbed samples run together")

    def __post_init__(self) -> None:
        positive = {"steps": self.steps, "lr": self.lr, "grad_clip": self.grad_clip, "q": self.q,
                    "mu": self.mu, "micro_batch": self.micro_batch}
        positive.update({} if self.iterations is None else {"iterations": self.iterations})
        non_negative = {"eta": self.eta, "gamma": self.gamma, "permutations": self.permutations}
        check([(self.mode not in MODES, f"--dno-mode {self.mode!r}: choose {', '.join(MODES)}")]
              + [(not (is_finite(v) and v > 0), f"--{k.replace('_', '-')} {v}: need a finite value above 0")
                 for k, v in positive.items()]
              + [(not (is_finite(v) and v >= 0), f"--{k.replace('_', '-')} {v}: need a finite value >= 0")
                 for k, v in non_negative.items()], "dno")


# ---- the noise-to-output map and its variables ---------------------------------------------

def injecting_steps(sigmas: Tensor, eta: float) -> list[int]:
    """Steps whose noise enters the sample (sigma_up > 0). The step into sigma = 0 injects
    none, and eta = 0 (DDIM) none at all: those noises have no gradient and are not optimized."""
    return [i for i in range(len(sigmas) - 1)
            if ancestral_sigmas(float(sigmas[i]), float(sigmas[i + 1]), eta)[1] > 0]


def stack_variables(z_T: Tensor, z: Tensor, active: list[int]) -> Tensor:
    """The optimized noises as one tensor (1 + len(active), B, *shape): z_T, then z_i, i in active."""
    return torch.cat([z_T[None], z[active]])


def unstack_variables(variables: Tensor, z: Tensor, active: list[int]) -> tuple[Tensor, list[Tensor]]:
    """(z_T, per-step noises) with the optimized ones taken from `variables`, the rest from `z`
    (broadcast over the batch of `variables`)."""
    batch = variables.shape[1]
    noises = [z[i].expand(batch, *z.shape[2:]) for i in range(len(z))]
    for k, i in enumerate(active):
        noises[i] = variables[1 + k]
    return variables[0], noises


def generate(denoiser: Callable[[Tensor, float], Tensor], model: DiffusionModel, sigmas: Tensor,
             eta: float, z_T: Tensor, noises: list[Tensor], checkpointing: bool = False) -> tuple[Tensor, Tensor]:
    """(sample, decode(sample)) of DDIM-eta from x_T = prior_std(sigma_0) z_T with per-step `noises`.

    With `checkpointing` (and gradients enabled) every denoiser call and the decode keep only
    their inputs and are recomputed in the backward pass, so memory grows by one state per
    step instead of one network's activations per step.
    """
    decode = model.decode
    if checkpointing and torch.is_grad_enabled():
        denoiser, decode = _checkpointed(denoiser), _checkpointed(decode)
    x = model.prior_std(float(sigmas[0])) * z_T
    sample = sample_ancestral(denoiser, x, sigmas, noises, eta)
    return sample, decode(sample)


def _checkpointed(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """fn recomputed in the backward pass. The RNG state is saved and restored around the
    recomputation (checkpoint's default), so a denoiser or decoder that draws random numbers is
    recomputed exactly; on CPU that costs microseconds per call (get_rng_state about 5 us)."""
    def call(*args: Any) -> Tensor:
        return checkpoint(fn, *args, use_reentrant=False)
    return call


def make_optimizer(variables: Tensor, lr: float) -> torch.optim.Adam:
    """Adam with weight decay 0: the official code's AdamW keeps its 0.01 default (a misspelt
    key), which pulls the noise toward zero, i.e. out of the Gaussian's typical set."""
    return torch.optim.Adam([variables], lr=lr, weight_decay=0.0)


def sample_from_noises(denoiser: Callable[[Tensor, float], Tensor], model: DiffusionModel,
                      config: DnoConfig, noises: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(sample, output) from saved noises {"z_T": (1, *shape), "z": (steps, 1, *shape)}, no gradient."""
    sigmas = model.sigmas(config.steps)
    z_T, z = noises.get("z_T"), noises.get("z")
    shape = tuple(model.sample_shape)
    if z_T is None or z is None or tuple(z_T.shape) != (1, *shape) or tuple(z.shape) != (config.steps, 1, *shape):
        raise NoiseAlignError(f"saved noises do not fit {config.steps} steps of a {shape} state; "
                              "regenerate with the model and config of the run that saved them")
    device = getattr(model, "device", torch.device("cpu"))
    with torch.inference_mode():
        return generate(denoiser, model, sigmas, config.eta, z_T.to(device), list(z.to(device)))


# ---- the method ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Best:
    """The best iterate so far: its reward, a copy of its optimized noises, its iteration."""

    reward: float
    variables: Tensor
    iteration: int


class Dno:
    """Optimize the noises of one sample; keep the best-reward iterate and its noises."""

    name = "dno"

    def __init__(self, config: DnoConfig = DnoConfig()):
        self.config = config

    def plan(self, problem: Problem, budget: int | None) -> "Dno":
        """Checked to run: the reward fits the mode and the budget pays at least one Adam step."""
        mode = resolve_mode(self.config.mode, problem.reward)
        plan_iterations(self.config.iterations, math.inf if budget is None else budget,
                        1 if mode == "grad" else self.config.q + 1)
        return self

    def run(self, context: RunContext) -> MethodResult:
        config, model = self.config, context.model
        mode = resolve_mode(config.mode, context.problem.reward)
        cost = 1 if mode == "grad" else config.q + 1
        iterations = plan_iterations(config.iterations, context.ledger.queries_left, cost)
        sigmas = model.sigmas(config.steps)
        streams = context.noise_streams([0])
        z_T = streams.draw()                                                   # (1, *shape)
        z = torch.stack([streams.draw() for _ in range(config.steps)])         # (steps, 1, *shape)
        active = injecting_steps(sigmas, config.eta)
        variables = stack_variables(z_T, z, active).clone().requires_grad_(True)
        optimizer = make_optimizer(variables, config.lr)
        perturbations = sample_generator(context.seed, PERTURBATION_STREAM)
        info = {"mode": mode, "iterations": iterations, "queries_per_iteration": cost,
                "optimized_noise_elements": variables.numel(), "penalty_start": float(self.penalty(variables.detach()))}

        best: Best | None = None
        for t in range(iterations + 1):
            last = t == iterations
            optimizer.zero_grad()
            with torch.set_grad_enabled(not last and mode != "zo"):
                sample, output = generate(context.denoiser, model, sigmas, config.eta,
                                          *unstack_variables(variables, z, active), config.checkpointing)
                reward = context.score(output if mode == "grad" else output.detach())  # (1,)
            value = float(reward.detach())
            if t == 0:
                info["start_reward"] = value
            if best is None or value > best.reward:
                best = Best(value, variables.detach().clone(), t)
                context.keep(partial(self._result, context, z, active, best, info))
            extras = {"best_reward": best.reward}
            reg = None
            if config.gamma > 0:                                   # at gamma 0 reg has no effect: skipped
                with torch.set_grad_enabled(not last):
                    reg = self.penalty(variables)
                extras["penalty"] = float(reg.detach())
            if not last:
                loss = self._surrogate(mode, context, sigmas, variables, z, active, reward, output, perturbations)
                (loss if reg is None else loss + config.gamma * reg).backward()
                extras["grad_norm"] = float(torch.nn.utils.clip_grad_norm_([variables], config.grad_clip))
                optimizer.step()
            context.observe(StepEvent(step=t, x=sample.detach(), rewards=reward.detach(), extras=extras))

        return self._result(context, z, active, best, {**info, "penalty_last": float(self.penalty(variables.detach()))})

    def regenerate(self, context: RunContext, noises: dict[str, Tensor]) -> MethodResult:
        """The sample of a finished run from its saved noises (noise.pt): bit-identical to the
        run's result on the same device, since it is the same sampler on the same noises."""
        sample, output = sample_from_noises(context.denoiser, context.model, self.config, noises)
        return MethodResult(sample=sample, output=output, noises=noises)

    def penalty(self, noise: Tensor) -> Tensor:
        """reg(z) over the configured orderings; differentiable in `noise`."""
        return concentration_penalty(noise, permutations=self.config.permutations)

    def _result(self, context: RunContext, z: Tensor, active: list[int], best: Best,
                info: dict[str, Any]) -> MethodResult:
        """What the run returns with `best` as its best iterate: its noises, and the sample and
        output regenerated from them as `regenerate` does (steps NFE, no reward query). The end of
        `run` returns it; until then it is the partial result kept for an early stop."""
        z_T, noises = unstack_variables(best.variables, z, active)
        saved = {"z_T": z_T.clone(), "z": torch.stack(noises).clone()}
        sample, output = sample_from_noises(context.denoiser, context.model, self.config, saved)
        return MethodResult(sample=sample, output=output, reward=best.reward, noises=saved, info={
            **info, "best_iteration": best.iteration, "penalty_final": float(self.penalty(best.variables))})

    def _surrogate(self, mode: str, context: RunContext, sigmas: Tensor, variables: Tensor, z: Tensor,
                   active: list[int], reward: Tensor, output: Tensor, generator: torch.Generator) -> Tensor:
        """A scalar whose gradient with respect to `variables` is minus the estimated grad of r."""
        if mode == "grad":
            if not reward.requires_grad:
                raise NoiseAlignError(f"reward {context.problem.reward.name!r} returned no gradient; "
                                      "use --dno-mode hybrid or zo for non-differentiable rewards")
            return -reward.sum()
        config = self.config
        xi = randn((len(variables), config.q, *variables.shape[2:]), generator,
                   device=variables.device, dtype=variables.dtype)             # (1 + k, q, *shape)
        rewards, outputs = self._score_perturbed(context, sigmas, variables.detach() + config.mu * xi, z, active)
        r0 = reward.detach()[0]
        if mode == "zo":
            g = zo_gradient(r0, rewards, xi.transpose(0, 1), config.mu)[:, None]   # (1 + k, 1, *shape)
            return -(g * variables).sum()
        g = image_gradient(r0, rewards, output.detach(), outputs)
        return -(g * output).sum()

    def _score_perturbed(self, context: RunContext, sigmas: Tensor, perturbed: Tensor, z: Tensor,
                         active: list[int]) -> tuple[Tensor, Tensor]:
        """Rewards (q,) and outputs (q, ...) of the perturbed noises, run in micro-batches."""
        rewards, outputs = [], []
        with torch.no_grad():
            for chunk in perturbed.split(self.config.micro_batch, dim=1):
                _, out = generate(context.denoiser, context.model, sigmas, self.config.eta,
                                  *unstack_variables(chunk, z, active))
                rewards.append(context.score(out))
                outputs.append(out)
        return torch.cat(rewards), torch.cat(outputs)


def resolve_mode(mode: str, reward: Any) -> str:
    """auto -> grad for differentiable rewards, hybrid otherwise; grad needs a differentiable reward."""
    if mode == "auto":
        return "grad" if reward.differentiable else "hybrid"
    if mode == "grad" and not reward.differentiable:
        raise NoiseAlignError(f"reward {reward.name!r} is not differentiable; "
                              "use --dno-mode hybrid or zo (or leave --dno-mode at auto)")
    return mode


def plan_iterations(iterations: int | None, queries_left: int | float, cost: int) -> int:
    """Adam steps to run: `iterations`, capped by what the budget pays (1 query for z_0, then
    `cost` per step). A budget that cannot pay one step is an error."""
    if queries_left == float("inf"):
        if iterations is None:
            raise NoiseAlignError("dno needs --iterations or --budget to know when to stop")
        return iterations
    affordable = int(queries_left - 1) // cost
    if affordable < 1:
        raise NoiseAlignError(f"a budget of {int(queries_left)} reward queries cannot pay one DNO step "
                              f"(1 + {cost} queries); raise --budget to at least {1 + cost}")
    return affordable if iterations is None else min(iterations, affordable)
