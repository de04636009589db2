"""PickScore v1 (Kirstain et al. 2023): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences.

r(x, c) = exp(logit_scale) * cos(E_img(x), E_txt(c)), about 18..24 for typical generations
(logit_scale = log 100). Weights: yuvalkirstain/PickScore_v1; tokenizer: the processor repo
laion/CLIP-ViT-H-14-laion2B-s32B-b79K, as the authors load it.

Argument: none (hub), or a local folder holding the CLIPModel (config.json and weights); its
tokenizer is taken from that folder when it holds tokenizer_config.json, else from the hub.
"""

from __future__ import annotations

from .clip_common import CosineReward, clip_encoder
from .hub import beside, local_path

PICKSCORE = "yuvalkirstain/PickScore_v1"
PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def pickscore(argument: str | None) -> CosineReward:
    """The `pickscore` reward: differentiable, one prompt per image."""
    folder = local_path("pickscore", argument)
    encoder = clip_encoder("pickscore", folder or PICKSCORE, beside(folder, "tokenizer_config.json", PROCESSOR))
    return CosineReward("pickscore", encoder, weight=encoder.model.logit_scale.exp().item())
