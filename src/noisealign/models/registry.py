"""Model names to loaders. Anything else given to --model is tried as a diffusers pipeline."""

from __future__ import annotations

from typing import Callable

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


def load_model(name: str, device: str = "cpu", dtype: str = "fp32", height: int | None = None,
               width: int | None = None, scheduler: str | None = None) -> DiffusionModel:
    """A registered model by name; any other name is a diffusers pipeline (hub id or folder).

    height, width and scheduler apply to diffusers pipelines only (see load_diffusers_model).
    """
    if name in MODELS:
        return MODELS[name](device, dtype)
    from .diffusers_loading import load_diffusers_model  # imports diffusers only once it loads one

    return load_diffusers_model(name, device, dtype, height=height, width=width, scheduler=scheduler)
