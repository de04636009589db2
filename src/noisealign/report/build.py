"""`noisealign report`: read a sweep folder, write report.html, report.md and tables/*.csv.

The report is derived from results.jsonl and the run folders, so writing it again (after a
resumed sweep added cells) replaces the previous report files, each atomically; nothing else in
the folder is touched.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import NoiseAlignError
from .content import gather
from .csv_tables import render_csv
from .diversity import diversity_measure
from .html import render_html
from .load import load_sweep
from .markdown import render_markdown

TABLES_FOLDER = "tables"


def write_report(sweep: Path, out: Path | None = None, diversity: str = "pixel", grid_prompts: int = 4,
                 grid_seeds: int = 8) -> list[Path]:
    """Write the report of the sweep folder `sweep` into `out` (default: the sweep folder); the files."""
    if grid_prompts < 0 or grid_seeds < 1:
        raise NoiseAlignError(f"--grid-prompts must be 0 or more and --grid-seeds at least 1, "
                              f"got {grid_prompts} and {grid_seeds}")
    data = load_sweep(sweep)
    content = gather(data, diversity_measure(diversity), grid_prompts, grid_seeds)
    out = sweep if out is None else out
    try:
        (out / TABLES_FOLDER).mkdir(parents=True, exist_ok=True)
        written = [_write(out / "report.html", render_html(content)),
                   _write(out / "report.md", render_markdown(content, out))]
        written += [_write(out / TABLES_FOLDER / f"{table.key}.csv", render_csv(table)) for table in content.tables]
    except OSError as error:
        raise NoiseAlignError(f"cannot write the report into {out} ({error.strerror}); choose another --out") from None
    return written


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
