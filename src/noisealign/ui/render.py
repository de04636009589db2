"""Images for the page: PNG data URLs, native size for small images (the page scales them)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image
from torch import Tensor

from ..imaging import to_pil

CANDIDATE_SIDE, PREVIEW_SIDE, THUMB_SIDE = 384, 512, 96
"""Largest side sent for a candidate image, the current sample and a trajectory thumbnail (pixels)."""


def png_data_url(image: Tensor, max_side: int) -> str:
    """One C x H x W image in [0, 1] as a data: URL, shrunk (never enlarged) to fit max_side."""
    pil = to_pil(image)
    if max(pil.size) > max_side:
        pil.thumbnail((max_side, max_side), Image.LANCZOS)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return _data_url(buffer.getvalue())


def file_data_url(path: Path) -> str:
    """A PNG file already written to the run folder, as a data: URL."""
    return _data_url(path.read_bytes())


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
