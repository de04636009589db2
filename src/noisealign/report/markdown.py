"""report.md: the same tables as Markdown, and the image grids as links to the run folders' PNGs."""

from __future__ import annotations

import os
from pathlib import Path

from .content import ReportContent
from .grids import Grid
from .tables import Table, cell_text


def render_markdown(content: ReportContent, report_folder: Path) -> str:
    """Markdown whose image links are relative to `report_folder`, where report.md is written."""
    parts = ["# Sweep report", "", *[f"- {key}: {value}" for key, value in content.facts], ""]
    for table in content.tables:
        parts += [f"## {table.title}", "", table.note, "", _table(table), ""]
    if content.plots:
        parts += ["Plots (reward against queries, NFE and seconds): see report.html.", ""]
    for grid in content.grids:
        parts += [_grid(grid, report_folder), ""]
    return "\n".join(parts)


def _table(table: Table) -> str:
    lines = [_row(table.columns), _row(["---"] * len(table.columns))]
    for r, row in enumerate(table.rows):
        cells = [cell_text(value) for value in row]
        cells = [f"**{text}**" if (r, c) in table.marked or r in table.flagged else text
                 for c, text in enumerate(cells)]
        lines.append(_row(cells))
    return "\n".join(lines)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"


def _grid(grid: Grid, report_folder: Path) -> str:
    lines = [f'## Images, prompt "{grid.prompt}"', "", _row(["", *[f"seed {s}" for s in grid.seeds]]),
             _row(["---"] * (len(grid.seeds) + 1))]
    for row in grid.rows:
        links = [f"![seed {seed}]({Path(os.path.relpath(path, report_folder)).as_posix()})" if path else "—"
                 for seed, path in zip(grid.seeds, row.images)]
        lines.append(_row([row.label, *links]))
    return "\n".join(lines)
