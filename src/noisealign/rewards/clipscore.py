"""CLIPScore (Hessel et al. 2021, eq. 1): r(x, c) = w * max(cos(E_img(x), E_txt(c)), 0), w = 2.5.

The floor at 0 is the metric's own; its gradient is zero for an image whose cosine with the
prompt is negative (rare with real CLIP, where matching pairs sit around 0.2..0.4).

Argument: `l14` (default, openai/clip-vit-large-patch14), `b32` (openai/clip-vit-base-patch32),
or a local folder holding a CLIPModel and its tokenizer (save_pretrained of both).
"""

from __future__ import annotations

from .clip_common import CosineReward, clip_encoder
from .hub import local_path

VARIANTS = {"l14": "openai/clip-vit-large-patch14", "b32": "openai/clip-vit-base-patch32"}
WEIGHT = 2.5


def clipscore(argument: str | None) -> CosineReward:
    """The `clipscore` reward: differentiable (almost everywhere), one prompt per image."""
    source = VARIANTS.get(argument or "l14") or local_path("clipscore", argument, tuple(VARIANTS))
    return CosineReward("clipscore", clip_encoder("clipscore", source, source), weight=WEIGHT, floor_at_zero=True)
