"""Several seeds of one method as one batch: `align_batch`, the batched `align`.

A method with a batch path (`run_batch`: dno, reno, guidance) runs all seeds' samples as the
rows of one batch; every other method runs each seed's `run` in lockstep with the others
(`lockstep`), its network calls and reward queries batched across the seeds. Either way a GPU
is busy with B seeds' rows instead of one's. Each seed keeps its own ledger, best-so-far and
observer, and gets the Outcome `align` would give it; `seconds` is the batch's wall time,
shared. The outcomes equal those of `align` seed by seed, bit for bit, where the model's and
the reward's kernels compute each row alike whatever the batch size: the gmm, and every CPU
model under batch-invariant kernels (noisealign.batch_invariant); otherwise on CPU a
convolution or a matrix product may round a row differently in the last bits.

Memory: a batch-path run that runs out of accelerator memory before any seed has observed a
step runs again as two halves, each on fresh contexts, down to one seed (whose failure is the
run's); lockstep halves the seeds of the call that failed (`Lockstep.serve`). Either way the
default of all seeds at once on a GPU cannot fail where one seed at a time fits. A batch-path
run that fails after its observers saw a step (a trace already written) fails as it is.
"""

from __future__ import annotations

import sys
import threading
from functools import partial
from typing import Sequence

import torch

from .align import Outcome, RunFailed, RunInterrupted, run_contexts
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
        return _run_batch(problem, method, list(seeds), budget, observers)
    lockstep, lock = Lockstep(), threading.Lock()
    seen_by_seeds = routed_problem(problem, lockstep)
    contexts = [RunContext(seen_by_seeds, seed, Ledger(query_limit=budget), serialized(observer, lock))
                for seed, observer in zip(seeds, observers)]
    return run_contexts(problem, contexts,
                        lambda: lockstep.run([partial(method.run, context) for context in contexts]))


def _run_batch(problem: Problem, method: Method, seeds: list[int], budget: int | None,
               observers: list[Observer | None]) -> list[Outcome]:
    """The seeds through `method.run_batch`, in halves while a batch runs out of accelerator memory
    before any of its seeds observed a step (module docstring)."""
    watched = [_Watched(observer) for observer in observers]
    contexts = [RunContext(problem, seed, Ledger(query_limit=budget), watch)
                for seed, watch in zip(seeds, watched)]
    try:
        return run_contexts(problem, contexts, partial(method.run_batch, contexts))
    except torch.OutOfMemoryError:
        if len(seeds) == 1 or any(watch.seen for watch in watched):
            raise
    del contexts, watched       # out of the except block: nothing references the failed batch's tensors
    half = (len(seeds) + 1) // 2
    print(f"out of memory with {len(seeds)} seeds in one batch: running {half} and {len(seeds) - half} "
          "at a time", file=sys.stderr)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    first = _run_batch(problem, method, seeds[:half], budget, observers[:half])
    try:
        return first + _run_batch(problem, method, seeds[half:], budget, observers[half:])
    except (RunInterrupted, RunFailed) as stop:
        stop.outcomes = first + stop.outcomes
        stop.outcome = stop.outcomes[0]
        raise


class _Watched:
    """An observer that remembers whether it was called (None: observes nothing, still remembers)."""

    def __init__(self, observer: Observer | None):
        self.observer, self.seen = observer, False

    def __call__(self, event) -> None:
        self.seen = True
        if self.observer is not None:
            self.observer(event)


def seed_batch_size(requested: int | None, seeds: int, device: torch.device | str,
                    kernels: str | None = None) -> int:
    """K, the seeds run as one batch: the requested number (at most `seeds`), else all of them on
    an accelerator, which one small sample leaves mostly idle, and one on CPU. There a batch is
    faster too (digits, 4 seeds: 1.8x for dno, 1.9x for guidance), but a convolution or a matrix
    product may round a row differently at another batch size, so a grid cell would no longer be
    the run of its seed alone bit for bit; the default keeps it so, and --seed-batch trades it for
    speed. With batch-invariant kernels (`kernels`, noisealign.batch_invariant) a batch keeps the
    bits, so the CPU default is all seeds too."""
    if requested is not None:
        return max(1, min(requested, seeds))
    alone_on_cpu = torch.device(device).type == "cpu" and kernels != "batch-invariant"
    return 1 if alone_on_cpu else seeds


def seed_chunks(seeds: Sequence[int], size: int) -> list[list[int]]:
    """The seeds in consecutive batches of `size` (the last may be smaller)."""
    return [list(seeds[i:i + size]) for i in range(0, len(seeds), size)]
