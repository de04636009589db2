"""Similarity to a reference image: the cosine of DINOv2 features (the Demon paper's measure for its
human-in-the-loop task, steering toward a reference by clicking).

    r(x) = cos(f(x), f(ref)),   f = Dinov2Model's pooled [CLS] feature (the final LayerNorm's [CLS] token)

f is transformers' Dinov2Model, facebook/dinov2-base by default, after the eval transform of its
image processor done in torch (shorter side to 256 px, bicubic and antialiased; center crop 224;
ImageNet mean and std), so r is differentiable in x. r lies in [-1, 1]; prompts are ignored.

Spec: `dino:REF` or `dino:'REF,model=M'`: REF an image file (read with PIL: PNG, JPEG, ...), M a
hub id or a local folder holding what Dinov2Model.save_pretrained writes. Quote an argument with
characters other than letters, digits and `_ . , / =` (dashes, spaces).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

from ..errors import NoiseAlignError
from .clip_common import follow, frozen, model_pixels, rgb_images
from .hub import check_cached_when_offline, first_line, pretrained

DEFAULT_MODEL = "facebook/dinov2-base"
RESIZE, CROP = 256, 224  # facebook/dinov2-*'s preprocessor_config.json: shortest_edge 256, crop_size 224
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MODEL_OPTION = ",model="
LOCAL_SPEC = "dino:'REF,model=/path'"


def read_image(path: str | Path) -> Tensor:
    """An image file as a float32 (3, H, W) tensor in [0, 1]; one NoiseAlignError line when it is none."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise NoiseAlignError(f"reward 'dino': reference image {str(path)!r} is no file or folder; "
                              "give an existing image as dino:/path/to/reference.png")
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    except (UnidentifiedImageError, OSError) as error:
        raise NoiseAlignError(f"reward 'dino': {path} is not an image PIL can read ({first_line(error)}); "
                              "give a PNG or JPEG file") from None
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


_MODELS: dict[str, nn.Module] = {}


def load_dino(source: str | Path = DEFAULT_MODEL) -> nn.Module:
    """A frozen float32 Dinov2Model from a hub id (cache first, see hub.py) or a local folder; once per process."""
    key = str(source)
    if key not in _MODELS:
        check_cached_when_offline("dino", source, LOCAL_SPEC)   # before transformers' slow import
        from transformers import Dinov2Model

        _MODELS[key] = frozen(pretrained("dino", Dinov2Model, source, LOCAL_SPEC))
    return _MODELS[key]


class DinoSimilarity:
    """cos(f(x), f(reference)) for images x in [0, 1]; differentiable, prompt-free."""

    name = "dino"
    differentiable = True

    def __init__(self, model: nn.Module, reference: Tensor):
        self.model, self.reference = model, reference
        self._targets: dict[torch.device, Tensor] = {}

    @classmethod
    def from_argument(cls, argument: str | None) -> "DinoSimilarity":
        reference, model = parse_argument(argument)
        image = read_image(reference)          # a bad reference fails before any model loads
        return cls(load_dino(model), image)

    def features(self, images: Tensor) -> Tensor:
        """f(x) / |f(x)| for RGB images in [0, 1]; differentiable in `images`."""
        follow(self.model, images.device)
        pixels = model_pixels(images, RESIZE, IMAGENET_MEAN, IMAGENET_STD, crop=CROP)
        return F.normalize(self.model(pixel_values=pixels).pooler_output, dim=-1)

    def __call__(self, outputs: Tensor, prompts: Sequence[str]) -> Tensor:
        images = rgb_images(outputs)
        return (self.features(images) * self._target(images.device)).sum(dim=-1)

    def _target(self, device: torch.device) -> Tensor:
        """f(reference) / |f(reference)|, once per device; a plain tensor even when first asked under
        inference mode, so that a later differentiable call can use it."""
        if device not in self._targets:
            with torch.inference_mode(False), torch.no_grad():
                self._targets[device] = self.features(self.reference[None].to(device))[0]
        return self._targets[device]


def parse_argument(argument: str | None) -> tuple[str, str]:
    """(reference image path, model source) of `REF` or `REF,model=M`."""
    if not argument:
        raise NoiseAlignError("reward 'dino' needs a reference image: dino:/path/to/reference.png "
                              "(quoted when the path holds dashes or spaces: dino:'/my-refs/cat.png')")
    reference, option, model = argument.rpartition(MODEL_OPTION)
    if not option:
        return argument, DEFAULT_MODEL
    if not reference or not model:
        raise NoiseAlignError(f"reward 'dino': {argument!r} is not REF or REF,model=M; "
                              f"write e.g. {LOCAL_SPEC}")
    return reference, model
