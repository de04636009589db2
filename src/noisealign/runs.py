"""Run directories: result.json, image.png, baseline.png, trace.csv, noise.pt.

A run directory is written as results arrive, so a run that fails half way keeps what it
computed (the baseline, the trace so far, the error in result.json).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import NoiseAlignError
from .imaging import is_image_batch, save_grid, save_image
from .methods.base import StepEvent

TRACE_COLUMNS = ["step", "sigma", "queries", "nfe", "seconds", "reward_mean", "reward_std", "reward_max"]


def create_run_dir(out: str | None, method: str, seed: int, root: str = "runs") -> Path:
    """A new, empty run directory; an existing non-empty --out is refused, never overwritten."""
    if out is not None:
        path = Path(out)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise NoiseAlignError(f"output folder {path} already exists and is not empty; "
                                  "choose another --out or remove it")
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        suffix = "" if attempt == 0 else f"-{attempt}"
        path = Path(root) / f"{stamp}-{method}-seed{seed}{suffix}"
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise NoiseAlignError(f"could not create a new run folder under {root}; pass --out")


class Trace:
    """Collects one row per StepEvent, with the ledger's counters at that moment."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def record(self, event: StepEvent) -> None:
        row: dict[str, Any] = {"step": event.step, "sigma": event.sigma, **event.counts}
        if event.rewards is not None and len(event.rewards):
            rewards = event.rewards.detach().double().flatten()
            row.update(reward_mean=float(rewards.mean()), reward_max=float(rewards.max()),
                       reward_std=float(rewards.std(unbiased=False)))
        row.update(event.extras)
        self.rows.append(row)

    def write(self, path: Path) -> None:
        extra = [key for row in self.rows for key in row if key not in TRACE_COLUMNS]
        columns = TRACE_COLUMNS + list(dict.fromkeys(extra))
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: _cell(row.get(k)) for k in columns})


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def save_output(output: Tensor, path_stem: Path) -> Path:
    """An image as PNG; a non-image output (e.g. a gmm point) as JSON numbers."""
    if is_image_batch(output):
        path = path_stem.with_suffix(".png")
        save_image(output[0], path)
    else:
        path = path_stem.with_suffix(".json")
        path.write_text(json.dumps(output.detach().double().cpu().tolist()))
    return path


def save_comparison_grid(baselines: list[Tensor], aligned: list[Tensor], path: Path) -> bool:
    """Baselines on the top row, aligned samples below; False when outputs are not images."""
    if not is_image_batch(baselines[0]):
        return False
    save_grid([[b[0] for b in baselines], [a[0] for a in aligned]], path)
    return True


def write_json(data: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_noises(noises: dict[str, Tensor], path: Path) -> None:
    torch.save({k: v.detach().cpu() for k, v in noises.items()}, path)
