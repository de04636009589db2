"""LAION improved aesthetic predictor: a linear MLP head on the unit-norm CLIP ViT-L/14 image embedding.

r(x) = head(E_img(x) / |E_img(x)|), about 1..10 (the AVA rating scale). The head is
`sac+logos+ava1-l14-linearMSE.pth` (christophschuhmann/improved-aesthetic-predictor), the one
DDPO and the Demon paper use; the hub copy is trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth.
Prompts are ignored.

Argument: none (hub), or a local path: the head .pth file, or a folder holding
`aesthetic-model.pth`. When that folder also holds a CLIP model (config.json and weights, as
CLIPModel.save_pretrained writes them) it replaces openai/clip-vit-large-patch14.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from ..errors import NoiseAlignError
from .clip_common import ClipEncoder, clip_encoder, follow, frozen, rgb_images
from .hub import beside, first_line, hub_file, local_path

HEAD_REPO, HEAD_FILE = "trl-lib/ddpo-aesthetic-predictor", "aesthetic-model.pth"
CLIP_L14 = "openai/clip-vit-large-patch14"


class LinearHead(nn.Module):
    """The improved-aesthetic-predictor MLP: Linear layers d -> 1024 -> 128 -> 64 -> 16 -> 1, no nonlinearity.

    Identity sits where training had Dropout, so the checkpoint keys layers.{0,2,4,6,7} line up.
    ImageReward reuses this head on its 768-d text-image feature.
    """

    def __init__(self, features: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(features, 1024), nn.Identity(), nn.Linear(1024, 128), nn.Identity(),
            nn.Linear(128, 64), nn.Identity(), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features).squeeze(-1)

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> "LinearHead":
        """Sizes from layers.0.weight; KeyError or RuntimeError when `state` is not such a head."""
        head = cls(state["layers.0.weight"].shape[1])
        head.load_state_dict(state)
        return frozen(head)


def _head_file(path: Path | None) -> Path:
    if path is None:
        return hub_file("aesthetic", HEAD_REPO, HEAD_FILE)
    return path / HEAD_FILE if path.is_dir() else path


_HEADS: dict[str, LinearHead] = {}


def _head(file: Path) -> LinearHead:
    if str(file) not in _HEADS:
        if not file.is_file():
            raise NoiseAlignError(f"reward 'aesthetic': no head file {file}; put {HEAD_FILE} there "
                                  "or give the .pth path as aesthetic:/path/to/head.pth")
        try:
            _HEADS[str(file)] = LinearHead.from_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        except (KeyError, RuntimeError) as error:
            raise NoiseAlignError(f"reward 'aesthetic': {file} is not an aesthetic-predictor MLP head "
                                  f"({first_line(error)}); use {HEAD_REPO}/{HEAD_FILE}") from None
    return _HEADS[str(file)]


class Aesthetic:
    """LAION aesthetic score of images in [0, 1]; differentiable, prompt-free."""

    name = "aesthetic"
    differentiable = True

    def __init__(self, encoder: ClipEncoder, head: LinearHead):
        self.encoder, self.head = encoder, head

    @classmethod
    def from_argument(cls, argument: str | None) -> "Aesthetic":
        path = local_path("aesthetic", argument)
        head_file = _head_file(path)
        head = _head(head_file)
        backbone = beside(head_file.parent if path else None, "config.json", CLIP_L14)
        return cls(clip_encoder("aesthetic", backbone, None), head)

    def __call__(self, outputs: Tensor, prompts: Sequence[str]) -> Tensor:
        images = rgb_images(outputs)
        follow(self.head, images.device)
        return self.head(self.encoder.images(images))
