"""Turning decoded outputs into pictures: the one tensor-to-PIL conversion of the package."""

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
    """One C x H x W image in [0, 1] (C = 1 or 3) as an 8-bit PIL image at its own size."""
    pixels = (image.detach().float().clamp(0, 1) * 255).round().byte().cpu().permute(1, 2, 0).numpy()
    return Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)


def enlarged(pil: Image.Image, min_side: int) -> Image.Image:
    """`pil` scaled up by the smallest integer factor that brings its longest side to min_side
    (nearest neighbour: an 8 x 8 digit stays crisp squares); unchanged if already that large."""
    factor = max(1, -(-min_side // max(pil.size)))
    return pil.resize((pil.width * factor, pil.height * factor), Image.NEAREST) if factor > 1 else pil


def save_image(image: Tensor, path: Path, format: str | None = None) -> None:
    """One image as a file a person can look at (enlarged to MIN_SIDE if smaller)."""
    enlarged(to_pil(image), MIN_SIDE).save(path, format=format)


def save_grid(rows: Sequence[Sequence[Tensor]], path: Path, gap: int = 4, format: str | None = None) -> None:
    """Rows of images (e.g. baselines above, aligned below) in one PNG, separated by white gaps."""
    tiles = [[np.asarray(enlarged(to_pil(image), MIN_SIDE).convert("RGB")) for image in row] for row in rows]
    height, width = tiles[0][0].shape[:2]
    columns = max(len(row) for row in tiles)
    canvas = np.full((len(tiles) * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            canvas[r * (height + gap):r * (height + gap) + height, c * (width + gap):c * (width + gap) + width] = tile
    Image.fromarray(canvas).save(path, format=format)
