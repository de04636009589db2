"""A person's clicks as a reward: the candidates they chose get +1, the others -1.

Yeh, Lee, Chen, "Training-Free Diffusion Model Alignment with Sampling Demons" (ICLR 2025):
a non-differentiable reward may be a human picking, at each Demon step, the look-ahead
images they prefer; the chosen ones score +1 and the rest -1, and the demon weighs the
step's noises by those scores (Yeh et al., ICLR 2025; docs/demon.md). Feed `HumanChoice.rewards(...)` to
`DemonSession.choose`; `noisealign ui` (noisealign.ui) is that loop in a web page.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..errors import NoiseAlignError

CHOSEN, OTHER = 1.0, -1.0
"""The reward of a chosen candidate and of every other one (the paper's +1 / -1)."""


class HumanChoice:
    """The human reward. It cannot score images by itself: a person answers through `rewards`.

    It still fills the `reward` slot of a Problem (name "human", not differentiable), and a
    method that tries to query it automatically gets a clear error instead of a made-up score.
    """

    name = "human"
    differentiable = False

    @classmethod
    def from_argument(cls, argument: str | None) -> "HumanChoice":
        """The registry's factory (`--reward human`, and `regenerate` of a `noisealign ui` run)."""
        if argument:
            raise NoiseAlignError(f"reward 'human' takes no argument, got human:{argument}; write just human")
        return cls()

    @staticmethod
    def rewards(chosen: Sequence[int], K: int) -> Tensor:
        """r_k = +1 if k is among `chosen`, else -1; shape (K,), float32.

        `chosen` is a non-empty set of distinct candidate indices in [0, K). Choosing all K
        expresses no preference: the rewards tie and the demon steps with a plain noise.
        """
        indices = list(chosen)
        if not indices:
            raise NoiseAlignError("choose at least one candidate (the ones you prefer)")
        bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < K]
        if bad:
            raise NoiseAlignError(f"chosen candidate(s) {bad} are not indices 0..{K - 1}; pick among the {K} shown")
        if len(set(indices)) != len(indices):
            raise NoiseAlignError(f"chosen candidates {indices} repeat an index; list each one once")
        rewards = torch.full((K,), OTHER, dtype=torch.float32)
        rewards[indices] = CHOSEN
        return rewards

    def __call__(self, outputs: Tensor, prompts: Sequence[str]) -> Tensor:
        raise NoiseAlignError("the human reward needs a person to choose: run `noisealign ui`, or pass "
                              "HumanChoice.rewards(chosen, K) to DemonSession.choose")
