"""Reward names to factories, and the spec grammar of `--reward`.

    spec  := term (('+' | '-') term)*
    term  := [number '*'] name [':' argument]

An argument is letters, digits and `_ . , / =`, or any text in single or double quotes
(a path with dashes: `aesthetic:'/models/models--org--head/head.pth'`).

`digit:3+0.5*brightness`, `aesthetic-0.1*jpeg`. Each factory takes the argument string
(or None) and returns a Reward.
"""

from __future__ import annotations

import re
from typing import Callable

from ..errors import NoiseAlignError
from .base import Reward, WeightedSum
from .aesthetic import Aesthetic
from .clipscore import clipscore
from .dino import DinoSimilarity
from .hpsv2 import hpsv2
from .human import HumanChoice
from .imagereward import ImageReward
from .pickscore import pickscore
from .python_reward import python_reward
from .simple import Brightness, Coordinate, JpegCompressibility
from .vlm import vlm_reward

RewardFactory = Callable[[str | None], Reward]


def _digit(argument: str | None) -> Reward:
    from .digit import DigitLogOdds  # loads the bundled classifier weights only when asked

    return DigitLogOdds.from_argument(argument)


def _digit_judge(argument: str | None) -> Reward:
    from .digit_judge import DigitJudge  # loads the bundled examples only when asked

    return DigitJudge.from_argument(argument)


REWARDS: dict[str, RewardFactory] = {
    "digit": _digit,
    "digit_judge": _digit_judge,
    "jpeg": JpegCompressibility.from_argument,
    "brightness": Brightness.from_argument,
    "coordinate": Coordinate.from_argument,
    "vlm": vlm_reward,
    "aesthetic": Aesthetic.from_argument,
    "pickscore": pickscore,
    "hpsv2": hpsv2,
    "imagereward": ImageReward.from_argument,
    "clipscore": clipscore,
    "dino": DinoSimilarity.from_argument,
    "human": HumanChoice.from_argument,
    "python": python_reward,
}

_TERM = re.compile(r"\s*(?P<sign>[+-])?\s*(?:(?P<weight>\d*\.?\d+(?:[eE][-+]?\d+)?)\s*\*\s*)?"
                   r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<arg>'[^']*'|\"[^\"]*\"|[A-Za-z0-9_.,/=]*))?\s*")


def parse_reward(spec: str, registry: dict[str, RewardFactory] | None = None) -> Reward:
    """Build a reward (or a weighted sum of rewards) from a spec string.

    `registry` replaces REWARDS, e.g. to bind command-line options to a factory.
    """
    registry = REWARDS if registry is None else registry
    if not spec or not spec.strip():
        raise NoiseAlignError("empty --reward; give a reward name such as digit:3 or jpeg")
    terms: list[tuple[float, Reward]] = []
    position = 0
    while position < len(spec):
        match = _TERM.match(spec, position)
        if match is None or match.end() == position or (terms and match["sign"] is None):
            raise NoiseAlignError(f"malformed reward spec {spec!r} at {spec[position:]!r}; "
                                  "write terms as [weight*]name[:argument] joined by + or -")
        name = match["name"]
        if name not in registry:
            raise NoiseAlignError(f"unknown reward {name!r}; choose from {', '.join(sorted(registry))}")
        weight = float(match["weight"] or 1.0) * (-1.0 if match["sign"] == "-" else 1.0)
        argument = match["arg"]
        if argument and argument[0] in "'\"":
            argument = argument[1:-1]
        terms.append((weight, registry[name](argument)))
        position = match.end()
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    return WeightedSum(terms, spec.strip())


def reward_terms(reward: Reward) -> list[Reward]:
    """The reward itself and, for a weighted sum, each of its terms."""
    return [reward, *[term for _, term in getattr(reward, "terms", [])]]
