"""Several seeds of one method as one batch: `align_batch`, the batched `align`.

A method with a batch path (`run_batch`: dno, reno, guidance) runs all seeds' samples as the
rows of one batch; every other method runs each seed's `run` in lockstep with the others
(`lockstep`), its network calls and reward queries batched across the seeds. Either way a GPU
is busy with B seeds' rows instead of one's. Each seed keeps its own ledger, best-so-far and
observer, and gets the Outcome `align` would give it; `seconds` is the batch's wall time,
shared. The outcomes equal those of `align` seed by seed, bit for bit, where the model's and
the reward's kernels compute each row alike whatever the batch size (the gmm; on CPU,
convolutions such as the digits model's may differ in the last bits).
"""

from __future__ import annotations

import threading
from functools import partial
from typing import Sequence

import torch

from .align import Outcome, run_contexts
from .budget import Ledger
from .lockstep import Lockstep, routed_problem, serialized
from .methods.base import Method, Observer, Problem, RunContext


def align_batch(problem: Problem, method: Method, seeds: Sequence[int], budget: int | None,
                observers: Sequence[Observer | None] | None = None) -> list[Outcome]:
    """`align(problem, method, seed, budget, observer)` for every seed, the seeds as one batch.

    Raises NoiseAlignError before anything runs if the method cannot run (`Method.plan`);
    RunInterrupted / RunFailed with each seed's kept outcome in `outcomes` if it stops.
    """
    method = method.plan(problem, budget)
    observers = list(observers) if observers is not None else [None] * len(seeds)
    if len(observers) != len(seeds):
        raise ValueError(f"{len(seeds)} seeds but {len(observers)} observers")
    if hasattr(method, "run_batch"):
        contexts = [RunContext(problem, seed, Ledger(query_limit=budget), observer)
                    for seed, observer in zip(seeds, observers)]
        return run_contexts(problem, contexts, lambda: method.run_batch(contexts))
    lockstep, lock = Lockstep(), threading.Lock()
    seen_by_seeds = routed_problem(problem, lockstep)
    contexts = [RunContext(seen_by_seeds, seed, Ledger(query_limit=budget), serialized(observer, lock))
                for seed, observer in zip(seeds, observers)]
    return run_contexts(problem, contexts,
                        lambda: lockstep.run([partial(method.run, context) for context in contexts]))


def seed_batch_size(requested: int | None, seeds: int, device: torch.device | str) -> int:
    """K, the seeds run as one batch: the requested number (at most `seeds`), else all of them on
    an accelerator, which one small sample leaves mostly idle, and one on CPU. There a batch is
    faster too (digits, 4 seeds: 1.8x for dno, 1.9x for guidance), but a convolution may round a
    row differently at another batch size, so a grid cell would no longer be the run of its seed
    alone bit for bit; the default keeps it so, and --seed-batch trades it for speed."""
    if requested is not None:
        return max(1, min(requested, seeds))
    return 1 if torch.device(device).type == "cpu" else seeds


def seed_chunks(seeds: Sequence[int], size: int) -> list[list[int]]:
    """The seeds in consecutive batches of `size` (the last may be smaller)."""
    return [list(seeds[i:i + size]) for i in range(0, len(seeds), size)]
