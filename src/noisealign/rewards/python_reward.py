"""`python:module.attribute`: a reward written in the user's own code, from the command line.

The attribute is a Reward (a callable reward(outputs, prompts) -> Tensor[B] with `name`
and `differentiable`) or a function without arguments that returns one. The module is
imported from sys.path (PYTHONPATH, the working directory of `python -m`).
"""

from __future__ import annotations

import importlib

from ..errors import NoiseAlignError
from .base import Reward


def python_reward(argument: str | None) -> Reward:
    module_name, _, attribute = (argument or "").rpartition(".")
    if not module_name or not attribute:
        raise NoiseAlignError(f"python reward needs module.attribute, got {argument!r}; "
                              "write e.g. python:my_rewards.sharpness")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except ImportError as error:
        raise NoiseAlignError(f"python reward: cannot import {module_name!r} ({error}); "
                              "put its folder on PYTHONPATH") from None
    except AttributeError:
        raise NoiseAlignError(f"python reward: module {module_name!r} has no {attribute!r}") from None
    reward = found if hasattr(found, "differentiable") else found()
    if not (callable(reward) and hasattr(reward, "name") and hasattr(reward, "differentiable")):
        raise NoiseAlignError(f"python reward {argument!r} is not a reward: give a callable with `name` and "
                              "`differentiable` attributes, or a function returning one")
    return reward
