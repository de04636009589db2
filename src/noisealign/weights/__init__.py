"""Bundled weights (package data): the digits diffusion model and the digit classifier.

Each file is a checkpoint {"config": dict, "state_dict": tensors} written by
scripts/train_digits.py; loading it needs no pickled code.
"""

from __future__ import annotations

from importlib import resources

import torch

from ..errors import NoiseAlignError


def load_bundled_weights(filename: str) -> dict:
    """The checkpoint `filename` of this folder, on the CPU; works offline and from a wheel."""
    path = resources.files(__name__) / filename
    if not path.is_file():
        raise NoiseAlignError(f"bundled weights {filename} are missing from {path}; "
                              "retrain them with `make train` (scripts/train_digits.py)")
    with path.open("rb") as handle:
        return torch.load(handle, map_location="cpu", weights_only=True)
