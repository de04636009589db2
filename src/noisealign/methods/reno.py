"""ReNO: reward-based noise optimization for few-step models (Eyring et al., NeurIPS 2024).

A few-step model (SD-Turbo, SDXL-Turbo, FLUX.1-schnell; the digits model at 1 to 4 steps) is
a map x = G(z_T) from its initial noise alone. ReNO (section 3, Algorithm 1) solves

    max_z  r(G(z)) - gamma * reg(z),   reg(z) = -log chi_N(||z||)

    z^0 = the seed's initial noise
    for t = 0 .. T - 1:
        g^t     = grad_z [r(G(z^t)) - gamma reg(z^t)]
        g^t     <- g^t min(1, c / ||g^t||)                      (gradient clipping)
        z^{t+1} = SGD with Nesterov momentum 0.9 (z^t, g^t, lr)
    return the z^t of the best reward seen

Key: r the reward (a weighted sum of rewards is one reward spec, e.g.
`hpsv2+0.05*pickscore+imagereward`), N the number of elements of z, chi_N the law of the
norm of N standard normals (ReNO's regularizer keeps ||z|| where Gaussian noise has it), T the
iterations (what the budget pays: one query each, plus one for z^0), c the clipping norm.

It is DNO's loop (`dno.Dno`) with the initial noise as the only variable, ReNO's optimizer and
regularizer and few steps: every regularizer can be chosen and all are reported. Defaults are
the official code's (ExplainableML/ReNO: SGD, lr 5, Nesterov momentum 0.9, clipping 0.1, one
step), but for gamma: 1, not its 0.01 (see RenoConfig). With eta > 0 the per-step noises stay
those of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from ..errors import NoiseAlignError
from ..models.base import DiffusionModel
from ..options import check, is_finite, option, shared
from .base import Problem
from .candidates import supports_consistency
from .dno import Dno, optimizer_problems
from .regularizers import NAMES

STEPS_OF_OTHER_MODELS = 4
"""Steps for a model that is no few-step distillation (the digits model: 4 Euler steps keep
two thirds of its samples' class probability; 1 or 2 steps give its mean image)."""


@dataclass(frozen=True)
class RenoConfig:
    """ReNO's options; defaults from the official code (ExplainableML/ReNO, arguments.py).

    steps, eta: the sampler (None: the model's own steps if it is a few-step model, else 4;
        eta 0: the ODE, so the initial noise is the only noise).
    lr, momentum: SGD's step size and Nesterov momentum. iterations: SGD steps (None: what the
        budget pays). grad_clip: max norm of the gradient of z_T.
    gamma, regularizer: the regularizer's weight and which one (chi-norm: ReNO's). gamma 1, not the
        official 0.01: on the gmm with an unbounded reward, 0.01 at lr 5 leaves the data within
        2 iterations, 1 keeps every iterate in it for 200, in 2-D and 64-D (docs/gradient_methods.md).
    permutations: random reorderings the concentration penalty averages over.
    checkpointing: recompute each denoiser call and the decode in the backward pass.
    """

    steps: int | None = shared("steps", None, " (None: the model's few-step default, else 4)")
    eta: float = shared("eta", 0.0)
    lr: float = option(5.0, "SGD step size")
    momentum: float = option(0.9, "SGD Nesterov momentum")
    iterations: int | None = option(None, "SGD steps (None: as many as --budget pays)")
    gamma: float = option(1.0, "weight of the regularizer (0: none; the official code's 0.01 lets the sample "
                               "leave the data, benchmarks/hacking.py)")
    regularizer: str = option("chi-norm", "the regularizer gamma weighs (every one is reported)", choices=NAMES)
    permutations: int = option(16, "random reorderings the concentration penalty averages over")
    grad_clip: float = option(0.1, "max gradient norm of the initial noise")
    checkpointing: bool = option(True, "recompute each denoiser call in the backward pass")

    def __post_init__(self) -> None:
        check(optimizer_problems(self, {})
              + [(not (is_finite(self.momentum) and 0 <= self.momentum < 1),
                  f"--momentum {self.momentum}: need a value in [0, 1)")], "reno")


class Reno(Dno):
    """DNO on the initial noise only, with ReNO's optimizer, regularizer and few steps."""

    name = "reno"

    def __init__(self, config: RenoConfig = RenoConfig()):
        self.config = config

    def resolve_mode(self, reward: Any) -> str:
        if not reward.differentiable:
            raise NoiseAlignError(f"reward {reward.name!r} is not differentiable, and ReNO follows the reward's "
                                  "gradient; use --method dno --dno-mode hybrid for non-differentiable rewards")
        return "grad"

    def sampler_steps(self, model: DiffusionModel) -> int:
        if self.config.steps is not None:
            return self.config.steps
        return model.default_steps if supports_consistency(model) else STEPS_OF_OTHER_MODELS

    def optimized_steps(self, sigmas: Tensor) -> list[int]:
        return []                                                  # z_T alone

    def make_optimizer(self, variables: list[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.SGD(variables, lr=self.config.lr, momentum=self.config.momentum,
                               nesterov=self.config.momentum > 0)

    def plan(self, problem: Problem, budget: int | None) -> "Reno":
        """Checked as DNO is, with the steps resolved for the model (result.json records them)."""
        return Dno.plan(Reno(replace(self.config, steps=self.sampler_steps(problem.model))), problem, budget)
