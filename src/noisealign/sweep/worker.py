"""A sweep's worker: the model and every reward loaded once, then one `generate` run per cell.

Each cell runs through the run contract (`generate.prepare` / `generate.execute`) into a
scratch folder of the worker's own; the worker hands back the folder's files and result.json's
content with the held-out rewards, scored outside the budget on the cell's final output and on
its baseline. Only the driver writes into the sweep folder, so a worker on another machine
needs no shared disk. A cell that fails becomes a failed CellResult, never an exception: the
sweep goes on. A stop (Ctrl-C, SIGTERM) is not caught: it ends the sweep.

Cells that differ only in their seed can run as one seed batch (`run_group`, `--seed-batch`):
each cell's run is the same, in a thread of its own, its network calls and reward queries
batched with the others' (`lockstep`); its result is the one it gets alone, bit for bit where
a batched call computes each row alike. The cells of a method that batches its seeds itself
(dno, reno, guidance: `run_batch`, which back-propagates through one graph for all seeds) meet
at the method instead: the main thread runs one `align_batch` of their seeds and hands each
cell its outcome (`Lockstep.gather`).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..align import COMPLETE, FAILED, Outcome, RunFailed, evaluate
from ..batch import align_batch
from ..errors import NoiseAlignError
from ..generate import PreparedRun, RunRequest, execute, prepare
from ..lockstep import Lockstep, routed_problem, routed_reward
from ..methods.base import Observer, Problem
from ..models.registry import load_model
from ..rewards.hub import first_line
from ..rewards.registry import parse_reward, reward_terms
from .cells import Cell
from .spec import SweepSpec


@dataclass
class CellResult:
    """One cell as a worker saw it: status, result.json's content (None if the run never started),
    the held-out rewards of its output and of its baseline, the error, the run folder's files."""

    status: str
    record: dict[str, Any] | None
    evaluation: dict[str, float] | None
    baseline_evaluation: dict[str, float] | None
    error: str | None
    files: dict[str, bytes]

    @classmethod
    def lost(cls, error: str) -> "CellResult":
        """A cell whose worker died or could not answer: nothing but the error."""
        return cls(FAILED, None, None, None, error, {})


class Worker:
    """Holds the loaded model and rewards; runs cells one at a time."""

    def __init__(self, spec: SweepSpec, threads: int):
        torch.set_num_threads(threads)
        self.spec = spec
        self.model = load_model(spec.model, **spec.model_options)
        self.rewards = {reward: parse_reward(reward) for reward in spec.reward_specs}
        self._check()

    def _check(self) -> None:
        """Refuse, before any cell runs, what no cell could run: a prompt the model cannot take, a
        method that cannot run at one of its budgets or on one of the optimized rewards."""
        for prompt in self.spec.prompts:
            self.model.encode_prompt(prompt)
        for method in self.spec.methods:
            for budget in method.budgets:
                for r, reward in enumerate(self.spec.optimize):
                    self._prepare(Cell(method.label, method.method, budget, reward, r, self.spec.prompts[0], 0,
                                       self.spec.seeds[0]), out=None)

    def _prepare(self, cell: Cell, out: Path | None) -> PreparedRun:
        spec = self.spec
        request = RunRequest(model=spec.model, method=cell.method, method_config=spec.method(cell.label).config,
                             reward=cell.optimize, prompt=cell.prompt, negative_prompt=spec.negative_prompt,
                             guidance=spec.guidance, budget=cell.budget, seed=cell.seed,
                             out=None if out is None else str(out), model_options=spec.model_options)
        return prepare(request, reward=self.rewards[cell.optimize], model=self.model)

    def run_group(self, cells: list[Cell]) -> list[CellResult]:
        """Cells that differ only in their seed, as one seed batch: each cell's run in lockstep
        with the others (`lockstep`), so that every network call and reward query, held-out
        scoring included, carries all their rows. Each cell's result is the one `run` gives."""
        if len(cells) == 1 or self._logs_into_run_folders(cells[0]):
            return [self.run(cell) for cell in cells]
        lockstep = Lockstep()
        return lockstep.run([partial(self.run, cell, lockstep) for cell in cells])

    def _logs_into_run_folders(self, cell: Cell) -> bool:
        """Whether a reward of the cell writes into its run folder (the VLM judge's request log:
        one folder at a time, so such cells run one after another)."""
        rewards = [self.rewards[cell.optimize], *(self.rewards[name] for name in self.spec.evaluate)]
        return any(hasattr(term, "attach_run_dir") for reward in rewards for term in reward_terms(reward))

    def run(self, cell: Cell, lockstep: Lockstep | None = None) -> CellResult:
        """Run one cell into a scratch folder and hand back what it wrote (its calls through
        `lockstep` when it runs in a seed batch)."""
        scratch = Path(tempfile.mkdtemp(prefix="noisealign-cell-"))
        folder = scratch / cell.id
        record = evaluation = baseline_evaluation = None
        try:
            try:
                prepared = self._prepare(cell, folder)
                report = execute(prepared if lockstep is None else in_lockstep(prepared, lockstep))
                record, seed = report.record, report.seeds[0]
                evaluation = self._held_out(cell, seed.aligned.result.output, lockstep)
                baseline_evaluation = self._held_out(cell, seed.baseline.result.output, lockstep)
                status, error = COMPLETE, None
            except RunFailed as failure:
                record = failure.report.record if failure.report is not None else None
                status, error = FAILED, str(failure)
            except NoiseAlignError as failure:   # a held-out reward that failed, or a cell that cannot run
                status, error = FAILED, str(failure)
            except Exception as failure:  # a bug or an exhausted device: this cell fails, the sweep goes on
                status, error = FAILED, f"{type(failure).__name__}: {first_line(failure)}"
            if status == FAILED:
                evaluation = baseline_evaluation = None
            return CellResult(status, record, evaluation, baseline_evaluation, error, _files(folder))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _held_out(self, cell: Cell, output: Tensor, lockstep: Lockstep | None) -> dict[str, float]:
        """Every evaluation reward of `output`, scored outside the budget."""
        def scorer(reward: str):
            return self.rewards[reward] if lockstep is None else routed_reward(self.rewards[reward], lockstep)
        return {reward: float(evaluate(Problem(self.model, scorer(reward), cell.prompt), output)[0])
                for reward in self.spec.evaluate}


def in_lockstep(prepared: PreparedRun, lockstep: Lockstep) -> PreparedRun:
    """The cell's run as part of its seed batch: its network calls and reward queries go through
    `lockstep`, and a method that runs seed batches itself (`run_batch`) shares one
    `align_batch` with the batch's other cells."""
    aligner = partial(_aligned_together, lockstep) if hasattr(prepared.method, "run_batch") else None
    return replace(prepared, problem=routed_problem(prepared.problem, lockstep), aligner=aligner)


def _aligned_together(lockstep: Lockstep, run: PreparedRun, seeds: list[int],
                      observers: list[Observer]) -> list[Outcome]:
    """A cell's method run as part of one `align_batch` of its seed batch's cells."""
    return lockstep.gather("align", (run, seeds, observers), _align_cells)


def _align_cells(items: list[tuple[PreparedRun, list[int], list[Observer]]]) -> list[list[Outcome] | Exception]:
    """One `align_batch` of the cells' seeds (the cells differ only in seed: the first's problem
    and method serve all); each cell's outcomes, or its own RunFailed carrying its outcome. Any
    other error is every cell's (a stop is not caught: it ends the sweep)."""
    first = items[0][0]
    seeds = [seed for _, cell_seeds, _ in items for seed in cell_seeds]
    observers = [observer for _, _, cell_observers in items for observer in cell_observers]
    try:
        return _per_cell(align_batch(first.problem, first.method, seeds, first.request.budget, observers), items)
    except RunFailed as failure:
        return [RunFailed(str(failure), *kept) for kept in _per_cell(failure.outcomes, items)]
    except Exception as error:  # noqa: BLE001 (a bug or an exhausted device: each cell fails with it)
        return [error] * len(items)


def _per_cell(outcomes: list, items: list[tuple[PreparedRun, list[int], list[Observer]]]) -> list[list]:
    """The seed-ordered `outcomes` cut into each cell's (None for any a stopped batch lacks)."""
    given = iter(outcomes)
    return [[next(given, None) for _ in cell_seeds] for _, cell_seeds, _ in items]


def _files(folder: Path) -> dict[str, bytes]:
    """The run folder's files by relative path (none if it was never created)."""
    if not folder.is_dir():
        return {}
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and not path.name.startswith(".")}
