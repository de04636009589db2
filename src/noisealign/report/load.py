"""A sweep folder as the report reads it: the resolved spec and the lines of results.jsonl.

The report never writes into cells/ nor results.jsonl, and reads a sweep that is still running
or was stopped: it shows the cells finished so far (a torn last line is skipped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..align import COMPLETE
from ..errors import NoiseAlignError
from ..sweep.cells import cells_of
from ..sweep.results import read_results, read_spec
from ..sweep.spec import SweepSpec

_SINGLE_TERM = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)(?::('[^']*'|\"[^\"]*\"|[A-Za-z0-9_.,/=]*))?\s*")


@dataclass
class SweepData:
    path: Path
    spec: SweepSpec
    lines: list[dict[str, Any]]

    @property
    def complete(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("status") == COMPLETE]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("status") != COMPLETE]

    @property
    def total_cells(self) -> int:
        return len(cells_of(self.spec))

    def labels(self) -> list[str]:
        return [method.label for method in self.spec.methods]


def load_sweep(path: Path) -> SweepData:
    """The sweep folder at `path`; a folder without finished cells is one error line."""
    try:
        spec = SweepSpec.from_dict(read_spec(path))
    except (KeyError, TypeError, ValueError) as error:
        raise NoiseAlignError(f"{path / 'sweep.json'} is not a sweep spec this version of noisealign wrote "
                              f"({type(error).__name__}: {error})") from None
    lines = read_results(path)
    if not lines:
        raise NoiseAlignError(f"{path} has no finished cell yet; run (or resume) `noisealign sweep ... --out {path}`")
    return SweepData(path, spec, lines)


def family(reward: str) -> str:
    """The name of a single-term reward spec (`digit` for digit:3), so that a budget table can pool
    the targets of one reward; a weighted sum is its own family."""
    match = _SINGLE_TERM.fullmatch(reward)
    return match.group(1) if match else reward
