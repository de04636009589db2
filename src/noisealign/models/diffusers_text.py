"""Prompt conditioning of each family, computed by the pipeline's own `encode_prompt`.

Each family's spec (diffusers_families.py) names its builder here: builder(pipe, height,
width) -> encoder (only SDXL's micro-conditioning reads the image size). Each encoder returns
a batch-1 dict of tensors whose keys are the network's text inputs, pooled embeddings
included; the CFG wrapper (models/base.py) stacks the prompt's and the negative's dicts.
"" is the unconditional prompt, encoded exactly as the pipeline encodes its default
(absent) negative prompt, so `--negative-prompt ""` reproduces diffusers' guidance.
"""

from __future__ import annotations

from typing import Callable

import torch

Encoder = Callable[[str], dict]


def sd_encoder(pipe, height: int, width: int) -> Encoder:
    """SD 1.x / 2.x: CLIP hidden states, {"encoder_hidden_states": (1, 77, d)}.

    The pipeline encodes an absent negative prompt as the text "" (same tokens, same mask).
    """
    def encode(prompt: str) -> dict:
        embeds, _ = pipe.encode_prompt(prompt, pipe.unet.device, 1, False)
        return {"encoder_hidden_states": embeds}

    return encode


def sdxl_encoder(pipe, height: int, width: int) -> Encoder:
    """SDXL: both CLIPs' penultimate states, the pooled text embedding and the size micro-conditioning.

    time_ids = (original size, crop top-left, target size) = (H, W, 0, 0, H, W), diffusers'
    default. With force_zeros_for_empty_prompt (SDXL base's config) the pipeline's default
    negative is all zeros, not the encoding of "", so "" maps to zeros here too.
    """
    zeros_for_empty = bool(pipe.config.get("force_zeros_for_empty_prompt", False))

    def encode(prompt: str) -> dict:
        embeds, _, pooled, _ = pipe.encode_prompt(prompt, device=pipe.unet.device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        if prompt == "" and zeros_for_empty:
            embeds, pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=embeds.dtype, device=embeds.device)
        return {"encoder_hidden_states": embeds, "text_embeds": pooled, "time_ids": time_ids}

    return encode


def sd3_encoder(pipe, height: int, width: int) -> Encoder:
    """SD3, SD3.5: CLIP-L + CLIP-G states padded and joined with T5's, and both CLIPs' pooled outputs.

    The pipeline encodes an absent negative prompt as "" through the same three encoders
    (T5 absent: zeros, as the pipeline does).
    """
    def encode(prompt: str) -> dict:
        embeds, _, pooled, _ = pipe.encode_prompt(prompt, None, None, device=pipe.transformer.device,
                                                  num_images_per_prompt=1, do_classifier_free_guidance=False)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    return encode


def flux_encoder(pipe, height: int, width: int, max_sequence_length: int) -> Encoder:
    """FLUX: T5's states ({"encoder_hidden_states"}: max_sequence_length tokens, padded) and
    the CLIP's pooled output ({"pooled_projections"}). The text positions (all zero in FLUX)
    are made by the network call, not carried here."""
    def encode(prompt: str) -> dict:
        embeds, pooled, _ = pipe.encode_prompt(prompt, None, device=pipe.transformer.device, num_images_per_prompt=1,
                                               max_sequence_length=max_sequence_length)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    return encode
