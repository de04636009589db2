"""`digit_judge:N`: an independent judge of whether an 8 x 8 image shows the digit N.

The share of the image's k nearest neighbours (Euclidean, in pixel space) among the diffusion
half of scikit-learn's digits that show N: a value in [0, 1] whose mean over outputs is the
judge's agreement. It shares nothing with `digit:N`: no learned weights (so no gradient or
adversarial pattern of the classifier carries over) and other data (the classifier learned the
other half). It is not differentiable, and meant as a held-out evaluation reward
(`--evaluate digit_judge:3` in a sweep), not as a target.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..weights import load_bundled_weights
from .digit import target_digit

PIXEL_MAX = 16
"""scikit-learn's digits hold integers 0..16; outputs are in [0, 1]."""


class DigitJudge:
    """r(x) = |{x_i among the k nearest examples to x : y_i = N}| / k."""

    differentiable = False

    def __init__(self, target: int, examples: Tensor, labels: Tensor, k: int):
        self.target, self.k = target, k
        self.name = f"digit_judge:{target}"
        self.examples = examples.flatten(1).to(torch.float32) / PIXEL_MAX
        self.labels = labels

    @classmethod
    def from_argument(cls, argument: str | None) -> "DigitJudge":
        target = target_digit("digit_judge", argument)
        checkpoint = load_bundled_weights("digit_judge.pt")
        examples, labels = checkpoint["state_dict"]["examples"], checkpoint["state_dict"]["labels"]
        return cls(target, examples, labels, checkpoint["config"]["k"])

    def __call__(self, outputs: Tensor, prompts: Sequence[str]) -> Tensor:
        pixels = outputs.detach().to("cpu", torch.float32).flatten(1)
        nearest = torch.cdist(pixels, self.examples).topk(self.k, dim=1, largest=False).indices
        votes = (self.labels[nearest] == self.target).to(torch.float32).mean(dim=1)
        return votes.to(outputs.device)
