"""DNO: direct noise optimization (Tang et al. 2024, arXiv 2405.18881).

A stochastic sampler is a deterministic map from its noises to a sample. With DDIM-eta
(`engine.sample_ancestral`), x_T = prior_std(sigma_0) z_T and step i injects sigma_up,i z_i,
so the decoded output is x = decode(sample(z_T, z_1 ... z_n)). DNO solves

    max_z  r(x(z)) - gamma * reg(z)

    z^0 = the seed's noises                  (iteration 0 is `plain --steps S --eta E`)
    for t = 0 .. T - 1:
        g^t     = grad_z [r(x(z^t)) - gamma reg(z^t)]     (estimated by `mode`)
        g^t     <- g^t min(1, c / ||g^t||)                (gradient clipping, c = grad_clip)
        z^{t+1} = Adam(z^t, g^t, lr)                      (no weight decay)
    return the z^t of the best reward seen (kept as soon as it is scored)

Key: r the reward, reg the `--regularizer` (`regularizers`: concentration, chi-norm, moments),
gamma its weight, T the Adam steps (`iterations`, or what the budget pays). Iteration 0 is this
sampler's sample, not the model's default sampler that a run's `baseline_reward` scores; its
reward is `start_reward`. The gradient of r comes from one of three estimators (`mode`):

- grad:   back-propagation through reward, decoder and every sampler step (section 4.1).
- zo:     ZO-SGD in noise space from q perturbed samples (section 4.3), no backward at all.
- hybrid: image-space direction from q perturbed samples, back-propagated through decoder
          and sampler (section 4.3, the paper's best for non-differentiable rewards).

reg's gradient is always exact. Every regularizer of the family is reported unweighted, per
iteration (`reg_<name>` in the trace) and for the start, the kept and the last noise.

The loop is written for a batch of seeds (`run_batch`, row b = seed b, each with its own
optimizer state, clipping and best iterate); a run of one seed is a batch of one. ReNO
(`reno.Reno`) is this loop with the initial noise only, its regularizer, optimizer and steps.

Cost accounting (each seed's Ledger):
- Iterations are Adam steps. z_0 ... z_T are each scored once (T + 1 queries); zo and hybrid
  add q perturbed samples per step: a budget B pays T = (B - 1) // cost steps, cost = 1 or q + 1.
- nfe counts every forward evaluation of the denoiser, including the recomputation that
  gradient checkpointing does during the backward pass (it is real model work): a grad step
  costs steps + the checkpointed steps (2 * steps with `--checkpointing all`, steps with
  none; auto checkpoints as few as `--memory-budget` allows: dno_checkpointing). Backward
  passes are not counted.
- The kept sample is regenerated from the best noises once more at the end, or when a run
  stopped early asks for its best so far (steps NFE, no query), so `result.output` is exactly
  what `Dno.regenerate` returns from noise.pt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..engine import ancestral_sigmas, ancestral_update, run_steps
from ..engine.noise import randn, sample_generator
from ..errors import NoiseAlignError
from ..models.base import DiffusionModel
from ..options import check, is_finite, option, shared
from .base import MethodResult, Problem, RunContext, StepEvent
from .dno_checkpointing import SETTINGS, CheckpointPlan, setting_of
from .regularizers import NAMES, regularizers
from .seed_batch import SeedBatch
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
    gamma: weight of the regularizer (0: none); set it against the reward's scale.
    regularizer: which one gamma weighs (all are reported); see `regularizers`.
    permutations: random reorderings the concentration penalty averages over.
    grad_clip: max norm of the gradient over all optimized noise of a sample.
    q, mu: perturbations per step and their scale (zo and hybrid).
    checkpointing: which denoiser calls (and the decode) are recomputed in the backward pass:
        all, none, or auto (as many as memory_budget requires; see dno_checkpointing).
    memory_budget: auto's budget in GB for the kept activations (None: the device's default).
    micro_batch: perturbed samples run together (zo and hybrid).
    """

    mode: str = option("auto", "gradient estimator; auto = grad for differentiable rewards, else hybrid",
                       flag="--dno-mode", choices=MODES)
    steps: int = shared("steps", 50)
    eta: float = shared("eta", 1.0)
    lr: float = option(1e-2, "Adam step size")
    iterations: int | None = option(None, "Adam steps (None: as many as --budget pays)")
    gamma: float = option(1.0, "weight of the regularizer (0: none)")
    regularizer: str = option("concentration", "the regularizer gamma weighs (every one is reported)",
                              choices=NAMES)
    permutations: int = option(16, "random reorderings the concentration penalty averages over")
    grad_clip: float = option(1.0, "max gradient norm over all optimized noise")
    q: int = option(16, "zo / hybrid: perturbations per step")
    mu: float = option(0.01, "zo / hybrid: perturbation scale")
    checkpointing: str = option("auto", "recompute denoiser calls in the backward pass: all (memory flat in "
                                        "--steps), none (fastest, keeps every activation), auto (as few as "
                                        "--memory-budget allows)", choices=SETTINGS)
    memory_budget: float | None = option(None, "auto checkpointing's budget for kept activations, in GB (default: "
                                               "80% of free CUDA memory; on CPU half of available RAM)",
                                         metavar="GB")
    micro_batch: int = option(16, "zo / hybrid: perturbed samples run together")

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpointing", setting_of(self.checkpointing))   # older runs recorded a bool
        check([(self.mode not in MODES, f"--dno-mode {self.mode!r}: choose {', '.join(MODES)}"),
               (self.checkpointing not in SETTINGS,
                f"--checkpointing {self.checkpointing!r}: choose {', '.join(SETTINGS)}"),
               (self.memory_budget is not None and not (is_finite(self.memory_budget) and self.memory_budget > 0),
                f"--memory-budget {self.memory_budget}: need a finite number of GB above 0")]
              + optimizer_problems(self, {"q": self.q, "mu": self.mu, "micro_batch": self.micro_batch}), "dno")


def optimizer_problems(config: Any, positive: dict[str, Any]) -> list[tuple[bool, str]]:
    """The range checks DNO's and ReNO's configs share, plus `positive` options of their own."""
    positive = {"lr": config.lr, "grad_clip": config.grad_clip, **positive}
    positive.update({k: getattr(config, k) for k in ("steps", "iterations") if getattr(config, k) is not None})
    non_negative = {"eta": config.eta, "gamma": config.gamma, "permutations": config.permutations}
    return ([(config.regularizer not in NAMES, f"--regularizer {config.regularizer!r}: choose {', '.join(NAMES)}")]
            + [(not (is_finite(v) and v > 0), f"--{k.replace('_', '-')} {v}: need a finite value above 0")
               for k, v in positive.items()]
            + [(not (is_finite(v) and v >= 0), f"--{k.replace('_', '-')} {v}: need a finite value >= 0")
               for k, v in non_negative.items()])


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
    (its rows, or its one row broadcast over the batch of `variables`)."""
    batch = variables.shape[1]
    noises = [z[i].expand(batch, *z.shape[2:]) for i in range(len(z))]
    for k, i in enumerate(active):
        noises[i] = variables[1 + k]
    return variables[0], noises


def generate(denoiser: Callable[[Tensor, float], Tensor], model: DiffusionModel, sigmas: Tensor, eta: float,
             z_T: Tensor, noises: list[Tensor], checkpointing: bool | CheckpointPlan = False) -> tuple[Tensor, Tensor]:
    """(sample, decode(sample)) of DDIM-eta (`engine.sample_ancestral`) from x_T = prior_std(sigma_0) z_T
    with per-step `noises`.

    With gradients enabled, the whole sampler steps and the decode that `checkpointing` (a plan,
    or True / False: all / none) checkpoints keep only their inputs and are recomputed in the
    backward pass: memory grows by one state per such step instead of one network's activations.
    """
    plan = checkpointing if isinstance(checkpointing, CheckpointPlan) else CheckpointPlan(checkpointing)
    step, decode = plan.wrap(ancestral_update(denoiser, eta), model.decode, len(sigmas) - 1)
    x = run_steps(step, model.prior_std(float(sigmas[0])) * z_T, sigmas, noises)
    return x, decode(x)


def make_optimizer(variables: Tensor | list[Tensor], lr: float) -> torch.optim.Adam:
    """Adam with weight decay 0: the official code's AdamW keeps its 0.01 default (a misspelt
    key), which pulls the noise toward zero, i.e. out of the Gaussian's typical set."""
    return torch.optim.Adam(variables if isinstance(variables, list) else [variables], lr=lr, weight_decay=0.0)


def sample_from_noises(denoiser: Callable[[Tensor, float], Tensor], model: DiffusionModel, steps: int,
                       eta: float, noises: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(sample, output) from saved noises {"z_T": (1, *shape), "z": (steps, 1, *shape)}, no gradient."""
    z_T, z = noises.get("z_T"), noises.get("z")
    shape = tuple(model.sample_shape)
    if z_T is None or z is None or tuple(z_T.shape) != (1, *shape) or tuple(z.shape) != (steps, 1, *shape):
        raise NoiseAlignError(f"saved noises do not fit {steps} steps of a {shape} state; "
                              "regenerate with the model and config of the run that saved them")
    device = getattr(model, "device", torch.device("cpu"))
    with torch.inference_mode():
        return generate(denoiser, model, model.sigmas(steps), eta, z_T.to(device), list(z.to(device)))


def regularizer_report(noise: Tensor, permutations: int, known: dict[str, Tensor] | None = None) -> dict[str, float]:
    """Every regularizer's value on one sample's noises (n, *shape), unweighted, under the trace
    names reg_<name>; `known` values are taken as they are. NaN (null in result.json) where
    undefined (concentration below 4 elements)."""
    known = known or {}
    with torch.no_grad():
        return {report_key(name): float(known[name]) if name in known else
                float(fn(noise)) if name != "concentration" or noise.numel() >= 4 else math.nan
                for name, fn in regularizers(permutations).items()}


def report_key(name: str) -> str:
    return "reg_" + name.replace("-", "_")


# ---- the method ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Best:
    """The best iterate so far: its reward, a copy of its optimized noises, its iteration."""

    reward: float
    variables: Tensor
    iteration: int


class Dno:
    """Optimize the noises of one sample per seed; keep each seed's best-reward iterate and its noises."""

    name = "dno"

    def __init__(self, config: DnoConfig = DnoConfig()):
        self.config = config

    # -- what DNO and ReNO choose differently --------------------------------------------

    def resolve_mode(self, reward: Any) -> str:
        return resolve_mode(self.config.mode, reward)

    def sampler_steps(self, model: DiffusionModel) -> int:
        return self.config.steps

    def optimized_steps(self, sigmas: Tensor) -> list[int]:
        """The steps whose noise is optimized besides z_T: every one that injects noise."""
        return injecting_steps(sigmas, self.config.eta)

    def make_optimizer(self, variables: list[Tensor]) -> torch.optim.Optimizer:
        return make_optimizer(variables, self.config.lr)

    # -- the run ---------------------------------------------------------------------------

    def plan(self, problem: Problem, budget: int | None) -> "Dno":
        """Checked to run: the reward fits the mode, the budget pays at least one step, and the
        regularizer is defined on the optimized noise."""
        mode = self.resolve_mode(problem.reward)
        plan_iterations(self.config.iterations, math.inf if budget is None else budget, self.cost(mode), self.name)
        if self.config.regularizer == "concentration":
            sigmas = problem.model.sigmas(self.sampler_steps(problem.model))
            elements = (1 + len(self.optimized_steps(sigmas))) * math.prod(problem.model.sample_shape)
            if elements < 4:
                raise NoiseAlignError(f"the concentration regularizer needs at least 4 optimized noise elements, "
                                      f"got {elements}; use --regularizer chi-norm or moments")
        return self

    def cost(self, mode: str) -> int:
        """Reward queries per Adam step."""
        return 1 if mode == "grad" else self.config.q + 1

    def run(self, context: RunContext) -> MethodResult:
        return self.run_batch([context])[0]

    def run_batch(self, contexts: Sequence[RunContext]) -> list[MethodResult]:
        """Optimize each seed's noises, all seeds as one batch; one result per context."""
        config, batch = self.config, SeedBatch(contexts)
        model, B = batch.model, len(batch)
        mode = self.resolve_mode(batch.problem.reward)
        iterations = plan_iterations(config.iterations, batch.queries_left, self.cost(mode), self.name)
        steps = self.sampler_steps(model)
        sigmas = model.sigmas(steps)
        streams = batch.streams()
        z_T = streams.draw()                                                   # (B, *shape)
        z = torch.stack([streams.draw() for _ in range(steps)])                # (steps, B, *shape)
        active = self.optimized_steps(sigmas)
        variables = [stack_variables(z_T[b:b + 1], z[:, b:b + 1], active).clone().requires_grad_(True)
                     for b in range(B)]                                        # each (1 + k, 1, *shape)
        optimizer = self.make_optimizer(variables)
        regularize = regularizers(config.permutations)[config.regularizer]
        perturbations = [sample_generator(c.seed, PERTURBATION_STREAM) for c in contexts]
        infos = [{"mode": mode, "iterations": iterations, "queries_per_iteration": self.cost(mode),
                  "optimized_noise_elements": v.numel(), "regularizer": config.regularizer,
                  **suffixed(regularizer_report(v.detach()[:, 0], config.permutations), "_start")}
                 for v in variables]
        bests: list[Best | None] = [None] * B
        plan = CheckpointPlan(config.checkpointing, getattr(config, "memory_budget", None))   # ReNO's has no budget

        for t in range(iterations + 1):
            last = t == iterations
            optimizer.zero_grad()
            with torch.set_grad_enabled(not last and mode != "zo"):
                sample, output = generate(batch.denoiser, model, sigmas, config.eta,
                                          *unstack_variables(torch.cat(variables, dim=1), z, active),
                                          plan)
                reward = batch.score(output if mode == "grad" else output.detach())   # (B,)
            if t == 0:
                for info in infos:
                    info.update(plan.report(B))
            penalties = [regularize(v[:, 0]) for v in variables] if config.gamma > 0 and not last else None
            extras = []
            for b, context in enumerate(contexts):
                value = float(reward[b].detach())
                if t == 0:
                    infos[b]["start_reward"] = value
                if bests[b] is None or value > bests[b].reward:
                    bests[b] = Best(value, variables[b].detach().clone(), t)
                    context.keep(partial(self._result, context, z[:, b:b + 1], active, bests[b], infos[b]))
                known = {} if penalties is None else {config.regularizer: penalties[b]}
                extras.append({"best_reward": bests[b].reward,
                               **regularizer_report(variables[b].detach()[:, 0], config.permutations, known)})
            if not last:
                loss = self._surrogate(mode, batch, sigmas, variables, z, active, reward, output, perturbations)
                if penalties is not None:
                    loss = loss + config.gamma * sum(penalties)
                loss.backward()
                for b, v in enumerate(variables):
                    extras[b]["grad_norm"] = float(torch.nn.utils.clip_grad_norm_([v], config.grad_clip))
                optimizer.step()
            for b, context in enumerate(contexts):
                context.observe(StepEvent(step=t, x=sample[b:b + 1].detach(), rewards=reward[b:b + 1].detach(),
                                          extras=extras[b]))

        return [self._result(context, z[:, b:b + 1], active, bests[b], {
                    **infos[b], **suffixed(regularizer_report(variables[b].detach()[:, 0], config.permutations),
                                           "_last")})
                for b, context in enumerate(contexts)]

    def regenerate(self, context: RunContext, noises: dict[str, Tensor]) -> MethodResult:
        """The sample of a finished run from its saved noises (noise.pt): bit-identical to the
        run's result on the same device, since it is the same sampler on the same noises."""
        sample, output = sample_from_noises(context.denoiser, context.model, self.sampler_steps(context.model),
                                            self.config.eta, noises)
        return MethodResult(sample=sample, output=output, noises=noises)

    def _result(self, context: RunContext, z: Tensor, active: list[int], best: Best,
                info: dict[str, Any]) -> MethodResult:
        """What the run returns for one seed with `best` as its best iterate: its noises, and the
        sample and output regenerated from them as `regenerate` does (steps NFE, no reward query).
        The end of the run returns it; until then it is the partial result kept for an early stop."""
        z_T, noises = unstack_variables(best.variables, z, active)
        saved = {"z_T": z_T.clone(), "z": torch.stack(noises).clone()}
        regenerated = self.regenerate(context, saved)
        return MethodResult(sample=regenerated.sample, output=regenerated.output, reward=best.reward, noises=saved,
                            info={**info, "best_iteration": best.iteration,
                                  **suffixed(regularizer_report(best.variables[:, 0], self.config.permutations),
                                             "_final")})

    def _surrogate(self, mode: str, batch: SeedBatch, sigmas: Tensor, variables: list[Tensor], z: Tensor,
                   active: list[int], reward: Tensor, output: Tensor, generators: list[torch.Generator]) -> Tensor:
        """A scalar whose gradient with respect to each seed's variables is minus its estimated grad of r."""
        if mode == "grad":
            if not reward.requires_grad:
                raise NoiseAlignError(f"reward {batch.problem.reward.name!r} returned no gradient; "
                                      "use --dno-mode hybrid or zo for non-differentiable rewards")
            return -reward.sum()
        config, total = self.config, output.new_zeros(())
        for b, (context, v) in enumerate(zip(batch.contexts, variables)):
            xi = randn((len(v), config.q, *v.shape[2:]), generators[b], device=v.device, dtype=v.dtype)  # (1 + k, q, *shape)
            rewards, outputs = self._score_perturbed(context, sigmas, v.detach() + config.mu * xi, z[:, b:b + 1], active)
            r0 = reward.detach()[b]
            if mode == "zo":
                g = zo_gradient(r0, rewards, xi.transpose(0, 1), config.mu)[:, None]   # (1 + k, 1, *shape)
                total = total - (g * v).sum()
            else:
                g = image_gradient(r0, rewards, output[b:b + 1].detach(), outputs)
                total = total - (g * output[b:b + 1]).sum()
        return total

    def _score_perturbed(self, context: RunContext, sigmas: Tensor, perturbed: Tensor, z: Tensor,
                         active: list[int]) -> tuple[Tensor, Tensor]:
        """Rewards (q,) and outputs (q, ...) of one seed's perturbed noises, run in micro-batches."""
        rewards, outputs = [], []
        with torch.no_grad():
            for chunk in perturbed.split(self.config.micro_batch, dim=1):
                _, out = generate(context.denoiser, context.model, sigmas, self.config.eta,
                                  *unstack_variables(chunk, z, active))
                rewards.append(context.score(out))
                outputs.append(out)
        return torch.cat(rewards), torch.cat(outputs)


def suffixed(values: dict[str, float], suffix: str) -> dict[str, float]:
    return {key + suffix: value for key, value in values.items()}


def resolve_mode(mode: str, reward: Any) -> str:
    """auto -> grad for differentiable rewards, hybrid otherwise; grad needs a differentiable reward."""
    if mode == "auto":
        return "grad" if reward.differentiable else "hybrid"
    if mode == "grad" and not reward.differentiable:
        raise NoiseAlignError(f"reward {reward.name!r} is not differentiable; "
                              "use --dno-mode hybrid or zo (or leave --dno-mode at auto)")
    return mode


def plan_iterations(iterations: int | None, queries_left: int | float, cost: int, method: str = "dno") -> int:
    """Optimizer steps to run: `iterations`, capped by what the budget pays (1 query for z_0, then
    `cost` per step). A budget that cannot pay one step is an error."""
    if queries_left == float("inf"):
        if iterations is None:
            raise NoiseAlignError(f"{method} needs --iterations or --budget to know when to stop")
        return iterations
    affordable = int(queries_left - 1) // cost
    if affordable < 1:
        raise NoiseAlignError(f"a budget of {int(queries_left)} reward queries cannot pay one {method} step "
                              f"(1 + {cost} queries); raise --budget to at least {1 + cost}")
    return affordable if iterations is None else min(iterations, affordable)
