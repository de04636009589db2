"""The reward contract: reward(outputs, prompts) -> one float32 per sample, higher is better.

`outputs` is what the model's decoder returns (images in [0, 1], B x C x H x W, for image
models). A reward declares whether gradients flow through it; methods that need a gradient
(DNO's grad mode) check that flag, the others never take one.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn


@runtime_checkable
class Reward(Protocol):
    name: str
    differentiable: bool

    def __call__(self, outputs: Tensor, prompts: Sequence[str]) -> Tensor:
        """Scores of shape (B,), float32."""


class WeightedSum:
    """sum_i w_i r_i(outputs, prompts): e.g. `digit:3+0.5*brightness`."""

    def __init__(self, terms: Sequence[tuple[float, Reward]], name: str):
        self.terms = list(terms)
        self.name = name
        self.differentiable = all(r.differentiable for _, r in self.terms)

    def __call__(self, outputs: Tensor, prompts: Sequence[str]) -> Tensor:
        total = torch.zeros(len(outputs), dtype=torch.float32, device=outputs.device)
        for weight, reward in self.terms:
            total = total + weight * reward(outputs, prompts).to(total)
        return total


class _NoReward:
    """The reward of a run that scores nothing (`regenerate`): calling it is an error."""

    name = "none"
    differentiable = False

    def __call__(self, outputs: Tensor, prompts: Sequence[str]) -> Tensor:
        from ..errors import NoiseAlignError

        raise NoiseAlignError("this run builds no reward (regenerate only rebuilds samples from their noise)")


NO_REWARD = _NoReward()


def follow(module: nn.Module, device: torch.device) -> None:
    """Move a reward's network to the outputs' device, outside inference mode.

    A move made under inference mode (Demon, Best-of-N, the run's reporting) would turn the
    weights into inference tensors that a later differentiable call (DNO) cannot use.
    """
    if next(module.parameters()).device != device:
        with torch.inference_mode(False):
            module.to(device)
