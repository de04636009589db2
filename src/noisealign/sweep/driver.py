"""Running a sweep: check the folder, start the workers, run the cells left, write each as it ends.

Order matters for "nothing is written on bad input": the spec is checked (spec.py), the
folder is checked, the workers load and check the sweep, and only then is the folder created
(or taken over to resume). From then on Ctrl-C and SIGTERM stop the sweep cleanly: the cell in
progress is dropped (it runs again on resume), every finished cell stays recorded, the workers
are stopped, the exit status is 130 or 143.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..align import COMPLETE
from ..stopping import EXIT_CODES, signal_of, stop_on_signals
from ..batch import seed_batch_size
from .cells import Cell, cells_of, seed_groups
from .executors import Executor, make_executor
from .results import SweepFolder, read_results
from .spec import SweepSpec


@dataclass(frozen=True)
class ExecutionOptions:
    """How to run a sweep: not part of what it computes, so not part of its spec."""

    executor: str = "local"
    workers: int | None = None
    threads: int = 1
    retries: int = 1
    ray_address: str | None = None
    quiet: bool = False
    seed_batch: int | None = None     # None: every seed on an accelerator, one on a CPU unless its kernels are
                                      # batch-invariant (batch.seed_batch_size)


def run_sweep(spec: SweepSpec, out: Path, options: ExecutionOptions) -> int:
    """Run every cell of `spec` not yet finished in `out`; returns the exit status."""
    spec_dict = spec.to_dict()
    SweepFolder.check(out, spec_dict)
    cells = cells_of(spec)
    started = time.perf_counter()
    try:   # before the workers are up nothing is written: Ctrl-C just ends it
        executor = make_executor(options.executor, spec, options.threads, options.workers, options.ray_address)
    except KeyboardInterrupt:
        print("stopped before any cell ran; nothing was written", file=sys.stderr)
        return EXIT_CODES[signal.SIGINT]
    try:
        with stop_on_signals():   # entered after the workers start: Ray installs signal handlers of its own
            folder = SweepFolder.open(out, spec_dict)
            try:
                _run_cells(folder, cells, executor, options, seed_batch_size(
                    options.seed_batch, len(spec.seeds), spec.model_options.get("device") or "cpu",
                    spec.model_options.get("kernels")))
            finally:
                folder.close()
    except KeyboardInterrupt as stop:
        print(f"stopped ({signal.Signals(signal_of(stop)).name}): {len(read_results(out))} of {len(cells)} "
              f"cells finished in {out}; rerun the same command to resume", file=sys.stderr)
        return EXIT_CODES.get(signal_of(stop), 130)
    finally:
        executor.close()
    lines = read_results(out)
    failed = sum(1 for line in lines if line["status"] != COMPLETE)
    print(f"{len(lines) - failed} complete, {failed} failed of {len(cells)} cells in {out} "
          f"({time.perf_counter() - started:.1f} s); next: noisealign report {out}")
    return 0


def _run_cells(folder: SweepFolder, cells: list[Cell], executor: Executor, options: ExecutionOptions,
               seed_batch: int) -> None:
    """Run the cells `folder` has not finished, `seed_batch` seeds of a cell at a time, recording
    each, with a progress bar over cells."""
    pending = [cell for cell in cells if cell.id not in folder.finished]
    if not options.quiet:
        resumed = f", resuming: {len(cells) - len(pending)} finished" if len(pending) < len(cells) else ""
        print(f"sweep {folder.path}: {len(cells)} cells{resumed}; {options.executor} executor, "
              f"{executor.workers} worker(s), seeds {seed_batch} at a time", file=sys.stderr)
    failed = 0
    with tqdm(total=len(cells), initial=len(cells) - len(pending), unit="cell", desc="sweep", file=sys.stderr,
              disable=True if options.quiet else None, dynamic_ncols=True) as bar:
        for cell, result, attempts in executor.run(seed_groups(pending, seed_batch), options.retries):
            folder.record(cell, result, attempts)
            failed += result.status != COMPLETE
            bar.set_postfix(failed=failed, refresh=False)
            bar.update(1)
