"""The FLUX transformer behind the uniform network call: 2x2 latent packing and position ids.

The sampler's state is FLUX's unpacked latent (C, H, W), the shape FluxPipeline draws its
initial noise in before packing it; so the seed's z is diffusers' z, and every EDM step,
being elementwise, commutes with the packing. Only the network sees tokens: each 2x2 patch
of the latent becomes one token of 4C channels, ordered (channel, row in patch, column in
patch), tokens in row-major order over the (H/2, W/2) grid. Each token's position id is
(0, row, column); text tokens' ids are all zero. The guidance embedding (FLUX.1-dev) is
read from the conditioning, where models/base.py put it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .diffusers_base import Network

PATCH = 2


def pack_latents(latents: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): one token per 2x2 patch."""
    batch, channels, height, width = latents.shape
    patches = latents.reshape(batch, channels, height // PATCH, PATCH, width // PATCH, PATCH)
    return patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, (height // PATCH) * (width // PATCH), -1)


def unpack_latents(tokens: Tensor, height: int, width: int) -> Tensor:
    """The inverse of pack_latents: (B, H/2 * W/2, 4C) -> (B, C, H, W)."""
    batch = tokens.shape[0]
    patches = tokens.reshape(batch, height // PATCH, width // PATCH, -1, PATCH, PATCH)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(batch, -1, height, width)


def token_positions(rows: int, columns: int) -> Tensor:
    """Position ids (rows * columns, 3) of the latent tokens: (0, row, column), row-major."""
    row, column = torch.meshgrid(torch.arange(rows), torch.arange(columns), indexing="ij")
    return torch.stack([torch.zeros_like(row), row, column], dim=-1).reshape(-1, 3).float()


def flux_network(transformer) -> Network:
    """The FLUX transformer on unpacked latents; its timestep is t in [0, 1]."""
    def network(x_in: Tensor, timestep: Tensor, cond: dict) -> Tensor:
        height, width = x_in.shape[-2:]
        text = cond["encoder_hidden_states"]
        image_ids = token_positions(height // PATCH, width // PATCH).to(x_in)
        velocity = transformer(hidden_states=pack_latents(x_in), timestep=timestep.to(x_in.dtype),
                               guidance=cond.get("guidance"), pooled_projections=cond["pooled_projections"],
                               encoder_hidden_states=text, txt_ids=text.new_zeros(text.shape[1], 3),
                               img_ids=image_ids, return_dict=False)[0]
        return unpack_latents(velocity, height, width)

    return network
