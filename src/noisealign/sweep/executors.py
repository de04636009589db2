"""Where cells run. The local executor: one worker in this process, group after group.

An executor is built with the spec (its workers load the model and rewards and check the
sweep, raising NoiseAlignError before the driver writes anything), then `run(groups, retries)`
runs each group of cells (`cells.seed_groups`: cells that differ only in their seed, one seed
batch; a group of one is a cell alone) and yields (cell, result, attempts) as cells finish: a
failed cell is run again, alone, up to `retries` times before it is handed over as failed. `close()` releases the workers. The Ray executor
(ray_executor.py) does the same on a Ray cluster.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Protocol

import torch

from ..align import COMPLETE
from ..errors import NoiseAlignError
from ..stopping import stop_point
from .cells import Cell
from .spec import SweepSpec
from .worker import CellResult, Worker

class Executor(Protocol):
    workers: int

    def run(self, groups: Iterable[list[Cell]], retries: int) -> Iterator[tuple[Cell, CellResult, int]]:
        """Run each group of cells (`cells.seed_groups`) as one seed batch; yield every cell as it ends."""

    def close(self) -> None: ...


def should_retry(result: CellResult, attempt: int, retries: int) -> bool:
    """A failed cell runs again while it has attempts left (1 + retries in all)."""
    return result.status != COMPLETE and attempt <= retries


class LocalExecutor:
    """One worker in this process: the model loaded once, cells one after another."""

    workers = 1

    def __init__(self, spec: SweepSpec, threads: int):
        self._threads_before = torch.get_num_threads()
        try:
            self.worker = Worker(spec, threads)
        except BaseException:
            self.close()
            raise

    def run(self, groups: Iterable[list[Cell]], retries: int) -> Iterator[tuple[Cell, CellResult, int]]:
        for group in groups:
            stop_point()   # a stop asked for between groups ends the sweep here
            for cell, result in zip(group, self.worker.run_group(group)):
                attempt = 1
                while should_retry(result, attempt, retries):   # a failed cell runs again alone
                    stop_point()
                    result, attempt = self.worker.run(cell), attempt + 1
                yield cell, result, attempt

    def close(self) -> None:
        """Give this process back its torch thread count (the worker set its own)."""
        torch.set_num_threads(self._threads_before)


def make_executor(name: str, spec: SweepSpec, threads: int, workers: int | None,
                  address: str | None) -> Executor:
    """The executor `name` (local or ray) with its workers started and the sweep checked on them."""
    if name == "local":
        if workers not in (None, 1):
            raise NoiseAlignError(f"the local executor runs one worker, got --workers {workers}; "
                                  "use --executor ray for more")
        if address:
            raise NoiseAlignError("--ray-address applies to --executor ray only; drop it or add --executor ray")
        return LocalExecutor(spec, threads)
    from .ray_executor import RayExecutor

    return RayExecutor(spec, threads, workers, address)
