"""ImageReward v1.0 (Xu et al. 2023): BLIP's ViT-L reads the image, BLIP's BERT reads the prompt while
cross-attending to it, and an MLP scores the [CLS] feature, standardized by the training statistics:

    r(x, c) = (head(T(c | V(x))_[CLS]) - 0.16717362830052426) / 1.0333394966054072

The checkpoint (THUDM/ImageReward, ImageReward.pt) holds BLIP under `blip.` and the head under
`mlp.`. The ImageReward package's own BLIP code is not needed: BLIP's ViT (timm layout) is
renamed into transformers' BlipVisionModel, its med.py BERT is transformers' BlipTextModel key
for key, and the head is the aesthetic predictor's. Text sizes come from med_config.json,
vision sizes from tensor shapes (heads: 16, ViT-L). Prompts are tokenized with
bert-base-uncased, padded or cut to 35 tokens, as ImageReward scores them.

Argument: none (hub), or a local path: the .pt file, or a folder holding ImageReward.pt;
med_config.json and tokenizer files (tokenizer_config.json) beside it replace the hub ones.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..errors import NoiseAlignError
from .aesthetic import LinearHead
from .clip_common import follow, frozen, model_pixels, prompt_list, rgb_images
from .hub import first_line, hub_file, local_path, pretrained

REPO, CHECKPOINT, MED_CONFIG = "THUDM/ImageReward", "ImageReward.pt", "med_config.json"
TOKENIZER = "bert-base-uncased"
MEAN, STD = 0.16717362830052426, 1.0333394966054072  # ImageReward's reward standardization
VIT_HEADS = 16  # BLIP ViT-L: width 1024 = 16 x 64
MAX_TOKENS = 35

# Per-block renames, BLIP ViT (timm) -> transformers BlipEncoderLayer (weights and biases alike).
_BLOCK = {"norm1": "layer_norm1", "attn.qkv": "self_attn.qkv", "attn.proj": "self_attn.projection",
          "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def _part(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {key[len(prefix):]: value.float() for key, value in state.items() if key.startswith(prefix)}


def blip_vit_to_transformers(vit: dict[str, Tensor]) -> dict[str, Tensor]:
    """BLIP's VisionTransformer state dict (keys after `visual_encoder.`) as a BlipVisionModel state dict."""
    out = {"embeddings.class_embedding": vit["cls_token"], "embeddings.position_embedding": vit["pos_embed"],
           "embeddings.patch_embedding.weight": vit["patch_embed.proj.weight"],
           "embeddings.patch_embedding.bias": vit["patch_embed.proj.bias"],
           "post_layernorm.weight": vit["norm.weight"], "post_layernorm.bias": vit["norm.bias"]}
    for i in range(_blocks(vit)):
        out.update({f"encoder.layers.{i}.{new}.{kind}": vit[f"blocks.{i}.{old}.{kind}"]
                    for old, new in _BLOCK.items() for kind in ("weight", "bias")})
    return out


def _blocks(vit: dict[str, Tensor]) -> int:
    return len({m.group(1) for key in vit if (m := re.match(r"blocks\.(\d+)\.", key))})


def blip_vision_config(vit: dict[str, Tensor]) -> Any:
    from transformers import BlipVisionConfig

    patch = vit["patch_embed.proj.weight"].shape[-1]
    grid = round((vit["pos_embed"].shape[1] - 1) ** 0.5)
    return BlipVisionConfig(hidden_size=vit["cls_token"].shape[-1], num_hidden_layers=_blocks(vit),
                            intermediate_size=vit["blocks.0.mlp.fc1.weight"].shape[0], num_attention_heads=VIT_HEADS,
                            patch_size=patch, image_size=grid * patch, hidden_act="gelu", layer_norm_eps=1e-6)


def blip_text_config(med: dict[str, Any], vision_width: int) -> Any:
    """BlipTextConfig of med_config.json; is_decoder only makes the cross-attention layers exist."""
    from transformers import BlipTextConfig

    sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "max_position_embeddings", "hidden_act", "layer_norm_eps", "pad_token_id")
    return BlipTextConfig(**{k: med[k] for k in sizes}, encoder_hidden_size=vision_width, is_decoder=True)


class ImageRewardModel(nn.Module):
    """V (BlipVisionModel), T (BlipTextModel with cross-attention) and the head, in float32."""

    def __init__(self, vision: nn.Module, text: nn.Module, head: LinearHead):
        super().__init__()
        self.vision, self.text, self.head = vision, text, head

    def forward(self, pixels: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        image = self.vision(pixel_values=pixels).last_hidden_state
        image_mask = torch.ones(image.shape[:2], dtype=torch.long, device=image.device)
        text = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image,
                         encoder_attention_mask=image_mask).last_hidden_state
        return (self.head(text[:, 0]) - MEAN) / STD


def load_imagereward(state: dict[str, Tensor], med: dict[str, Any], source: str) -> ImageRewardModel:
    """ImageRewardModel from an ImageReward.pt state dict and its med_config.json."""
    from transformers import BlipTextModel, BlipVisionModel

    try:
        vit = _part(state, "blip.visual_encoder.")
        vision = BlipVisionModel(blip_vision_config(vit))
        vision.load_state_dict(blip_vit_to_transformers(vit), strict=True)
        text = BlipTextModel(blip_text_config(med, vit["cls_token"].shape[-1]), add_pooling_layer=False)
        bert = _part(state, "blip.text_encoder.")
        bert.pop("embeddings.position_ids", None)  # a constant arange buffer, rebuilt by transformers
        text.load_state_dict(bert, strict=True)
        head = LinearHead.from_state_dict(_part(state, "mlp."))
    except (KeyError, RuntimeError) as error:
        raise NoiseAlignError(f"reward 'imagereward': {source} is not an ImageReward checkpoint "
                              f"({first_line(error)}); use {REPO}/{CHECKPOINT}") from None
    return frozen(ImageRewardModel(vision, text, head))


def _files(argument: str | None) -> tuple[Path, Path, str | Path]:
    """(checkpoint, med_config.json, tokenizer source) from the argument or the hub."""
    path = local_path("imagereward", argument)
    if path is None:
        return hub_file("imagereward", REPO, CHECKPOINT), hub_file("imagereward", REPO, MED_CONFIG), TOKENIZER
    checkpoint = path / CHECKPOINT if path.is_dir() else path
    folder = checkpoint.parent
    med = folder / MED_CONFIG if (folder / MED_CONFIG).exists() else hub_file("imagereward", REPO, MED_CONFIG)
    return checkpoint, med, folder if (folder / "tokenizer_config.json").exists() else TOKENIZER


_MODELS: dict[str, tuple[ImageRewardModel, Any]] = {}


class ImageReward:
    """ImageReward v1.0 of images in [0, 1] for their prompts; differentiable."""

    name = "imagereward"
    differentiable = True

    def __init__(self, model: ImageRewardModel, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer
        self.size = model.vision.config.image_size

    @classmethod
    def from_argument(cls, argument: str | None) -> "ImageReward":
        checkpoint, med, tokenizer = _files(argument)   # a missing checkpoint fails before transformers loads
        from transformers import AutoTokenizer

        if str(checkpoint) not in _MODELS:
            if not checkpoint.is_file():
                raise NoiseAlignError(f"reward 'imagereward': no checkpoint {checkpoint}; "
                                      "give the .pt path as imagereward:/path/to/ImageReward.pt")
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            model = load_imagereward(state, json.loads(med.read_text()), str(checkpoint))
            _MODELS[str(checkpoint)] = (model, pretrained("imagereward", AutoTokenizer, tokenizer))
        return cls(*_MODELS[str(checkpoint)])

    def __call__(self, outputs: Tensor, prompts: Sequence[str]) -> Tensor:
        images = rgb_images(outputs)
        follow(self.model, images.device)
        tokens = self.tokenizer(prompt_list(prompts, len(images)), padding="max_length", truncation=True,
                                max_length=MAX_TOKENS, return_tensors="pt").to(images.device)
        return self.model(model_pixels(images, self.size), tokens["input_ids"], tokens["attention_mask"])
