"""Turning decoded outputs into PNG files a person can look at."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from torch import Tensor

MIN_SIDE = 256
"""Images smaller than this are upscaled by an integer factor (nearest neighbour) when saved."""


def is_image_batch(outputs: Tensor) -> bool:
    return outputs.ndim == 4 and outputs.shape[1] in (1, 3)


def to_pil(image: Tensor) -> Image.Image:
    """One C x H x W image in [0, 1] to a PIL image, upscaled if it is too small to see."""
    pixels = (image.detach().float().clamp(0, 1) * 255).round().byte().cpu().permute(1, 2, 0).numpy()
    pil = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    factor = max(1, -(-MIN_SIDE // max(pil.size)))
    return pil.resize((pil.width * factor, pil.height * factor), Image.NEAREST) if factor > 1 else pil


def save_image(image: Tensor, path: Path) -> None:
    to_pil(image).save(path)


def save_grid(rows: Sequence[Sequence[Tensor]], path: Path, gap: int = 4) -> None:
    """Rows of images (e.g. baselines above, aligned below) in one PNG, separated by white gaps."""
    tiles = [[np.asarray(to_pil(image).convert("RGB")) for image in row] for row in rows]
    height, width = tiles[0][0].shape[:2]
    columns = max(len(row) for row in tiles)
    canvas = np.full((len(tiles) * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            canvas[r * (height + gap):r * (height + gap) + height, c * (width + gap):c * (width + gap) + width] = tile
    Image.fromarray(canvas).save(path)
