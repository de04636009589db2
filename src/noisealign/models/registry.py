"""Model names to loaders. Anything else given to --model is tried as a diffusers pipeline."""

from __future__ import annotations

from typing import Callable

from ..errors import NoiseAlignError
from .base import DiffusionModel


def _digits(device: str, dtype: str) -> DiffusionModel:
    from .digits import DigitsModel

    return DigitsModel.load(device=device)


def _gmm(device: str, dtype: str) -> DiffusionModel:
    from .gmm import GaussianMixture

    return GaussianMixture.default()


MODELS: dict[str, Callable[[str, str], DiffusionModel]] = {
    "digits": _digits,
    "gmm": _gmm,
}


def load_model(name: str, device: str = "cpu", dtype: str = "fp32") -> DiffusionModel:
    """A registered model by name; other names are reserved for diffusers pipelines (hub id or folder)."""
    if name in MODELS:
        return MODELS[name](device, dtype)
    raise NoiseAlignError(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))} "
                          "(Stable Diffusion hub ids and local folders need the sd extra)")
