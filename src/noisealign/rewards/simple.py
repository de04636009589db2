"""Rewards that need no model: JPEG compressibility (DDPO) and brightness."""

from __future__ import annotations

import io
from typing import Sequence

import torch
from torch import Tensor

from ..errors import NoiseAlignError
from ..imaging import to_pil


def _no_argument(name: str, argument: str | None) -> None:
    if argument:
        raise NoiseAlignError(f"reward {name!r} takes no argument, got {name}:{argument}; write just {name}")


class JpegCompressibility:
    """Minus the JPEG size in kB at quality 95 (DDPO's compressibility reward). Not differentiable."""

    name = "jpeg"
    differentiable = False

    def __init__(self, quality: int = 95):
        self.quality = quality

    @classmethod
    def from_argument(cls, argument: str | None) -> "JpegCompressibility":
        _no_argument("jpeg", argument)
        return cls()

    def __call__(self, outputs: Tensor, prompts: Sequence[str]) -> Tensor:
        sizes = [self._size_kb(image) for image in outputs.detach().float().cpu()]
        return -torch.tensor(sizes, dtype=torch.float32, device=outputs.device)

    def _size_kb(self, image: Tensor) -> float:
        buffer = io.BytesIO()
        to_pil(image).save(buffer, format="JPEG", quality=self.quality)
        return buffer.tell() / 1000.0


class Brightness:
    """Mean pixel value in [0, 1]. Differentiable; a simple smooth target for tests and demos."""

    name = "brightness"
    differentiable = True

    @classmethod
    def from_argument(cls, argument: str | None) -> "Brightness":
        _no_argument("brightness", argument)
        return cls()

    def __call__(self, outputs: Tensor, prompts: Sequence[str]) -> Tensor:
        return outputs.float().flatten(1).mean(dim=1)


class Coordinate:
    """x[i] of the flattened output: a smooth, unbounded reward for the gmm model.

    Unbounded on purpose: pushing it far enough leaves any distribution's support, which is
    what the reward-hacking diagnostics must expose.
    """

    differentiable = True

    def __init__(self, index: int):
        self.index = index
        self.name = f"coordinate:{index}"

    @classmethod
    def from_argument(cls, argument: str | None) -> "Coordinate":
        if not argument or not argument.isdigit():
            raise NoiseAlignError(f"reward coordinate needs an index such as coordinate:0, got {argument!r}")
        return cls(int(argument))

    def __call__(self, outputs: Tensor, prompts: Sequence[str]) -> Tensor:
        flat = outputs.float().flatten(1)
        if self.index >= flat.shape[1]:
            raise NoiseAlignError(f"coordinate:{self.index} is out of range for outputs of "
                                  f"{flat.shape[1]} numbers; pick an index below {flat.shape[1]}")
        return flat[:, self.index]


class Linear:
    """r(x) = x . v over the flattened output: unbounded, so only the model's support keeps it in
    check (the reward-hacking probe). `differentiable=False` makes it stand for a black box."""

    name = "linear"

    def __init__(self, v: Tensor, differentiable: bool = True):
        self.v, self.differentiable = v, differentiable

    def __call__(self, outputs: Tensor, prompts: Sequence[str]) -> Tensor:
        values = (outputs.float() * self.v).flatten(1).sum(1)
        return values if self.differentiable else values.detach()
