"""The method interface: a method turns (model, prompt, reward, seed, budget) into one sample.

A method never knows which model family it drives nor which reward it serves. It reaches
them through a `RunContext`, which counts every denoiser call and reward query on the
run's ledger and forwards what the method observes to the trace and progress bar.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import Tensor

from ..budget import CountedDenoiser, Ledger
from ..engine.noise import NoiseStreams
from ..models.base import DiffusionModel, make_denoiser
from ..rewards.base import Reward


@dataclass(frozen=True)
class Problem:
    """What to align: a model, a prompt, a reward, and the guidance of the model's sampler."""

    model: DiffusionModel
    reward: Reward
    prompt: str = ""
    negative_prompt: str = ""
    guidance: float | None = None  # None: the model's default
    denoiser: Callable[[Tensor, Any], Tensor] | None = None
    """D(x, sigma) with the prompt and guidance bound (None: `make_denoiser` of the above, per
    run); seeds run in lockstep share one that batches their calls (`lockstep`)."""

    def bound_denoiser(self) -> Callable[[Tensor, Any], Tensor]:
        """`denoiser`, or a new one of the model with this prompt, negative prompt and guidance."""
        if self.denoiser is not None:
            return self.denoiser
        return make_denoiser(self.model, self.prompt, self.guidance, self.negative_prompt)


@dataclass
class StepEvent:
    """The one observation payload (style principle 8): what happened at a step or iteration.

    `rewards` are the rewards scored at that step (candidates, perturbations or the iterate),
    `extras` are method-specific trace columns (tau, penalty, degenerate, ...), `counts` the
    ledger's queries / nfe / seconds when the event was observed (filled in by RunContext).
    """

    step: int
    sigma: float | None = None
    x: Tensor | None = None
    denoised: Tensor | None = None
    rewards: Tensor | None = None
    extras: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)


Observer = Callable[[StepEvent], None]


@dataclass
class MethodResult:
    """The kept sample: its clean state, its decoded output, the reward the method saw.

    `noises` regenerate the sample exactly where the method optimized or chose them.
    `info` is merged into result.json (method-specific diagnostics).
    """

    sample: Tensor
    output: Tensor
    reward: float | None = None
    noises: dict[str, Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)


class RunContext:
    """Everything a method may touch during a run, each access counted on the ledger."""

    def __init__(self, problem: Problem, seed: int, ledger: Ledger, observer: Observer | None = None):
        self.problem, self.seed, self.ledger = problem, seed, ledger
        self.model = problem.model
        self.denoiser = CountedDenoiser(problem.bound_denoiser(), ledger)
        self._observer = observer
        self._keep: Callable[[], MethodResult] | None = None

    def keep(self, best_so_far: Callable[[], MethodResult]) -> None:
        """Register how to build the best sample so far, should the run stop early (Ctrl-C,
        SIGTERM, a failing reward). Methods call it as they go; it must spend no query."""
        self._keep = best_so_far

    def best_so_far(self) -> MethodResult | None:
        """The kept partial result (None when the method kept nothing yet); spends no query."""
        return None if self._keep is None else self._keep()

    def noise_streams(self, indices: list[int] | range) -> NoiseStreams:
        """Per-sample generators for samples `indices` of this run's seed, in the model's state shape."""
        return NoiseStreams(self.seed, indices, self.model.sample_shape, device=self.device)

    @property
    def device(self) -> torch.device:
        return getattr(self.model, "device", torch.device("cpu"))

    def score(self, outputs: Tensor) -> Tensor:
        """Reward of decoded outputs, charged to the budget (one query per sample)."""
        return self.ledger.score(self.problem.reward, outputs, [self.problem.prompt] * len(outputs))

    def observe(self, event: StepEvent) -> None:
        if self._observer is not None:
            event.counts = self.ledger.snapshot()
            self._observer(event)


class Method(Protocol):
    """An alignment method. `config` is a frozen dataclass that round-trips through JSON."""

    name: str
    config: Any

    def plan(self, problem: Problem, budget: int | None) -> "Method":
        """This method with every budget-dependent option resolved (what result.json records and
        `regenerate` rebuilds); NoiseAlignError if it cannot run on `problem` with `budget`
        queries (a budget below one step, a look-ahead the model lacks, ...). Cheap: it runs
        before any run folder exists."""

    def run(self, context: RunContext) -> MethodResult:
        """Spend at most context.ledger.query_limit reward queries; return the kept sample.
        Call context.keep() whenever the best sample so far changes."""

