"""Several seeds of a method run in lockstep: each seed's run in a thread of its own, their
network calls and reward queries gathered into batched calls on the main thread.

Demon, Best-of-N and the particle and search methods have no batch path of their own (`dno`,
`reno` and `guidance` have: `run_batch`). Rewriting each for a seed dimension would double
them; instead each seed runs the method's own `run`, unchanged, on its own RunContext, and
only the work that fills a GPU moves:

    seed b's thread:   D(x_b, sigma)  ->  hands (x_b, sigma) in, waits for its rows
    main thread:       waits until every running seed has handed a request in (or finished),
                       takes the requests that match the lowest seed's (same function, same
                       sigma, same row shape and grad mode), runs them as ONE call on their
                       rows stacked in seed order, hands each seed its rows back

Seeds of one method and budget make the same sequence of calls, so each call carries every
seed's rows: B seeds are B times the rows of one run, in as many calls. What is routed: the
denoiser, the model's `decode` and `consistency_estimate`, and the reward, except a call that
builds an autograd graph (an input that requires grad): each seed back-propagates through its
own graph, so such a call runs in the seed's thread, unbatched (the gradient methods batch
their seeds themselves: `run_batch`). What each seed's
thread still does itself: its method's bookkeeping, noise draws, counting (its ledger charges
its own rows, as a run alone would), observing. Work that batches itself can meet here too:
`gather` hands the main thread every seed's item for one call (a sweep's gradient cells: one
`align_batch` of their seeds).

Exactness: a seed's rows see the same functions on the same inputs as in a run alone; the
results are equal bit for bit wherever the kernels compute a row alike at every batch size
(the gmm; on CPU a convolution may round a row differently in a bigger batch: the digits
model differs by about 1e-6), which is why the CPU default stays one seed at a time.

Memory: a call that runs out of accelerator memory is retried on half the seeds' rows at a
time, and so on down to one seed, whose failure is the run's; later calls keep the smaller size.

Stopping: a seed that raises (a failing reward, a stop request seen at its next
`stop_point`) ends the batch: the others are woken with `Aborted` at their next call, every
thread is joined, and the first error is raised in the main thread, where `align.run_contexts`
turns it into RunFailed / RunInterrupted with every seed's kept sample. After the batch (and
in any thread that is not one of its seeds) a routed call runs directly, so a kept sample
can still be finished.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import torch
from torch import Tensor

from .methods.base import Observer, Problem

T = TypeVar("T")
POLL_SECONDS = 0.1
"""How often the waiting main thread wakes, so that it stays responsive to signals."""


class Aborted(BaseException):
    """Raised in a seed's thread when another seed ended the batch. A BaseException, so that no
    method's or reward wrapper's `except Exception` can swallow it."""


@dataclass
class _Request:
    """One seed's call, waiting for the main thread: fn(x, *args) on its rows, under the seed's
    inference / grad `modes`. Requests of equal `key` share a call."""

    key: tuple
    fn: Callable[..., Any]
    x: Tensor | None                            # None: a gathering (`Lockstep.gather`), `item` its part
    args: tuple
    concatenated_args: bool                     # the reward's prompts: one list per request, joined
    modes: tuple[bool, bool]
    item: Any = None
    result: Any = None
    error: BaseException | None = None
    done: bool = False


class Lockstep:
    """The meeting point of one batch of seeds' threads."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._seats: dict[int, int] = {}        # thread ident -> seat
        self._pending: dict[int, _Request] = {}
        self._running: set[int] = set()
        self._serving: list[_Request] = []
        self._aborted = False
        self.seeds_per_call = 2 ** 31
        """Seeds whose rows one call takes: all, until a call runs out of accelerator memory."""

    # -- a seed's side -------------------------------------------------------------------------

    def call(self, name: str, fn: Callable[..., Any], x: Tensor, *args: Any, shared: tuple = (),
             concatenated_args: bool = False) -> Any:
        """fn(x, *args), run batched with the other seeds' calls of the same `name` and `shared`
        values (what must be equal to share a call: a sigma); directly outside a seed's thread."""
        seat = self._seats.get(threading.get_ident())
        if seat is None or (torch.is_grad_enabled() and x.requires_grad):
            return fn(x, *args)          # not a seed's, or building a graph: seeds back-propagate apart
        modes = (torch.is_inference_mode_enabled(), torch.is_grad_enabled())
        request = _Request((name, shared, tuple(x.shape[1:]), x.dtype, x.device, modes), fn, x, args,
                           concatenated_args, modes)
        return self._wait(seat, request)

    def gather(self, name: str, item: Any, serve: Callable[[list[Any]], list[Any]]) -> Any:
        """serve(items), run once on the main thread for the items the seeds hand in under `name`
        (in seed order); each seed gets its own entry of the result, raised if it is an exception.
        Outside a seed's thread: serve([item])[0]. For work that batches itself (a sweep's
        gradient cells: one `align_batch`)."""
        seat = self._seats.get(threading.get_ident())
        if seat is None:
            result = serve([item])[0]
        else:
            modes = (torch.is_inference_mode_enabled(), torch.is_grad_enabled())
            result = self._wait(seat, _Request((name, modes), serve, None, (), False, modes, item=item))
        if isinstance(result, BaseException):
            raise result
        return result

    def _wait(self, seat: int, request: _Request) -> Any:
        """Hand `request` in for the main thread to serve; its result (or its error, raised)."""
        with self._condition:
            if self._aborted:
                raise Aborted()
            self._pending[seat] = request
            self._condition.notify_all()
            while not request.done:
                self._condition.wait()
        if request.error is not None:
            raise request.error
        return request.result

    # -- the main thread's side ----------------------------------------------------------------

    def run(self, tasks: Sequence[Callable[[], T]]) -> list[T]:
        """Every task in a thread of its own, their calls served here; the tasks' results in
        order, or the first error raised (after every thread has ended)."""
        results: list[Any] = [None] * len(tasks)
        errors: list[BaseException] = []
        started = threading.Barrier(len(tasks) + 1)

        def body(seat: int) -> None:
            self._seats[threading.get_ident()] = seat
            started.wait()
            try:
                results[seat] = tasks[seat]()
            except BaseException as error:       # handed to the main thread, which re-raises it
                errors.append(error)
            finally:
                with self._condition:
                    self._running.discard(seat)
                    self._condition.notify_all()

        self._running = set(range(len(tasks)))
        threads = [threading.Thread(target=body, args=(seat,), daemon=True) for seat in range(len(tasks))]
        for thread in threads:
            thread.start()
        started.wait()
        try:
            while (group := self._next_group(errors)) is not None:
                self._serve(group)
        finally:
            self._abort()
            for thread in threads:
                thread.join()
            self._seats.clear()
        real = [e for e in errors if not isinstance(e, Aborted)]
        if real:
            raise real[0]
        return results

    def _next_group(self, errors: list[BaseException]) -> list[_Request] | None:
        """Wait until every running seed waits on a call; the calls that share the lowest
        seed's key, in seed order (None once every seed has finished, or one has failed)."""
        with self._condition:
            while not errors and self._running and set(self._pending) != self._running:
                self._condition.wait(POLL_SECONDS)
            if errors or not self._running:
                return None
            first = self._pending[min(self._pending)]
            return [self._pending.pop(seat) for seat in sorted(self._pending)
                    if self._pending[seat].key == first.key]

    def _serve(self, group: list[_Request]) -> None:
        """The group's calls on their stacked rows; each request gets its rows (or the error)."""
        self._serving = group
        try:
            outputs, failure = self._call(group), None
        except Exception as error:                 # each seed raises it from its own call
            outputs, failure = [None] * len(group), error
        with self._condition:
            for request, result in zip(group, outputs):
                request.result, request.error, request.done = result, failure, True
            self._serving = []
            self._condition.notify_all()

    def _call(self, group: list[_Request]) -> list[Any]:
        """Each request's output, from as few calls as fit in memory: all the group's rows at
        once, or, once a call ran out of accelerator memory, `seeds_per_call` seeds' rows at a
        time, halved at every further failure down to one seed."""
        outputs: list[Any] = []
        while len(outputs) < len(group):
            part = group[len(outputs):len(outputs) + self.seeds_per_call]
            try:
                outputs += self._call_once(part)
            except torch.OutOfMemoryError:
                if len(part) == 1:
                    raise
                self.seeds_per_call = len(part) // 2
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                print(f"out of memory with {len(part)} seeds in one call: {self.seeds_per_call} from now on",
                      file=sys.stderr)
        return outputs

    @staticmethod
    def _call_once(part: list[_Request]) -> list[Any]:
        first = part[0]
        if first.x is None:
            with torch.inference_mode(first.modes[0]), torch.set_grad_enabled(first.modes[1]):
                return first.fn([request.item for request in part])
        args = ((sum((list(r.args[0]) for r in part), []),) if first.concatenated_args else first.args)
        with torch.inference_mode(first.modes[0]), torch.set_grad_enabled(first.modes[1]):
            output = first.fn(torch.cat([r.x for r in part]), *args)
        rows = [len(r.x) for r in part]
        if isinstance(output, Tensor) and output.ndim > 0 and len(output) == sum(rows):
            return list(output.split(rows))
        return [output] * len(part)                # not one row per input: each seed's checks say so

    def _abort(self) -> None:
        """Wake every waiting seed with Aborted, and make later calls of seeds raise it."""
        with self._condition:
            self._aborted = True
            for request in [*self._pending.values(), *self._serving]:   # _serving: a Ctrl-C cut its call
                if not request.done:
                    request.error, request.done = Aborted(), True
            self._pending.clear()
            self._serving = []
            self._condition.notify_all()


class _RoutedModel:
    """The model as a seed's run sees it: decode and the consistency estimate go through the
    lockstep; everything else is the model's own."""

    def __init__(self, model: Any, lockstep: Lockstep):
        self._model, self._lockstep = model, lockstep

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._model, name)
        if name == "consistency_estimate" and value is not None:   # the seeds share one prompt: one cond
            return lambda x, sigma, cond: self._lockstep.call("consistency", value, x, sigma, cond,
                                                              shared=(id(self._model), float(sigma)))
        return value

    def decode(self, x: Tensor) -> Tensor:
        return self._lockstep.call("decode", self._model.decode, x, shared=(id(self._model),))


class _RoutedReward:
    """The reward as a seed's run sees it: every query goes through the lockstep."""

    def __init__(self, reward: Any, lockstep: Lockstep):
        self._reward, self._lockstep = reward, lockstep

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reward, name)

    def __call__(self, outputs: Tensor, prompts: Sequence[str]) -> Tensor:
        return self._lockstep.call("reward", self._reward, outputs, list(prompts), shared=(id(self._reward),),
                                   concatenated_args=True)


def routed_problem(problem: Problem, lockstep: Lockstep) -> Problem:
    """The problem a seed's run sees: its denoiser's, model's and reward's calls go through
    `lockstep`. Problems alike but for their objects (a sweep's cells of one prompt, one per
    seed) share calls: a denoiser is known by its model, prompt, negative prompt and guidance."""
    identity = (id(problem.model), problem.prompt, problem.negative_prompt, problem.guidance)
    return dataclasses.replace(problem, model=_RoutedModel(problem.model, lockstep),
                               reward=routed_reward(problem.reward, lockstep),
                               denoiser=_routed_denoiser(problem.bound_denoiser(), lockstep, identity))


def routed_reward(reward: Any, lockstep: Lockstep) -> Any:
    """The reward with every query through `lockstep`, batched with the queries of the same reward."""
    return _RoutedReward(reward, lockstep)


def _routed_denoiser(denoiser: Callable[[Tensor, Any], Tensor], lockstep: Lockstep,
                     identity: tuple) -> Callable[[Tensor, Any], Tensor]:
    """D(x, sigma) through `lockstep`: calls at one sigma share a batch (per-row sigmas run alone)."""
    def call(x: Tensor, sigma: Any) -> Tensor:
        scalar = not isinstance(sigma, Tensor) or sigma.ndim == 0
        shared = (*identity, float(sigma)) if scalar else (object(),)     # a fresh object matches nothing
        return lockstep.call("denoise", denoiser, x, sigma, shared=shared)
    call.evaluations_per_call = getattr(denoiser, "evaluations_per_call", 1)
    return call


def serialized(observer: Observer | None, lock: threading.Lock) -> Observer | None:
    """An observer that the seeds' threads call one at a time (progress bars and traces are not
    written for concurrent callers)."""
    if observer is None:
        return None

    def observe(event: Any) -> None:
        with lock:
            observer(event)
    return observe
