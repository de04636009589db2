"""The report's tables as CSV files, unrounded: a mean ± standard error is two columns."""

from __future__ import annotations

import csv
import io

from .stats import Stat
from .tables import Table


def render_csv(table: Table) -> str:
    stats = {c for c, _ in enumerate(table.columns) if any(isinstance(row[c], Stat) for row in table.rows)}
    header = [name for c, column in enumerate(table.columns)
              for name in ((f"{column} mean", f"{column} se") if c in stats else (column,))]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        writer.writerow([value for c, cell in enumerate(row)
                         for value in (_stat_values(cell) if c in stats else (_plain(cell),))])
    return buffer.getvalue()


def _stat_values(cell: object) -> tuple[object, object]:
    if isinstance(cell, Stat):
        return _plain(cell.mean), _plain(cell.se)
    return _plain(cell), ""


def _plain(value: object) -> object:
    return "" if value is None else value
