"""HPS v2.1 (Wu et al. 2023, Human Preference Score v2): open_clip ViT-H-14 fine-tuned on HPD v2.

r(x, c) = cos(E_img(x), E_txt(c)), about 0.2..0.35, as hpsv2.score computes it (no logit scale).
The checkpoint (xswu/HPSv2, HPS_v2.1_compressed.pt) is an open_clip state dict under
'state_dict'. open_clip itself is not needed: its ViT and text transformer are the network
transformers' CLIPModel computes (pre-LayerNorm blocks, exact GELU, LayerNorm eps 1e-5, text
pooled at the end-of-text token under a causal mask), so the weights are renamed into it:
fused `in_proj` attention weights split into q/k/v, `x @ proj` matrices transposed into Linear
weights. Sizes are read from the tensors' shapes; the head count (16 in both towers of ViT-H-14)
is the one thing shapes do not tell. Tokenizer: laion/CLIP-ViT-H-14-laion2B-s32B-b79K (the
same BPE as open_clip's).

Argument: none or `v2.1` (hub), `v2.0` (HPS_v2_compressed.pt), or a local path: the .pt file,
or a folder holding HPS_v2.1_compressed.pt. Tokenizer files beside the checkpoint
(tokenizer_config.json) replace the hub tokenizer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import NoiseAlignError
from .clip_common import ClipEncoder, CosineReward
from .hub import beside, first_line, hub_file, local_path, pretrained

HPS_REPO = "xswu/HPSv2"
CHECKPOINTS = {"v2.1": "HPS_v2.1_compressed.pt", "v2.0": "HPS_v2_compressed.pt"}
TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
HEADS = 16  # ViT-H-14: vision width 1280 = 16 x 80, text width 1024 = 16 x 64

# Per-block renames, open_clip -> transformers CLIPEncoderLayer (weights and biases alike).
_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
          "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def _layers(state: dict[str, Tensor], tower: str) -> int:
    pattern = re.compile(re.escape(tower) + r"transformer\.resblocks\.(\d+)\.")
    return len({m.group(1) for key in state if (m := pattern.match(key))})


def _tower(state: dict[str, Tensor], tower: str, target: str) -> dict[str, Tensor]:
    """Rename the residual blocks of one tower; pops what it uses from `state`."""
    out = {}
    for i in range(_layers(state, tower)):
        src, dst = f"{tower}transformer.resblocks.{i}.", f"{target}encoder.layers.{i}."
        for kind in ("weight", "bias"):
            fused = state.pop(f"{src}attn.in_proj_{kind}").chunk(3)  # rows: W_q, W_k, W_v
            out.update({f"{dst}self_attn.{p}_proj.{kind}": w for p, w in zip("qkv", fused)})
            out.update({f"{dst}{new}.{kind}": state.pop(f"{src}{old}.{kind}") for old, new in _BLOCK.items()})
    return out


def open_clip_to_transformers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """An open_clip CLIP state dict (OpenAI key layout) as a transformers CLIPModel state dict, float32."""
    state = {key: value.float() for key, value in state.items()}
    out = {
        "vision_model.embeddings.class_embedding": state.pop("visual.class_embedding"),
        "vision_model.embeddings.patch_embedding.weight": state.pop("visual.conv1.weight"),
        "vision_model.embeddings.position_embedding.weight": state.pop("visual.positional_embedding"),
        "visual_projection.weight": state.pop("visual.proj").T.contiguous(),
        "text_model.embeddings.token_embedding.weight": state.pop("token_embedding.weight"),
        "text_model.embeddings.position_embedding.weight": state.pop("positional_embedding"),
        "text_projection.weight": state.pop("text_projection").T.contiguous(),
        "logit_scale": state.pop("logit_scale"),
    }
    norms = (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm"),
             ("ln_final", "text_model.final_layer_norm"))
    for old, new in norms:
        out.update({f"{new}.{kind}": state.pop(f"{old}.{kind}") for kind in ("weight", "bias")})
    out.update(_tower(state, "visual.", "vision_model."))
    out.update(_tower(state, "", "text_model."))
    if state:
        raise KeyError(f"keys outside the open_clip ViT layout: {', '.join(sorted(state)[:4])}")
    return out


def open_clip_config(state: dict[str, Tensor], tokenizer: Any) -> Any:
    """The transformers CLIPConfig of an open_clip ViT state dict, sizes read from tensor shapes."""
    from transformers import CLIPConfig

    patch = state["visual.conv1.weight"].shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    common = {"num_attention_heads": HEADS, "hidden_act": "gelu", "layer_norm_eps": 1e-5}
    vision = {**common, "hidden_size": state["visual.conv1.weight"].shape[0], "patch_size": patch,
              "image_size": grid * patch, "num_hidden_layers": _layers(state, "visual."),
              "intermediate_size": state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
              "projection_dim": state["visual.proj"].shape[1]}
    text = {**common, "vocab_size": state["token_embedding.weight"].shape[0],
            "hidden_size": state["token_embedding.weight"].shape[1],
            "max_position_embeddings": state["positional_embedding"].shape[0],
            "num_hidden_layers": _layers(state, ""),
            "intermediate_size": state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "projection_dim": state["text_projection"].shape[1], "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=state["text_projection"].shape[1])


def load_open_clip(state: dict[str, Tensor], tokenizer: Any, source: str) -> Any:
    """A transformers CLIPModel computing the open_clip model of `state`."""
    from transformers import CLIPModel

    try:
        model = CLIPModel(open_clip_config(state, tokenizer))
        model.load_state_dict(open_clip_to_transformers(state), strict=True)
    except (KeyError, RuntimeError) as error:
        raise NoiseAlignError(f"reward 'hpsv2': {source} is not an open_clip ViT checkpoint "
                              f"({first_line(error)}); use {HPS_REPO}/{CHECKPOINTS['v2.1']}") from None
    return model


def _checkpoint(argument: str | None) -> Path:
    if (argument or "v2.1") in CHECKPOINTS:
        return hub_file("hpsv2", HPS_REPO, CHECKPOINTS[argument or "v2.1"])
    path = local_path("hpsv2", argument, tuple(CHECKPOINTS))
    return path / CHECKPOINTS["v2.1"] if path.is_dir() else path


_ENCODERS: dict[str, ClipEncoder] = {}


def hpsv2(argument: str | None) -> CosineReward:
    """The `hpsv2` reward: differentiable, one prompt per image."""
    file = _checkpoint(argument)                 # a missing checkpoint fails before transformers loads
    from transformers import AutoTokenizer

    if str(file) not in _ENCODERS:
        if not file.is_file():
            raise NoiseAlignError(f"reward 'hpsv2': no checkpoint {file}; "
                                  "give the .pt path as hpsv2:/path/to/file.pt")
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
        tokenizer = pretrained("hpsv2", AutoTokenizer, beside(file.parent, "tokenizer_config.json", TOKENIZER))
        model = load_open_clip(checkpoint.get("state_dict", checkpoint), tokenizer, str(file))
        _ENCODERS[str(file)] = ClipEncoder(model, tokenizer)
    return CosineReward("hpsv2", _ENCODERS[str(file)], weight=1.0)
