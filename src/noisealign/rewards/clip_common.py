"""What the CLIP-family rewards share: CLIP's image transform in torch, cached encoders, w * cos.

Everything stays a differentiable function of the image tensor: resizing and normalization are
torch ops (no PIL round trip), and the models run in float32 (half precision ties candidates
whose scores differ in the fourth digit). Loaded models are cached per process; each call moves
them to the images' device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import NoiseAlignError
from .base import follow  # noqa: F401  (re-exported for the CLIP-based rewards)
from .hub import check_cached_when_offline, pretrained

# OpenAI CLIP's normalization, also used by open_clip ViT-H-14, PickScore, HPSv2 and BLIP/ImageReward.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def rgb_images(outputs: Tensor) -> Tensor:
    """Images in [0, 1] as float32 (B, 3, H, W); a single channel is repeated to three."""
    if outputs.ndim != 4 or outputs.shape[1] not in (1, 3):
        raise NoiseAlignError(f"image rewards take images shaped (B, 3, H, W) or (B, 1, H, W) in [0, 1], "
                              f"got {tuple(outputs.shape)}; decode latents to images first")
    images = outputs.float()
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def model_pixels(images: Tensor, size: int, mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD, crop: int | None = None) -> Tensor:
    """CLIP's eval transform in torch: shorter side to `size` (bicubic, antialiased), center crop to
    `crop` (default `size`; DINOv2 crops 224 of 256), normalize."""
    crop = size if crop is None else crop
    height, width = images.shape[-2:]
    if min(height, width) != size:
        short, long = sorted((height, width))
        resized_long = int(size * long / short)
        shape = (size, resized_long) if height <= width else (resized_long, size)
        images = F.interpolate(images, size=shape, mode="bicubic", antialias=True, align_corners=False)
        height, width = shape
    top, left = round((height - crop) / 2), round((width - crop) / 2)
    images = images[..., top:top + crop, left:left + crop]
    mean_ = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_ = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean_) / std_


def prompt_list(prompts: Sequence[str] | str, batch: int) -> list[str]:
    """One prompt per image; a bare string is used for every image."""
    prompts = [prompts] * batch if isinstance(prompts, str) else list(prompts)
    if len(prompts) != batch:
        raise NoiseAlignError(f"a text-image reward got {len(prompts)} prompts for {batch} images; "
                              "pass one prompt per image")
    return prompts


def frozen(module: nn.Module) -> nn.Module:
    """float32, eval mode, no parameter gradients: gradients reach the images only."""
    return module.float().eval().requires_grad_(False)


class ClipEncoder:
    """A CLIP model and its tokenizer giving unit-norm embeddings; text embeddings are cached per prompt."""

    def __init__(self, model: nn.Module, tokenizer: Any | None):
        self.model = frozen(model)
        self.tokenizer = tokenizer
        self.size = model.config.vision_config.image_size
        self.context = model.config.text_config.max_position_embeddings
        self._texts: dict[tuple[str, torch.device], Tensor] = {}

    def images(self, images: Tensor) -> Tensor:
        """E_img(x) / |E_img(x)| for images in [0, 1]; differentiable in `images`."""
        follow(self.model, images.device)
        pooled = self.model.vision_model(pixel_values=model_pixels(images, self.size)).pooler_output
        return F.normalize(self.model.visual_projection(pooled), dim=-1)

    def texts(self, prompts: Sequence[str], device: torch.device) -> Tensor:
        """E_txt(c) / |E_txt(c)|, computed once per prompt and device. The stack returns a fresh tensor,
        so embeddings cached under inference mode still serve a later differentiable call."""
        follow(self.model, device)
        new = [p for p in dict.fromkeys(prompts) if (p, device) not in self._texts]
        if new:
            tokens = self.tokenizer(new, padding="max_length", truncation=True, max_length=self.context,
                                    return_tensors="pt").to(device)
            with torch.no_grad():
                pooled = self.model.text_model(input_ids=tokens["input_ids"],
                                               attention_mask=tokens["attention_mask"]).pooler_output
                features = F.normalize(self.model.text_projection(pooled), dim=-1)
            self._texts.update({(p, device): f for p, f in zip(new, features)})
        return torch.stack([self._texts[(p, device)] for p in prompts])


_ENCODERS: dict[tuple[str, str], ClipEncoder] = {}


def clip_encoder(reward: str, model_source: str | Path, tokenizer_source: str | Path | None) -> ClipEncoder:
    """A transformers CLIPModel (and tokenizer, unless None: image-only use) from local folders or hub
    ids; loaded once per process."""
    key = (str(model_source), str(tokenizer_source))
    if key not in _ENCODERS:
        for source in (model_source, tokenizer_source):
            if source is not None:
                check_cached_when_offline(reward, source)
        from transformers import AutoTokenizer, CLIPModel

        model = pretrained(reward, CLIPModel, model_source)
        tokenizer = None if tokenizer_source is None else pretrained(reward, AutoTokenizer, tokenizer_source)
        _ENCODERS[key] = ClipEncoder(model, tokenizer)
    return _ENCODERS[key]


class CosineReward:
    """r(x, c) = w * cos(E_img(x), E_txt(c)), floored at 0 for CLIPScore (Hessel et al. 2021, eq. 1)."""

    differentiable = True

    def __init__(self, name: str, encoder: ClipEncoder, weight: float, floor_at_zero: bool = False):
        self.name, self.encoder, self.weight, self.floor_at_zero = name, encoder, weight, floor_at_zero

    def __call__(self, outputs: Tensor, prompts: Sequence[str]) -> Tensor:
        images = rgb_images(outputs)
        texts = self.encoder.texts(prompt_list(prompts, len(images)), images.device)
        cosine = (self.encoder.images(images) * texts).sum(dim=-1)
        if self.floor_at_zero:
            cosine = cosine.clamp(min=0.0)
        return self.weight * cosine
