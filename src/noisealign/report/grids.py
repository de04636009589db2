"""Image grids per prompt: the plain sample above each method's output, same seeds in each column.

Each method (with each optimized reward) is shown at its largest budget. The grid names the
run folders' PNG files; the HTML writer embeds them as base64 PNG (shrunk to THUMBNAIL_SIDE
pixels when larger), the Markdown writer links them.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .load import SweepData
from .stats import grouped
from .tables import PLAIN

THUMBNAIL_SIDE = 256


@dataclass
class GridRow:
    label: str
    images: list[Path | None]   # one per seed; None where the cell did not finish


@dataclass
class Grid:
    prompt: str
    seeds: list[int]
    rows: list[GridRow]


def image_grids(data: SweepData, prompts: int, seeds: int) -> list[Grid]:
    """Grids for the first `prompts` prompts with finished cells, over their first `seeds` seeds."""
    grids = []
    largest = {label: max(line["budget"] for line in lines)
               for label, lines in grouped(data.complete, lambda line: line["label"]).items()}
    for prompt, lines in grouped(data.complete, lambda line: line["prompt"]).items():
        shown = [seed for seed in data.spec.seeds if any(line["seed"] == seed for line in lines)][:seeds]
        rows = [GridRow(PLAIN, [_png(data.path, lines, seed, "baseline") for seed in shown])]
        tops = [line for line in lines if line["budget"] == largest[line["label"]]]
        for (label, reward), own in grouped(tops, lambda line: (line["label"], line["reward"])).items():
            rows.append(GridRow(f"{label} → {reward} @ {largest[label]}",
                                [_png(data.path, own, seed, "image") for seed in shown]))
        if any(image for row in rows for image in row.images):
            grids.append(Grid(prompt, shown, rows))
        if len(grids) == prompts:
            break
    return grids


def _png(root: Path, lines: list[dict], seed: int, stem: str) -> Path | None:
    line = next((line for line in lines if line["seed"] == seed and line.get("run_dir")), None)
    path = None if line is None else root / line["run_dir"] / f"{stem}.png"
    return path if path is not None and path.is_file() else None


def png_data_uri(path: Path) -> str:
    """The image as a data: URI, shrunk to THUMBNAIL_SIDE on its longer side if larger."""
    with Image.open(path) as image:
        if max(image.size) <= THUMBNAIL_SIDE:
            data = path.read_bytes()
        else:
            image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
