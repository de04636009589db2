"""`noisealign report`: its flags and the call into build.py."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..options import integer


def add_parser(commands: Any) -> None:
    report = commands.add_parser(
        "report", help="tables, plots, diversity, hacking flags and image grids of a sweep (report.html)",
        description="Read a sweep folder (finished, running or stopped) and write report.html (self-contained), "
                    "report.md and tables/*.csv into it (or --out); rerunning replaces these files.")
    report.add_argument("sweep_dir", help="the --out folder of `noisealign sweep`")
    report.add_argument("--out", help="write the report here instead of into the sweep folder")
    report.add_argument("--diversity", default="pixel",
                        help="pixel (default), clip[:SOURCE] or dino[:SOURCE]: the distance between seeds' outputs "
                             "(SOURCE: a hub id in the Hugging Face cache or a local folder)")
    report.add_argument("--grid-prompts", type=integer, default=4, help="prompts with an image grid (default 4)")
    report.add_argument("--grid-seeds", type=integer, default=8, help="seeds per image grid (default 8)")
    report.add_argument("--offline", action="store_true", help="forbid every download (also NOISEALIGN_OFFLINE=1)")


def main(args: argparse.Namespace) -> int:
    from .build import write_report

    written = write_report(Path(args.sweep_dir), None if args.out is None else Path(args.out), args.diversity,
                           args.grid_prompts, args.grid_seeds)
    print(f"report: {written[0]} (and {written[1].name}, {len(written) - 2} CSV tables in {written[2].parent})")
    return 0
