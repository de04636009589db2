"""Means with standard errors, and grouping rows by a key, for every table of the report.

The standard error of a mean of n values is the sample standard deviation (n - 1 in the
denominator) over sqrt(n); with one value it is undefined (None), never 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Stat:
    """The mean of n values and its standard error (None when n < 2; mean None when n = 0)."""

    mean: float | None
    se: float | None
    n: int

    def text(self) -> str:
        """As the tables show it: `mean ± se` to 4 and 2 significant digits."""
        if self.mean is None:
            return "—"
        return f"{self.mean:.4g}" if self.se is None else f"{self.mean:.4g} ± {self.se:.2g}"


def stat(values: Iterable[float | None]) -> Stat:
    """Mean and standard error of the values that are numbers (None, a missing value, is skipped)."""
    numbers = [float(v) for v in values if v is not None]
    n = len(numbers)
    if n == 0:
        return Stat(None, None, 0)
    mean = math.fsum(numbers) / n
    if n == 1:
        return Stat(mean, None, 1)
    variance = math.fsum((v - mean) ** 2 for v in numbers) / (n - 1)
    return Stat(mean, math.sqrt(variance / n), n)


def grouped(rows: Iterable[T], key: Callable[[T], Hashable]) -> dict[Any, list[T]]:
    """Rows by key, keys in the order they first appear."""
    groups: dict[Any, list[T]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups
