"""The report's plots as SVG text: the optimized reward against reward queries, NFE and seconds.

One figure per reward family (as the budget tables pool them), one line per method through its
budgets, each point the mean ± standard error over cells (seconds get horizontal error bars
too); the plain sampler is the dashed line with its band. Drawn with matplotlib's object API
(no pyplot, no global state), text kept as SVG text so the page can be searched.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from ..errors import NoiseAlignError
from .load import SweepData, family
from .stats import grouped, stat
from .tables import PLAIN, plain_stat

AXES = (("reward_queries", "reward queries"), ("nfe", "NFE (denoiser evaluations)"), ("seconds", "seconds"))


@dataclass(frozen=True)
class Plot:
    key: str
    title: str
    svg: str


def reward_plots(data: SweepData) -> list[Plot]:
    """One figure per reward family: the optimized reward against each cost."""
    try:
        from matplotlib import rc_context
        from matplotlib.figure import Figure
    except ImportError:
        raise NoiseAlignError("the report's plots need matplotlib: pip install 'noisealign[report]'") from None
    plots = []
    for name, rewards in grouped(data.spec.optimize, family).items():
        lines = [line for line in data.complete if line["reward"] in rewards]
        if not lines:
            continue
        with rc_context({"svg.fonttype": "none", "svg.hashsalt": f"noisealign-{name}", "font.size": 9}):
            figure = Figure(figsize=(11, 3.4), layout="constrained")
            for axes, (key, label) in zip(figure.subplots(1, len(AXES)), AXES):
                _draw(axes, lines, key, label, name)
            buffer = io.StringIO()
            figure.savefig(buffer, format="svg", metadata={"Date": None})
        svg = buffer.getvalue()
        plots.append(Plot(f"plot-{name}", f"{name}: optimized reward against cost", svg[svg.index("<svg"):]))
    return plots


def _draw(axes, lines: list[dict], key: str, label: str, name: str) -> None:
    plain = plain_stat(lines, lambda line: line.get("baseline_reward"), per=("reward", "prompt", "seed"))
    if plain.mean is not None:
        axes.axhline(plain.mean, color="0.4", linestyle="--", linewidth=1, label=PLAIN)
        if plain.se is not None:
            axes.axhspan(plain.mean - plain.se, plain.mean + plain.se, color="0.85", zorder=0)
    xs_all = []
    for method, own in grouped(lines, lambda line: line["label"]).items():
        points = [(stat(l.get(key) for l in group), stat(l.get("final_reward") for l in group))
                  for _, group in sorted(grouped(own, lambda line: line["budget"]).items())]
        points = [(x, y) for x, y in points if x.mean is not None and y.mean is not None]
        xs_all += [x.mean for x, _ in points]
        axes.errorbar([x.mean for x, _ in points], [y.mean for _, y in points],
                      yerr=[y.se or 0.0 for _, y in points],
                      xerr=[x.se or 0.0 for x, _ in points] if key == "seconds" else None,
                      marker="o", markersize=4, capsize=3, linewidth=1.4, label=method)
    if xs_all and min(xs_all) > 0 and max(xs_all) >= 8 * min(xs_all):
        axes.set_xscale("log", base=2 if key == "reward_queries" else 10)
    axes.set_xlabel(label)
    axes.set_ylabel(f"{name} (optimized)")
    axes.grid(True, alpha=0.3)
    if key == AXES[0][0]:
        axes.legend(fontsize=8)
