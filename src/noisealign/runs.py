"""Run folders: result.json, image.png, baseline.png, trace.csv, noise.pt.

A run folder has one writer. `RunFolder.create` makes it exclusively (a folder that exists
and is not empty is refused) and holds an advisory lock on it (flock on the folder itself)
while the run lasts, so a second `generate` or `ui` on the same folder is refused in one
line. result.json is replaced atomically and is strict JSON (NaN and infinity become null).
A file that cannot be written (disk full, permissions) is written to a rescue folder under
the system's temporary directory instead, and the run fails naming both, so a computed
sample is never lost.
"""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from . import __version__, batch_invariant
from .cpu import malloc_settings
from .errors import NoiseAlignError
from .imaging import is_image_batch, save_grid, save_image
from .methods.base import StepEvent

TRACE_COLUMNS = ["step", "sigma", "queries", "nfe", "seconds", "reward_mean", "reward_std", "reward_max"]


def check_out(out: str | None) -> None:
    """Refuse an --out that cannot become a new run folder, before anything is computed."""
    if out is None:
        return
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise NoiseAlignError(f"output folder {path} already exists and is not empty; "
                              "choose another --out or remove it")
    parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise NoiseAlignError(f"cannot create output folder {path}: {parent} is a file; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise NoiseAlignError(f"cannot create output folder {path}: {parent} is not writable; choose another --out")


class RunFolder:
    """One run's folder, locked by this process while it writes."""

    def __init__(self, path: Path, lock: int):
        self.path, self._lock = path, lock
        self.rescued: list[str] = []   # files written to the rescue folder instead, with why

    @classmethod
    def create(cls, out: str | None, name: str, root: str = "runs") -> "RunFolder":
        """A new, empty run folder: --out, or runs/<time>-<name> when out is None."""
        if out is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for attempt in range(1000):
                path = Path(root) / (f"{stamp}-{name}" + ("" if attempt == 0 else f"-{attempt}"))
                try:
                    path.mkdir(parents=True)
                    return cls._locked(path, new=True)
                except FileExistsError:
                    continue
            raise NoiseAlignError(f"could not create a new run folder under {root}; pass --out")
        check_out(out)
        path = Path(out)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise NoiseAlignError(f"cannot create output folder {path} ({error.strerror}); choose another --out") from None
        return cls._locked(path, new=True)

    @classmethod
    def open(cls, path: str | Path) -> "RunFolder":
        """An existing run folder, to continue writing it (e.g. `noisealign ui --resume`)."""
        path = Path(path)
        if not path.is_dir():
            raise NoiseAlignError(f"{path} is not a run folder")
        return cls._locked(path, new=False)

    @classmethod
    def _locked(cls, path: Path, new: bool) -> "RunFolder":
        descriptor = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise NoiseAlignError(f"another noisealign process is writing to {path}; wait for it to end, "
                                  "or choose another folder") from None
        if new and any(path.iterdir()):   # another process created and finished it between our check and lock
            os.close(descriptor)
            raise NoiseAlignError(f"output folder {path} already exists and is not empty; "
                                  "choose another --out or remove it")
        return cls(path, descriptor)

    def close(self) -> None:
        """Release the lock (the process's exit does too)."""
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- writing, each file replaced atomically, rescued elsewhere if the folder refuses it --------

    def write(self, name: str, writer: Callable[[Path], None]) -> Path:
        """writer(tmp) then rename to `name`; on OSError, write to the rescue folder instead."""
        target = self.path / name
        tmp = target.with_name(f".{name}.tmp")
        try:
            writer(tmp)
            os.replace(tmp, target)
            return target
        except OSError as error:
            rescue = Path(tempfile.gettempdir()) / f"noisealign-rescue-{os.getpid()}" / self.path.name
            rescue.mkdir(parents=True, exist_ok=True)
            writer(rescue / name)
            self.rescued.append(f"{name} ({error.strerror or error}) -> {rescue / name}")
            return rescue / name

    def write_result(self, record: dict[str, Any]) -> None:
        """result.json, strict; it lists the files written to the rescue folder, if any."""
        if self.rescued:
            record["rescued"] = list(self.rescued)
        self.write("result.json", lambda path: path.write_text(
            json.dumps(strict_json(record), indent=2, allow_nan=False) + "\n"))

    def save_output(self, output: Tensor, stem: str) -> Path:
        """An image as PNG; a non-image output (e.g. a gmm point) as JSON numbers."""
        if is_image_batch(output):
            return self.write(f"{stem}.png", lambda path: save_image(output[0], path, format="PNG"))
        values = output.detach().double().cpu().tolist()
        return self.write(f"{stem}.json", lambda path: path.write_text(json.dumps(strict_json(values))))

    def save_noises(self, noises: dict[str, Tensor]) -> None:
        saved = {k: v.detach().cpu() for k, v in noises.items()}
        self.write("noise.pt", lambda path: torch.save(saved, path))

    def write_trace(self, trace: "Trace") -> None:
        self.write("trace.csv", trace.write)

    def save_comparison_grid(self, baselines: list[Tensor], aligned: list[Tensor]) -> None:
        """Baselines on the top row, aligned samples below (image outputs only)."""
        if is_image_batch(baselines[0]):
            rows = [[b[0] for b in baselines], [a[0] for a in aligned]]
            self.write("grid.png", lambda path: save_grid(rows, path, format="PNG"))

    def check_rescued(self) -> None:
        """NoiseAlignError naming where the files went, if any could not be written in the folder."""
        if self.rescued:
            raise NoiseAlignError(f"could not write into {self.path}: {'; '.join(self.rescued)}")


def strict_json(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, so json.dumps(allow_nan=False) holds."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def record_head(method: str, model: str, prompt: str, reward: str, seed: int, budget: int | None,
                config: dict[str, Any], status: str = "running") -> dict[str, Any]:
    """The keys every result.json starts with, for `generate` and `noisealign ui` alike."""
    return {"status": status, "method": method, "model": model, "prompt": prompt, "reward": reward, "seed": seed,
            "budget": budget, "config": config, "environment": environment()}


def environment() -> dict[str, Any]:
    """What bit-identical reruns depend on (docs/determinism.md): versions, the thread count and
    whether the CPU kernels were batch-invariant (noisealign.batch_invariant); and the malloc
    thresholds the CLI pinned (noisealign.cpu), which move time, not bits."""
    return {"noisealign": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "batch_invariant_kernels": batch_invariant.enabled(),
            "machine": platform.machine(), "malloc": malloc_settings()}


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
