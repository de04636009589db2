"""Model names to loaders, and the loading options each takes. Anything else given to --model
is tried as a diffusers pipeline (hub id or folder).

A loading option a model does not take (--dtype on digits, --device on gmm) is an error, not
silently ignored; `check_device` refuses a device this machine does not have before any
loading. `kernels` is taken by every model: it sets the process's CPU kernels
(noisealign.batch_invariant) for the model and the rewards alike.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import NoiseAlignError
from .base import DiffusionModel

LOADING_OPTIONS = ("device", "dtype", "height", "width", "scheduler", "few_step", "memory_format", "compile",
                   "kernels")
"""Every model loading option; None means not given (the model's default)."""
KERNELS = ("default", "batch-invariant")
"""`kernels`: torch's own CPU kernels, or batch-invariant ones (a row's bits whatever its batch)."""
EVERY_MODEL_TAKES = ("kernels",)


def _digits(device: str = "cpu") -> DiffusionModel:
    from .digits import DigitsModel

    return DigitsModel.load(device=device)


def _gmm() -> DiffusionModel:
    from .gmm import GaussianMixture

    return GaussianMixture.default()


def _diffusers(name: str, **options: Any) -> DiffusionModel:
    from .diffusers_loading import load_diffusers_model  # imports diffusers only once it loads one

    return load_diffusers_model(name, **options)


MODELS: dict[str, tuple[Callable[..., DiffusionModel], tuple[str, ...]]] = {
    "digits": (_digits, ("device",)),
    "gmm": (_gmm, ()),
}
"""name -> (loader, the loading options it takes). Diffusers pipelines take all of them."""

GUIDED = {"digits": True, "gmm": False}
"""Whether a registered model takes a prompt's guidance (--guidance, --negative-prompt)."""


def options_taken(name: str) -> tuple[str, ...]:
    return MODELS[name][1] + EVERY_MODEL_TAKES if name in MODELS else LOADING_OPTIONS


def check_model_options(name: str, **options: Any) -> dict[str, Any]:
    """The given (non-None) loading options, refused if `name` does not take one or if the
    device is not on this machine. Returns them, as the run records them."""
    given = {key: value for key, value in options.items() if value is not None}
    for key in given:
        if key not in options_taken(name):
            takes = ", ".join(f"--{o.replace('_', '-')}" for o in options_taken(name)) or "no loading option"
            raise NoiseAlignError(f"--{key.replace('_', '-')} does not apply to the {name} model (it takes {takes}); drop it")
    if "device" in given:
        check_device(given["device"])
    kernels = given.get("kernels", "default")
    if kernels not in KERNELS:
        raise NoiseAlignError(f"--kernels {kernels!r} is not one of {', '.join(KERNELS)}")
    if kernels == "batch-invariant" and torch.device(given.get("device", "cpu")).type != "cpu":
        raise NoiseAlignError(f"--kernels batch-invariant runs on the CPU only, not on --device {given['device']} "
                              "(cuBLAS and cuDNN choose kernels by batch size and torch cannot stop them); "
                              "drop one of the two")
    return given


def check_device(device: str) -> None:
    """Refuse a malformed device or one this machine does not have (cuda without CUDA, ...)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise NoiseAlignError(f"--device {device!r} is not a torch device; use cpu, cuda, cuda:1, mps") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (parsed.index or 0) >= count:
            raise NoiseAlignError(f"--device {device}: this machine has {count} CUDA device(s) available to "
                                  "torch; use --device cpu, or install a CUDA build of torch")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise NoiseAlignError(f"--device {device}: MPS is not available here; use --device cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise NoiseAlignError(f"--device {device}: noisealign runs on cpu, cuda or mps")


def check_model(name: str) -> None:
    """Refuse a model that is neither registered nor a readable diffusers pipeline; reads only
    its JSON configs, so a run fails on a bad --model before any weights load."""
    if name not in MODELS:
        from .diffusers_loading import inspect_pipeline

        inspect_pipeline(name)


def load_model(name: str, **options: Any) -> DiffusionModel:
    """A registered model by name; any other name is a diffusers pipeline (hub id or folder).

    options: device, dtype, height, width, scheduler, few_step, memory_format, compile, kernels
    (None: the model's default); those the model does not take are refused (`check_model_options`).
    kernels "batch-invariant" switches this process to batch-invariant CPU kernels
    (noisealign.batch_invariant), which then stay on.
    """
    given = check_model_options(name, **options)
    if given.pop("kernels", "default") == "batch-invariant":
        from .. import batch_invariant

        batch_invariant.enable()
    if name in MODELS:
        return MODELS[name][0](**given)
    return _diffusers(name, **given)
