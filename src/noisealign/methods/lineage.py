"""A population's family tree, and one member's path rebuilt on its own.

Population methods (FK steering, SVDD, beam search, path-search) move P states at once and at
every step keep P of them, each the child of one parent through one noise. Recording
(parents, noises) per step is enough to rebuild any member from its z_T alone. The run hands
back that rebuild and `regenerate` repeats it, bit for bit: the model may round a batch of P
differently from a batch of 1, so the result is always the batch-1 rebuild, never the row of
the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..engine import sample_ode
from .base import MethodResult, RunContext
from .candidates import NoisyStep


class Genealogy:
    """z_T of the first generation, then per step the parent and the noise of every member."""

    def __init__(self, z_T: Tensor):
        self.z_T = z_T                      # (P, *shape)
        self.parents: list[Tensor] = []     # per step, (P,) long
        self.noises: list[Tensor] = []      # per step, (P, *shape)

    @property
    def steps(self) -> int:
        return len(self.parents)

    def record(self, parents: Tensor, noises: Tensor) -> None:
        """Member j of the new generation is member parents[j] of the last one moved with noises[j]."""
        self.parents.append(parents.detach().to("cpu", torch.long))
        self.noises.append(noises.detach())

    def lineage(self, member: int) -> dict[str, Tensor]:
        """The path of `member` of the last generation: {"z_T": (1, *shape), "z": (n, 1, *shape) the
        noise of each of its n steps, "ancestors": (n + 1,) its ancestor's index in each generation}."""
        slots = [member]
        for parents in reversed(self.parents):
            slots.append(int(parents[slots[-1]]))
        slots.reverse()
        z_T = self.z_T[slots[0]:slots[0] + 1]
        z = [self.noises[i][slots[i + 1]:slots[i + 1] + 1] for i in range(self.steps)]
        return {"z_T": z_T.clone(), "z": torch.stack(z) if z else z_T.new_zeros((0, *z_T.shape)),
                "ancestors": torch.tensor(slots)}


def replay(context: RunContext, sigmas: Tensor, step: NoisyStep, noises: dict[str, Tensor]) -> Tensor:
    """One sample from a lineage: x_T = prior_std(sigma_0) z_T, `step` with z[i] at each of the
    first n steps of the grid, then the PF-ODE (the model's solver) over the rest of it."""
    model, device = context.model, context.device
    z_T, z = noises["z_T"].to(device), noises["z"].to(device)
    x = model.prior_std(float(sigmas[0])) * z_T
    for i in range(len(z)):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x = step(x, sigma, sigma_next, context.denoiser(x, sigma), z[i])
    return sample_ode(context.denoiser, x, sigmas[len(z):], solver=model.default_solver)


def rebuild(context: RunContext, steps: int, eta: float, noises: dict[str, Tensor],
            info: dict | None = None) -> MethodResult:
    """The result a lineage of DDIM-eta steps on the model's grid of `steps` points stands for:
    its replayed sample, decoded, with the noises that rebuild it (what `regenerate` returns)."""
    with torch.inference_mode():
        sample = replay(context, context.model.sigmas(steps), NoisyStep("ancestral", eta), noises)
        return MethodResult(sample=sample, output=context.model.decode(sample), noises=noises, info=info or {})
