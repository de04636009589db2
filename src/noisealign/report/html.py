"""report.html: one self-contained page (inline CSS, inline SVG plots, base64 PNG images).

Every number cell carries its unrounded value (`data-mean`, `data-se`) beside the rounded
text, so a reader can copy it exactly and a test can check it against results.jsonl.
"""

from __future__ import annotations

from html import escape
from typing import Any

from .content import ReportContent
from .grids import Grid, png_data_uri
from .stats import Stat
from .tables import Table, cell_text

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1200px; padding: 0 16px; color: #1d1d1f; }
h1 { font-size: 22px; margin: 0 0 8px; } h2 { font-size: 17px; margin: 28px 0 6px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 8px 0 12px; }
dl.facts dt { color: #666; } dl.facts dd { margin: 0; }
nav a { margin-right: 12px; }
p.note { color: #555; margin: 2px 0 8px; max-width: 900px; }
.scroll { overflow-x: auto; }
table.data { border-collapse: collapse; font-variant-numeric: tabular-nums; }
table.data th, table.data td { border-bottom: 1px solid #ddd; padding: 3px 9px; text-align: right; white-space: nowrap; }
table.data th { background: #f3f3f5; position: sticky; top: 0; white-space: normal; vertical-align: bottom; }
table.data td:first-child, table.data th:first-child { text-align: left; }
table.data td.marked { background: #e6f0ff; font-weight: 600; }
table.data tr.flagged td { background: #fde8e8; }
figure.plot { margin: 8px 0 16px; } figure.plot svg { max-width: 100%; height: auto; }
table.grid td, table.grid th { padding: 2px 4px; text-align: center; font-weight: normal; }
table.grid th.row { text-align: right; max-width: 220px; white-space: normal; }
table.grid img { width: 96px; height: 96px; image-rendering: pixelated; display: block; }
"""


def render_html(content: ReportContent) -> str:
    sections = [_section(table.key, table.title, table.note, _table(table)) for table in content.tables]
    sections += [_section(plot.key, plot.title, "mean ± standard error over cells; dashed: the plain sampler",
                          f'<figure class="plot">{plot.svg}</figure>') for plot in content.plots]
    if content.grids:
        grids = "".join(_grid(grid) for grid in content.grids)
        sections.append(_section("grids", "Image grids", "the plain sample of each seed above each method's output "
                                 "for the same seed (each method at its largest budget)", grids))
    facts = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in content.facts)
    nav = " ".join(f'<a href="#section-{key}">{escape(title)}</a>' for key, title in _titles(content))
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>noisealign sweep report: {escape(str(content.data.path))}</title><style>{STYLE}</style></head>\n"
            f'<body><header><h1>Sweep report</h1><dl class="facts">{facts}</dl><nav>{nav}</nav></header>\n'
            + "\n".join(sections) + "\n</body></html>\n")


def _titles(content: ReportContent) -> list[tuple[str, str]]:
    titles = [(t.key, t.title) for t in content.tables] + [(p.key, p.title) for p in content.plots]
    return titles + ([("grids", "Image grids")] if content.grids else [])


def _section(key: str, title: str, note: str, body: str) -> str:
    return (f'<section id="section-{escape(key)}"><h2>{escape(title)}</h2><p class="note">{escape(note)}</p>'
            f"{body}</section>")


def _table(table: Table) -> str:
    head = "".join(f"<th>{escape(column)}</th>" for column in table.columns)
    rows = []
    for r, row in enumerate(table.rows):
        cells = "".join(_cell(value, table.columns[c], (r, c) in table.marked) for c, value in enumerate(row))
        flagged = ' class="flagged"' if r in table.flagged else ""
        rows.append(f"<tr{flagged}>{cells}</tr>")
    return (f'<div class="scroll"><table class="data" id="{escape(table.key)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _cell(value: Any, column: str, marked: bool) -> str:
    attributes = f' data-column="{escape(column)}"'
    if isinstance(value, Stat) and value.mean is not None:
        attributes += f' data-mean="{value.mean!r}" data-n="{value.n}"'
        if value.se is not None:
            attributes += f' data-se="{value.se!r}"'
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        attributes += f' data-value="{value!r}"'
    if marked:
        attributes += ' class="marked"'
    return f"<td{attributes}>{escape(cell_text(value))}</td>"


def _grid(grid: Grid) -> str:
    head = "".join(f"<th>seed {seed}</th>" for seed in grid.seeds)
    rows = []
    for row in grid.rows:
        images = "".join(f'<td><img class="grid-image" alt="{escape(row.label)}, seed {seed}" '
                         f'src="{png_data_uri(path)}"></td>' if path is not None else "<td>—</td>"
                         for seed, path in zip(grid.seeds, row.images))
        rows.append(f'<tr><th class="row">{escape(row.label)}</th>{images}</tr>')
    return (f'<h3>prompt "{escape(grid.prompt)}"</h3><table class="grid" data-prompt="{escape(grid.prompt)}">'
            f"<thead><tr><th></th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
