"""`digit:N`: how sure the bundled classifier is that an 8 x 8 image shows the digit N."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..errors import NoiseAlignError
from ..weights import load_bundled_weights
from .base import follow
from .digit_classifier import DigitClassifier, DigitClassifierConfig

DIGITS = tuple(str(d) for d in range(10))


def target_digit(reward: str, argument: str | None) -> int:
    """N of `reward:N`, or one line saying what is wrong."""
    if argument not in DIGITS:
        got = "no target" if not argument else f"{reward}:{argument}"
        raise NoiseAlignError(f"reward {reward} needs a target digit 0..9 such as {reward}:3, got {got}")
    return int(argument)


class DigitLogOdds:
    """r(x) = l_N(x) - logsumexp_{k != N} l_k(x): the log-odds of class N, l the classifier's logits.

    Unbounded above, zero where N is as likely as all other digits together, and
    differentiable in the image, so both Demon (queries) and DNO (gradients) can use it.
    """

    differentiable = True

    def __init__(self, target: int, classifier: DigitClassifier):
        self.target = target
        self.name = f"digit:{target}"
        self.classifier = classifier.eval().requires_grad_(False)

    @classmethod
    def from_argument(cls, argument: str | None) -> "DigitLogOdds":
        target = target_digit("digit", argument)
        checkpoint = load_bundled_weights("digit_classifier.pt")
        classifier = DigitClassifier(DigitClassifierConfig(**checkpoint["config"]))
        classifier.load_state_dict(checkpoint["state_dict"])
        return cls(target, classifier)

    def __call__(self, outputs: Tensor, prompts: Sequence[str]) -> Tensor:
        follow(self.classifier, outputs.device)
        logits = self.classifier(outputs.to(torch.float32))
        others = torch.cat([logits[:, :self.target], logits[:, self.target + 1:]], dim=1)
        return logits[:, self.target] - torch.logsumexp(others, dim=1)
