"""The report's result tables, built from the complete cells of a sweep.

- summary: every reward, cost and the gain over the baseline, per method, optimized reward
  and budget (mean ± standard error over prompts x seeds);
- budgets: the optimized reward against the budget, one table per reward family (digit:1,
  digit:3 and digit:8 pool into `digit`), in the form of the README's comparison;
- cross-reward: Demon's Table 3: rows are method + optimized reward at the method's largest
  budget, columns every evaluation reward; the plain sampler's row first;
- failed: the cells that failed, with their error.

The plain sampler's numbers come from the cells' baselines, each (prompt, seed) counted once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .load import SweepData, family
from .stats import Stat, grouped, stat

PLAIN = "plain (baseline)"


@dataclass
class Table:
    """A table as every writer (HTML, Markdown, CSV) takes it. Cells are text, numbers, Stats or
    None; `marked` cells and `flagged` rows are highlighted."""

    key: str
    title: str
    note: str
    columns: list[str]
    rows: list[list[Any]]
    marked: set[tuple[int, int]] = field(default_factory=set)
    flagged: set[int] = field(default_factory=set)


def summary_table(data: SweepData) -> Table:
    evaluate = list(data.spec.evaluate)
    columns = ["method", "optimized", "budget", "cells", "reward queries", "NFE", "seconds", "final reward",
               "baseline reward", "gain", *(f"eval: {e}" for e in evaluate)]
    rows = []
    for (label, reward, budget), lines in by_method_reward_budget(data).items():
        rows.append([label, reward, budget, len(lines), _stat(lines, "reward_queries").mean,
                     _stat(lines, "nfe").mean, _stat(lines, "seconds"), _stat(lines, "final_reward"),
                     _stat(lines, "baseline_reward"), stat(gain(line) for line in lines),
                     *[stat(held_out(line, e) for line in lines) for e in evaluate]])
    return Table("summary", "Every reward per method and budget",
                 "mean ± standard error over prompts x seeds; final reward: the optimized reward of the output, "
                 "gain: final minus baseline reward of the same cell; eval: held-out rewards, scored outside "
                 "the budget", columns, rows)


def budget_tables(data: SweepData) -> list[Table]:
    """One table per reward family: rows method, columns budget, cells the optimized reward."""
    tables = []
    for name, rewards in grouped(data.spec.optimize, family).items():
        lines = [line for line in data.complete if line["reward"] in rewards]
        budgets = sorted({line["budget"] for line in lines})
        plain = plain_stat(lines, lambda line: line.get("baseline_reward"), per=("reward", "prompt", "seed"))
        rows = [[PLAIN, *[plain] * len(budgets)]]
        for label, own in grouped(lines, lambda line: line["label"]).items():
            by_budget = grouped(own, lambda line: line["budget"])
            rows.append([label, *[_stat(by_budget.get(b, []), "final_reward") for b in budgets]])
        tables.append(Table(f"budgets-{name}", f"{name}: optimized reward by budget",
                            f"mean ± standard error of the final reward over {', '.join(rewards)} x prompts x "
                            "seeds; columns: reward queries allowed (budget)", ["method", *map(str, budgets)], rows))
    return tables


def cross_reward_table(data: SweepData) -> Table | None:
    """Rows: method + optimized reward at the method's largest budget; columns: evaluation rewards."""
    evaluate = list(data.spec.evaluate)
    if not evaluate:
        return None
    rows = [[PLAIN, "", "", *[plain_stat(data.complete, lambda line: held_out(line, e, baseline=True),
                                         per=("prompt", "seed")) for e in evaluate]]]
    marked = set()
    largest = {label: max(line["budget"] for line in lines)
               for label, lines in grouped(data.complete, lambda line: line["label"]).items()}
    for (label, reward, budget), lines in by_method_reward_budget(data).items():
        if budget != largest[label]:
            continue
        rows.append([label, reward, budget, *[stat(held_out(line, e) for line in lines) for e in evaluate]])
        marked |= {(len(rows) - 1, 3 + i) for i, e in enumerate(evaluate) if e == reward}
    return Table("cross-reward", "Cross-reward table (held-out rewards of each optimized reward)",
                 "rows: a method aligned toward one reward, at its largest budget; columns: every evaluation "
                 "reward of its outputs (mean ± standard error); marked: the reward the row optimized",
                 ["method", "optimized", "budget", *evaluate], rows, marked=marked)


def failed_table(data: SweepData) -> Table | None:
    if not data.failed:
        return None
    rows = [[line["cell"], line.get("attempts"), line.get("error", "")] for line in data.failed]
    return Table("failed", f"Failed cells ({len(rows)})", "recorded after their last attempt; "
                 "rerunning the sweep does not retry them", ["cell", "attempts", "error"], rows)


def plain_stat(lines: list[dict[str, Any]], value: Callable[[dict[str, Any]], float | None],
               per: tuple[str, ...]) -> Stat:
    """A baseline number over distinct cells (one per `per` key): the plain sampler's own row."""
    firsts = grouped(lines, lambda line: tuple(line[k] for k in per))
    return stat(value(group[0]) for group in firsts.values())


def by_method_reward_budget(data: SweepData) -> dict[tuple[str, str, int], list[dict[str, Any]]]:
    """Complete lines by (label, optimized reward, budget), in the spec's order, budgets ascending."""
    groups = grouped(data.complete, lambda line: (line["label"], line["reward"], line["budget"]))
    order = {label: i for i, label in enumerate(data.labels())}
    rewards = {reward: i for i, reward in enumerate(data.spec.optimize)}
    return dict(sorted(groups.items(), key=lambda item: (order[item[0][0]], rewards[item[0][1]], item[0][2])))


def _stat(lines: list[dict[str, Any]], key: str) -> Stat:
    return stat(line.get(key) for line in lines)


def gain(line: dict[str, Any]) -> float | None:
    """The cell's final reward minus its baseline's (the optimized reward, paired by prompt and seed)."""
    final, base = line.get("final_reward"), line.get("baseline_reward")
    return None if final is None or base is None else final - base


def held_out(line: dict[str, Any], reward: str, baseline: bool = False) -> float | None:
    """The held-out reward `reward` of a cell's output (or of its baseline)."""
    return (line.get("baseline_evaluation" if baseline else "evaluation") or {}).get(reward)




def cell_text(value: Any) -> str:
    """A table cell as text: a Stat as `mean ± se`, a float to 4 significant digits, None as a dash."""
    if isinstance(value, Stat):
        return value.text()
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
