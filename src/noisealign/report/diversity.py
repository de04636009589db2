"""Diversity across the seeds of one prompt: the mean pairwise distance of the outputs.

`pixel` (the default, needs nothing): the root-mean-square difference of two outputs' pixels
in [0, 1] (of their values, for outputs that are not images). `clip[:SOURCE]` and
`dino[:SOURCE]`: the cosine distance (1 - cos) of CLIP image embeddings or DINO class tokens,
from a hub id in the Hugging Face cache or a local folder (defaults: DEFAULT_SOURCES), loaded
as the rewards load theirs: a missing checkpoint is one error line saying how to get it.

For each method, optimized reward and budget, the distance is averaged over the pairs of seeds
of each prompt, then over prompts (mean ± standard error over prompts). The plain sampler's
row uses the baselines. A prompt with fewer than two finished seeds is skipped.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from ..errors import NoiseAlignError
from .load import SweepData
from .stats import grouped, stat
from .tables import PLAIN, Table, by_method_reward_budget

DEFAULT_SOURCES = {"clip": "openai/clip-vit-large-patch14", "dino": "facebook/dinov2-base"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DINO_SIZE = 224

Features = Callable[[list[np.ndarray]], np.ndarray]
"""outputs -> one feature row per output."""


class DiversityMeasure:
    """Features of outputs and the distance of two feature rows."""

    def __init__(self, name: str, features: Features, distance: Callable[[np.ndarray, np.ndarray], float],
                 needs_images: bool):
        self.name, self.features, self.distance, self.needs_images = name, features, distance, needs_images

    def mean_pairwise(self, outputs: list[np.ndarray]) -> float:
        rows = self.features(outputs)
        return float(np.mean([self.distance(a, b) for a, b in itertools.combinations(rows, 2)]))


def diversity_measure(spec: str) -> DiversityMeasure:
    """`pixel`, `clip[:SOURCE]` or `dino[:SOURCE]` (see the module docstring)."""
    kind, _, source = spec.partition(":")
    if kind == "pixel" and not source:
        return DiversityMeasure("pixel RMS distance", _flattened, _rms, needs_images=False)
    if kind in DEFAULT_SOURCES:
        embed = _clip_features if kind == "clip" else _dino_features
        return DiversityMeasure(f"{kind.upper()} cosine distance ({source or DEFAULT_SOURCES[kind]})",
                                embed(source or DEFAULT_SOURCES[kind]), _cosine_distance, needs_images=True)
    raise NoiseAlignError(f"--diversity {spec!r}: choose pixel, clip[:SOURCE] or dino[:SOURCE] "
                          "(SOURCE: a hub id in the Hugging Face cache or a local folder)")


def diversity_table(data: SweepData, measure: DiversityMeasure) -> Table | None:
    """Rows: the plain sampler, then each method, optimized reward and budget."""
    complete = data.complete
    groups: list[tuple[list[Any], list[dict[str, Any]], str]] = [([PLAIN, "", ""], complete, "baseline")]
    groups += [([label, reward, budget], lines, "image")
               for (label, reward, budget), lines in by_method_reward_budget(data).items()]
    rows = []
    for head, lines, stem in groups:
        per_prompt = []
        for prompt_lines in grouped(lines, lambda line: line["prompt"]).values():
            seeds = grouped(prompt_lines, lambda line: line["seed"])
            outputs = [_output(data.path, group[0], stem, measure) for group in seeds.values()]
            outputs = [output for output in outputs if output is not None]
            if len(outputs) >= 2:
                per_prompt.append(measure.mean_pairwise(outputs))
        if per_prompt:
            rows.append([*head, len(per_prompt), stat(per_prompt)])
    if not rows:
        return None
    return Table("diversity", f"Diversity across seeds ({measure.name})",
                 "mean pairwise distance between the outputs of the seeds of one prompt, averaged over prompts "
                 "(± standard error over prompts); higher is more diverse",
                 ["method", "optimized", "budget", "prompts", "diversity"], rows)


def _output(root: Path, line: dict[str, Any], stem: str, measure: DiversityMeasure) -> np.ndarray | None:
    """A cell's output (`image`) or baseline (`baseline`) as an array: an image in [0, 1] (H, W, 3),
    or a non-image output's values."""
    if not line.get("run_dir"):
        return None
    folder = root / line["run_dir"]
    if (folder / f"{stem}.png").is_file():
        with Image.open(folder / f"{stem}.png") as image:
            return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if (folder / f"{stem}.json").is_file():
        if measure.needs_images:
            raise NoiseAlignError(f"--diversity {measure.name} needs image outputs; this sweep's are values "
                                  "(use --diversity pixel)")
        return np.asarray(json.loads((folder / f"{stem}.json").read_text()), dtype=np.float64)
    return None


def _flattened(outputs: list[np.ndarray]) -> np.ndarray:
    return np.stack([np.ravel(output) for output in outputs])


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(1.0 - np.dot(a, b))   # rows are unit vectors


def _image_batch(outputs: list[np.ndarray]):
    import torch

    return torch.from_numpy(np.stack(outputs)).permute(0, 3, 1, 2).float()


def _clip_features(source: str) -> Features:
    """Unit CLIP image embeddings (the CLIP the rewards use, with its transform in torch)."""
    from ..rewards.clip_common import clip_encoder

    encoder = clip_encoder("clip", source, None)

    def features(outputs: list[np.ndarray]) -> np.ndarray:
        import torch

        with torch.no_grad():
            return encoder.images(_image_batch(outputs)).numpy()
    return features


def _dino_features(source: str) -> Features:
    """Unit DINO class-token embeddings (ImageNet normalization, 224 px center crop)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel

    from ..rewards.clip_common import frozen, model_pixels
    from ..rewards.hub import pretrained

    model = frozen(pretrained("dino", AutoModel, source))

    def features(outputs: list[np.ndarray]) -> np.ndarray:
        pixels = model_pixels(_image_batch(outputs), DINO_SIZE, IMAGENET_MEAN, IMAGENET_STD)
        with torch.no_grad():
            tokens = model(pixel_values=pixels).last_hidden_state[:, 0]
        return F.normalize(tokens, dim=-1).numpy()
    return features
