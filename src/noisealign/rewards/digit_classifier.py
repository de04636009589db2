"""The bundled digit classifier: a small CNN over [0, 1]-valued 1 x 8 x 8 images.

Trained by scripts/train_digits.py on the half of scikit-learn's digits that the digits
diffusion model never saw, with shifts, contrast changes and pixel noise, so that it judges
the model's outputs rather than recalling its training set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class DigitClassifierConfig:
    """channels: width of the first conv (the 4 x 4 stage has twice as many); classes: 10 digits."""

    channels: int = 32
    classes: int = 10

    def to_dict(self) -> dict:
        return asdict(self)


class DigitClassifier(nn.Module):
    """Logits (B, 10) of images (B, 1, 8, 8) in [0, 1]."""

    def __init__(self, config: DigitClassifierConfig = DigitClassifierConfig()):
        super().__init__()
        self.config = config
        c = config.channels
        self.conv1 = nn.Conv2d(1, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.conv3 = nn.Conv2d(c, 2 * c, 3, padding=1)   # after 2 x 2 pooling: 4 x 4
        self.dropout = nn.Dropout(0.2)
        self.linear = nn.Linear(2 * c * 16, config.classes)

    def forward(self, images: Tensor) -> Tensor:
        h = F.silu(self.conv1(images * 2 - 1))
        h = F.max_pool2d(F.silu(self.conv2(h)), 2)
        h = F.silu(self.conv3(h))
        return self.linear(self.dropout(h.flatten(1)))
