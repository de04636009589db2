"""What a report shows, gathered once from a sweep folder, for the HTML, Markdown and CSV writers."""

from __future__ import annotations

from dataclasses import dataclass

from .. import __version__
from .diversity import DiversityMeasure, diversity_table
from .grids import Grid, image_grids
from .hacking import hacking_table
from .load import SweepData
from .plots import Plot, reward_plots
from .tables import Table, budget_tables, cross_reward_table, failed_table, summary_table


@dataclass
class ReportContent:
    data: SweepData
    facts: list[tuple[str, str]]
    tables: list[Table]
    plots: list[Plot]
    grids: list[Grid]


def gather(data: SweepData, measure: DiversityMeasure, grid_prompts: int, grid_seeds: int) -> ReportContent:
    """Every table, plot and grid of the report, in the order it shows them."""
    tables = [summary_table(data), *budget_tables(data), cross_reward_table(data), hacking_table(data),
              diversity_table(data, measure), failed_table(data)]
    return ReportContent(data, _facts(data), [t for t in tables if t is not None], reward_plots(data),
                         image_grids(data, grid_prompts, grid_seeds))


def _facts(data: SweepData) -> list[tuple[str, str]]:
    spec = data.spec
    methods = "; ".join(f"{m.label} ({m.method}, budgets {', '.join(map(str, m.budgets))})" for m in spec.methods)
    options = ", ".join(f"{k}={v}" for k, v in spec.model_options.items())
    return [("sweep", str(data.path)),
            ("cells", f"{len(data.complete)} complete, {len(data.failed)} failed, {data.total_cells} in the sweep"),
            ("model", spec.model + (f" ({options})" if options else "")),
            ("prompts", f"{len(spec.prompts)} from {spec.prompt_set}"),
            ("seeds", ", ".join(map(str, spec.seeds))),
            ("optimized", ", ".join(spec.optimize)),
            ("held out", ", ".join(spec.evaluate) or "none"),
            ("methods", methods),
            ("noisealign", __version__)]
