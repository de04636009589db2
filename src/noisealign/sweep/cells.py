"""The cells of a sweep: every (method, budget, optimized reward, prompt, seed), in a fixed order.

A cell's id names its run folder (cells/<id>) and its line in results.jsonl. It is built from
the method's label and the positions of the reward and the prompt in the resolved spec, so it is
short, safe as a folder name, and the same in every run of the same spec.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .spec import SweepSpec


@dataclass(frozen=True)
class Cell:
    """One run of one method: what `generate` would be asked to do, plus where it sits in the sweep."""

    label: str
    method: str
    budget: int
    optimize: str
    optimize_index: int
    prompt: str
    prompt_index: int
    seed: int

    @property
    def id(self) -> str:
        return f"{self.label}-b{self.budget}-r{self.optimize_index}-p{self.prompt_index}-s{self.seed}"


def cells_of(spec: SweepSpec) -> list[Cell]:
    """Every cell of the sweep: methods, then budgets, rewards, prompts and seeds, as the spec lists them."""
    return [Cell(method.label, method.method, budget, reward, r, prompt, p, seed)
            for method in spec.methods
            for budget in method.budgets
            for r, reward in enumerate(spec.optimize)
            for p, prompt in enumerate(spec.prompts)
            for seed in spec.seeds]


def seed_groups(cells: list[Cell], size: int) -> list[list[Cell]]:
    """The cells in order, consecutive cells that differ only in their seed grouped `size` at a
    time (a group runs as one seed batch; the last of a run of seeds may be smaller)."""
    groups: list[list[Cell]] = []
    for cell in cells:
        last = groups[-1] if groups else None
        if last is not None and len(last) < size and replace(last[0], seed=cell.seed) == cell:
            last.append(cell)
        else:
            groups.append([cell])
    return groups
