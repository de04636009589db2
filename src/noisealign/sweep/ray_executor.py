"""The Ray executor: one actor per worker, each loading the model and rewards once; cells go to
free actors; only the driver writes.

The cluster is the one this process is already connected to, else the one at --ray-address or
RAY_ADDRESS, else a local one started here (quietly: no dashboard, no worker logs, errors only)
and shut down at the end. Each actor takes one GPU where the cluster has GPUs (one actor per
GPU unless --workers says otherwise), else `threads` CPUs. A cell whose actor dies (killed, out
of memory) or fails is run again, on a fresh actor if its own died, up to `retries` times; then
it is handed over as failed.
"""

from __future__ import annotations

import logging
import os
import re
from collections import deque
from typing import Any, Iterable, Iterator

from ..cpu import tune_malloc
from ..errors import NoiseAlignError
from ..rewards.hub import OFFLINE_VARIABLES, first_line, offline
from ..stopping import stop_point
from .cells import Cell
from .executors import should_retry
from .spec import SweepSpec
from .worker import CellResult, Worker

LOCAL_CLUSTER = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
"""How a local cluster is started: quick and quiet (tests start theirs the same way)."""

POLL_SECONDS = 0.2
"""How often the driver looks up from waiting, to notice Ctrl-C / SIGTERM."""

_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


class _CellActor:
    """A Ray actor holding one Worker; a sweep that cannot run is reported by `ready`, not raised."""

    def __init__(self, spec: dict[str, Any], threads: int):
        tune_malloc()   # the CLI's CPU configuration, in this worker process too
        self.worker, self.error = None, None
        try:
            self.worker = Worker(SweepSpec.from_dict(spec), threads)
        except NoiseAlignError as error:
            self.error = str(error)

    def ready(self) -> str | None:
        return self.error

    def run_group(self, cells: list[Cell]) -> list[CellResult]:
        if self.worker is None:
            return [CellResult.lost(self.error) for _ in cells]
        return self.worker.run_group(cells)


class RayExecutor:
    def __init__(self, spec: SweepSpec, threads: int, workers: int | None, address: str | None):
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")   # SIGTERM stops the sweep, no core dump
        try:
            import ray
        except ImportError:
            raise NoiseAlignError("--executor ray needs Ray: pip install 'noisealign[ray]'") from None
        self._ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            address = address or os.environ.get("RAY_ADDRESS") or None
            cpus = None if address or workers is None else workers * threads
            try:
                ray.init(address=address, num_cpus=cpus, **LOCAL_CLUSTER)
            except Exception as error:  # Ray's own errors (no cluster at the address, ...): one line
                raise NoiseAlignError(f"cannot start or reach a Ray cluster{f' at {address}' if address else ''} "
                                      f"({first_line(error)}); check --ray-address / RAY_ADDRESS") from None
        try:
            self._start_actors(spec, threads, workers)
        except BaseException:
            self.close()
            raise

    def _start_actors(self, spec: SweepSpec, threads: int, workers: int | None) -> None:
        ray = self._ray
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        per_actor: dict[str, Any] = {"num_gpus": 1} if gpus else {"num_cpus": threads}
        if offline():   # remote workers do not inherit this process's environment
            per_actor["runtime_env"] = {"env_vars": {name: "1" for name in OFFLINE_VARIABLES}}
        self.workers = workers or (gpus or max(1, int(resources.get("CPU", 1)) // threads))
        self._actor = ray.remote(max_restarts=0, **per_actor)(_CellActor)
        self._spec, self._threads = spec.to_dict(), threads
        self.actors = [self._actor.remote(self._spec, threads) for _ in range(self.workers)]
        try:
            errors = ray.get([actor.ready.remote() for actor in self.actors])
        except ray.exceptions.RayError as error:
            raise NoiseAlignError(f"a Ray worker could not start ({_reason(error)})") from None
        problem = next((e for e in errors if e), None)
        if problem:
            raise NoiseAlignError(problem)

    def run(self, groups: Iterable[list[Cell]], retries: int) -> Iterator[tuple[Cell, CellResult, int]]:
        ray = self._ray
        queue = deque((group, 1) for group in groups)
        idle, running = list(self.actors), {}
        while queue or running:
            stop_point()
            while idle and queue:
                group, attempt = queue.popleft()
                actor = idle.pop()
                running[actor.run_group.remote(group)] = (group, attempt, actor)
            done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
            for ref in done:
                group, attempt, actor = running.pop(ref)
                results, actor = self._collect(ref, actor, len(group))
                idle.append(actor)
                for cell, result in zip(group, results):
                    if should_retry(result, attempt, retries):
                        queue.appendleft(([cell], attempt + 1))          # again, alone
                    else:
                        yield cell, result, attempt

    def _collect(self, ref: Any, actor: Any, cells: int) -> tuple[list[CellResult], Any]:
        """The group's results and the actor to use next: a fresh one if this one died."""
        ray = self._ray
        try:
            return ray.get(ref), actor
        except ray.exceptions.RayActorError as error:
            replacement = self._actor.remote(self._spec, self._threads)
            self.actors[self.actors.index(actor)] = replacement
            return [CellResult.lost(f"its Ray worker died ({_reason(error)})")] * cells, replacement
        except ray.exceptions.RayError as error:
            return [CellResult.lost(f"Ray could not run it ({_reason(error)})")] * cells, actor

    def close(self) -> None:
        """Stop the actors; shut the cluster down if this executor started it."""
        ray = self._ray
        for actor in getattr(self, "actors", []):
            try:
                ray.kill(actor)
            except Exception:  # an actor already gone: nothing to stop
                pass
        if self.started and ray.is_initialized():
            ray.shutdown()


def _reason(error: Exception) -> str:
    """One line out of a Ray error: the exception of a failed actor start (the traceback's last
    line), else Ray's first line; without Ray's terminal colours."""
    lines = [line.strip() for line in _COLOUR.sub("", str(error)).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return (lines[-1] if "creation task" in lines[0] else lines[0])[:200]
