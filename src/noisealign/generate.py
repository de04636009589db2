"""One `generate` run, as the CLI and the Python API run it: checked, prepared, run, written.

1. `RunRequest` holds every option and checks each one in `__post_init__` (numbers finite
   and in range, seeds in [0, 2^63)).
2. `prepare` loads the model and the reward and plans the method for the budget
   (`Method.plan`): every combination that cannot run is refused here, before any file exists.
3. `execute` creates the run folder exclusively (`RunFolder`), writes result.json with
   status "running", runs the baseline and the method for each seed (the seeds of a method
   with a batch path `--seed-batch` at a time, `batch.align_batch`), and writes the run
   folder whatever happens: status "complete", "interrupted" (Ctrl-C, SIGTERM) or "failed",
   with the trace so far and the best sample so far with its noise. A stopped run re-raises
   the exception (RunInterrupted / RunFailed) after writing, its `outcome` attached.
"""

from __future__ import annotations

import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .align import COMPLETE, FAILED, INTERRUPTED, Outcome, RunFailed, RunInterrupted, align, baseline
from .batch import align_batch, seed_batch_size, seed_chunks
from .errors import NoiseAlignError
from .methods.base import Method, Observer, Problem, StepEvent
from .methods.registry import METHODS
from .models.base import DiffusionModel
from .models.base import check_guidance
from .models.registry import GUIDED, check_model, check_model_options, load_model
from .options import is_finite
from .rewards.base import Reward
from .rewards.registry import parse_reward, reward_terms
from .runs import RunFolder, Trace, check_out, record_head
from .stopping import signal_of

SEED_LIMIT = 2 ** 63
DEFAULT_REWARDS = {"digits": "digit:3", "gmm": "coordinate:0"}
"""The reward a model is aligned toward when none is given (diffusers models: aesthetic)."""


@dataclass(frozen=True)
class RunRequest:
    """Every option of one run. `method_config` is the method's frozen config (None: its defaults)."""

    model: str = "digits"
    method: str = "demon"
    method_config: Any = None
    reward: str | None = None
    prompt: str = ""
    negative_prompt: str = ""
    guidance: float | None = None
    budget: int = 256
    seed: int = 0
    grid: int = 1
    seed_batch: int | None = None
    out: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise NoiseAlignError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        config_type = METHODS[self.method].config_type
        if self.method_config is not None and not isinstance(self.method_config, config_type):
            raise NoiseAlignError(f"method {self.method} takes a {config_type.__name__}, "
                                  f"got a {type(self.method_config).__name__}")
        problems = [
            (self.budget < 0 or (METHODS[self.method].needs_budget and self.budget < 1),
             f"--budget must be a positive number of reward queries for {self.method}, got {self.budget}"),
            (not 0 <= self.seed < SEED_LIMIT, f"--seed must lie in [0, 2^63), got {self.seed}"),
            (self.grid < 1, f"--grid must be at least 1, got {self.grid}"),
            (self.seed + self.grid > SEED_LIMIT, f"--seed {self.seed} with --grid {self.grid} runs seeds past 2^63 - 1; "
                                                 "lower --seed or --grid"),
            (self.seed_batch is not None and self.seed_batch < 1,
             f"--seed-batch must be at least 1, got {self.seed_batch}"),
            (self.guidance is not None and not is_finite(self.guidance),
             f"--guidance must be a finite number, got {self.guidance}"),
        ]
        for bad, message in problems:
            if bad:
                raise NoiseAlignError(message)
        if not GUIDED.get(self.model, True):
            given = [flag for flag, value in (("--guidance", self.guidance), ("--negative-prompt", self.negative_prompt))
                     if value]
            if given:
                raise NoiseAlignError(f"{', '.join(given)} does not apply to the {self.model} model "
                                      "(it is unconditional); drop it")
        check_model_options(self.model, **self.model_options)
        check_out(self.out)

    @property
    def reward_spec(self) -> str:
        return self.reward or DEFAULT_REWARDS.get(self.model, "aesthetic")

    @property
    def seeds(self) -> range:
        return range(self.seed, self.seed + self.grid)


@dataclass
class PreparedRun:
    """A request with its model and reward loaded and its method planned for the budget."""

    request: RunRequest
    problem: Problem
    method: Method
    aligner: Callable[["PreparedRun", list[int], list[Observer]], list[Outcome]] | None = None
    """How the method runs on the seeds (default: `align` for one, `align_batch` for several); a
    sweep's seed batch sets it to share one `align_batch` among its cells (sweep.worker)."""

    @property
    def config(self) -> dict[str, Any]:
        """result.json's `config`: every resolved option, enough for `regenerate`."""
        r = self.request
        return {"method": asdict(self.method.config), "budget": r.budget, "guidance": r.guidance,
                "negative_prompt": r.negative_prompt, "grid": r.grid, "seed_batch": self.seed_batch,
                "model_options": {k: v for k, v in r.model_options.items() if v is not None}}

    @property
    def seed_batch(self) -> int:
        """K, the seeds the method runs as one batch."""
        return seed_batch_size(self.request.seed_batch, self.request.grid, getattr(self.problem.model, "device", "cpu"),
                               self.request.model_options.get("kernels"))


def prepare(request: RunRequest, reward_registry: dict | None = None, reward: Reward | None = None,
            model: DiffusionModel | None = None) -> PreparedRun:
    """Load the model and the reward (or take `model` and `reward`, already loaded, as a sweep's
    worker does), check the prompt, plan the method.

    Raises NoiseAlignError for anything that cannot run; writes nothing.
    """
    check_model(request.model)                        # cheap: before the reward's weights load
    reward = reward if reward is not None else parse_reward(request.reward_spec, reward_registry)
    model = model if model is not None else load_model(request.model, **request.model_options)
    check_guidance(model, request.guidance, request.negative_prompt)
    model.encode_prompt(request.prompt)               # a prompt the model cannot take fails here
    if request.negative_prompt:
        model.encode_prompt(request.negative_prompt)
    problem = Problem(model, reward, request.prompt, request.negative_prompt, request.guidance)
    entry = METHODS[request.method]
    method = entry.method(request.method_config if request.method_config is not None else entry.config_type())
    return PreparedRun(request, problem, method.plan(problem, request.budget))


@dataclass
class SeedRecord:
    seed: int
    baseline: Outcome
    aligned: Outcome | None = None


@dataclass
class RunReport:
    """What `execute` wrote: the folder, result.json's content, and each seed's outcomes."""

    folder: Path
    record: dict[str, Any]
    seeds: list[SeedRecord]

    @property
    def status(self) -> str:
        return self.record["status"]


ProgressFactory = Callable[[int], Callable[[StepEvent], None] | None]
"""progress(seed) -> an observer moving a progress bar for that seed (or None)."""


def execute(run: PreparedRun, progress: ProgressFactory | None = None) -> RunReport:
    """Create the run folder and run every seed, writing the folder however the run ends.

    Returns the report of a complete run; re-raises RunInterrupted / RunFailed (their
    `report` attribute set) after writing an interrupted or failed one.
    """
    request = run.request
    with RunFolder.create(request.out, f"{request.method}-seed{request.seed}") as folder:
        for term in reward_terms(run.problem.reward):
            if hasattr(term, "attach_run_dir"):   # e.g. the VLM judge logs every request there
                term.attach_run_dir(folder.path)
        record = _record_head(run, folder.path)
        folder.write_result(record)
        trace, seeds = Trace(), []
        aligning: list[SeedRecord] = []    # the seeds whose method is running
        try:
            for chunk in seed_chunks(request.seeds, run.seed_batch):
                for seed in chunk:
                    seeds.append(SeedRecord(seed, baseline(run.problem, seed)))
                    if seed == request.seed:
                        folder.save_output(seeds[-1].baseline.result.output, "baseline")
                        record["baseline_reward"] = seeds[-1].baseline.final_reward
                        record.update(_sample_report(run.problem.model, seeds[-1].baseline, "baseline_"))
                aligning = seeds[-len(chunk):]
                observers = [_chain(trace.record if s is seeds[0] else None, progress(s.seed) if progress else None)
                             for s in aligning]
                for each, outcome in zip(aligning, _align(run, chunk, observers), strict=True):
                    each.aligned = outcome
                primary, aligning = aligning[0] is seeds[0], []
                if primary:
                    _write_primary(folder, record, seeds[0].aligned, trace, run.problem.model)
        except (KeyboardInterrupt, NoiseAlignError) as stop:
            for each, kept in zip(aligning, getattr(stop, "outcomes", [])):
                each.aligned = kept
            if aligning and aligning[0] is seeds[0] and seeds[0].aligned is not None:   # keep its best so far
                _write_primary(folder, record, seeds[0].aligned, trace, run.problem.model)
            _write_stopped(folder, record, seeds, trace, stop)
            if not isinstance(stop, (RunInterrupted, RunFailed)):   # stopped outside align (a baseline, a write)
                stop = (RunFailed(str(stop), None) if isinstance(stop, NoiseAlignError)
                        else RunInterrupted(signal_of(stop), None))
            stop.report = RunReport(folder.path, record, seeds)
            raise stop from None
        record["status"] = COMPLETE
        if request.grid > 1:
            _record_grid(record, seeds)
            folder.save_comparison_grid([s.baseline.result.output for s in seeds],
                                        [s.aligned.result.output for s in seeds])
        folder.write_result(record)
        folder.check_rescued()
        return RunReport(folder.path, record, seeds)


def _align(run: PreparedRun, seeds: list[int], observers: list[Observer]) -> list[Outcome]:
    """The method's outcome for each seed: `align` for one, `align_batch` for several."""
    if run.aligner is not None:
        return run.aligner(run, seeds, observers)
    if len(seeds) == 1:
        return [align(run.problem, run.method, seeds[0], run.request.budget, observers[0])]
    return align_batch(run.problem, run.method, seeds, run.request.budget, observers)


def _record_head(run: PreparedRun, path: Path) -> dict[str, Any]:
    r = run.request
    return record_head(r.method, r.model, r.prompt, r.reward_spec, r.seed, r.budget, run.config)


def _write_primary(folder: RunFolder, record: dict[str, Any], outcome: Outcome, trace: Trace,
                   model: DiffusionModel) -> None:
    """The primary seed's sample, noise, trace and counters into the folder and the record."""
    result = outcome.result
    if result is not None:
        folder.save_output(result.output, "image")
        if result.noises:
            folder.save_noises(result.noises)
        record.update(method_reward=result.reward, **result.info, **_sample_report(model, outcome))
    record.update(final_reward=outcome.final_reward, reward_queries=outcome.ledger.reward_queries,
                  nfe=outcome.ledger.nfe, network_evaluations=outcome.ledger.network_evaluations,
                  seconds=round(outcome.seconds, 3))
    folder.write_trace(trace)
    folder.write_result(record)


def _sample_report(model: DiffusionModel, outcome: Outcome, prefix: str = "") -> dict[str, Any]:
    """The model's own measures of an outcome's sample, when it has the optional hook
    `sample_report(sample) -> dict` (the gmm: its exact `log_density`); keys get `prefix`."""
    report = getattr(model, "sample_report", None)
    if report is None or outcome.result is None:
        return {}
    return {prefix + key: value for key, value in report(outcome.result.sample).items()}


def _write_stopped(folder: RunFolder, record: dict[str, Any], seeds: list[SeedRecord], trace: Trace,
                   stop: BaseException) -> None:
    """An interrupted or failed run: the status and the error or signal, the trace so far."""
    if isinstance(stop, NoiseAlignError):
        record.update(status=FAILED, error=str(stop))
    else:
        record.update(status=INTERRUPTED, signal=signal.Signals(signal_of(stop)).name)
    if len(seeds) > 1 or record["config"]["grid"] > 1:
        _record_grid(record, [s for s in seeds if s.aligned is not None and s.aligned.status == COMPLETE])
    folder.write_trace(trace)
    folder.write_result(record)


def _record_grid(record: dict[str, Any], seeds: list[SeedRecord]) -> None:
    rows = [{"seed": s.seed, "baseline_reward": s.baseline.final_reward, "final_reward": s.aligned.final_reward,
             "reward_queries": s.aligned.ledger.reward_queries, "nfe": s.aligned.ledger.nfe,
             "seconds": round(s.aligned.seconds, 3)} for s in seeds]
    record["grid"] = rows
    if rows:
        record["grid_mean_baseline_reward"] = sum(r["baseline_reward"] for r in rows) / len(rows)
        record["grid_mean_final_reward"] = sum(r["final_reward"] for r in rows) / len(rows)


def _chain(*observers: Observer | None) -> Observer:
    """One observer calling each given one in turn."""
    active = [o for o in observers if o is not None]

    def observer(event: StepEvent) -> None:
        for each in active:
            each(event)

    return observer
