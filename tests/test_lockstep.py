"""Seeds in lockstep (`lockstep`, `batch.align_batch` for methods without `run_batch`): each
seed's run is its run alone, bit for bit on the gmm, while its network calls and reward queries
are served as batched calls; a failing seed or a stop ends the batch keeping every seed's best."""

from __future__ import annotations

import signal
import threading

import pytest
import torch

from noisealign import stopping
from noisealign.align import RunFailed, RunInterrupted, align
from noisealign.batch import align_batch
from noisealign.lockstep import Aborted, Lockstep
from noisealign.methods.base import Problem
from noisealign.methods.beam import Beam, BeamConfig
from noisealign.methods.best_of_n import BestOfN, BestOfNConfig
from noisealign.methods.candidates import ValueConfig
from noisealign.methods.demon import Demon, DemonConfig
from noisealign.methods.fk import FeynmanKac, FkConfig
from noisealign.methods.path_search import PathSearch, PathSearchConfig
from noisealign.methods.plain import Plain, PlainConfig
from noisealign.methods.svdd import Svdd, SvddConfig
from noisealign.methods.zo_search import ZoSearch, ZoSearchConfig
from noisealign.models.gmm import GaussianMixture
from noisealign.rewards.simple import Linear

METHODS = {  # small configurations on the 8-D mixture, each a few steps or rounds
    "best-of-n": (lambda: BestOfN(BestOfNConfig(batch_size=3, sampler=PlainConfig(steps=6))), 8),
    "demon": (lambda: Demon(DemonConfig(K=3)), 24),
    "demon-ode": (lambda: Demon(DemonConfig(K=2, lookahead="ode", lookahead_steps=4)), 8),
    "fk": (lambda: FeynmanKac(FkConfig(steps=8, particles=3)), 24),
    "svdd": (lambda: Svdd(SvddConfig(candidates=3)), 12),
    "beam": (lambda: Beam(BeamConfig(beams=2, candidates=2)), 16),
    "zo-search": (lambda: ZoSearch(ZoSearchConfig(steps=6, neighbours=3)), 10),
    "path-search": (lambda: PathSearch(PathSearchConfig(paths=2, branches=2)), 16),
    "plain": (lambda: Plain(PlainConfig(steps=6)), 0),
}


class Counted:
    """A reward or a model's denoise that records the rows of every call it receives."""

    def __init__(self, fn, **attributes):
        self.fn, self.rows = fn, []
        self.__dict__.update(attributes)

    def __call__(self, x, *rest):
        self.rows.append(len(x))
        return self.fn(x, *rest)


def counted_problem() -> tuple[Problem, Counted, Counted]:
    model, linear = GaussianMixture.spread(8), Linear(torch.linspace(-1, 1, 8))
    model.denoise = calls = Counted(model.denoise)
    reward = Counted(linear, name=linear.name, differentiable=linear.differentiable)
    return Problem(model, reward), calls, reward


def problem() -> Problem:
    return counted_problem()[0]


@pytest.mark.parametrize("name", list(METHODS))
def test_lockstep_seeds_are_their_runs_alone_bit_for_bit_in_one_seeds_number_of_calls(name):
    make, budget = METHODS[name]
    seeds = [3, 4, 5]
    shared, calls, queries = counted_problem()
    batched = align_batch(shared, make(), seeds, budget)
    batched_rows = (list(calls.rows), list(queries.rows))
    alone_rows = []
    for seed, outcome in zip(seeds, batched):
        calls.rows.clear(), queries.rows.clear()
        alone = align(shared, make(), seed, budget)
        alone_rows.append((list(calls.rows), list(queries.rows)))
        assert torch.equal(outcome.result.output, alone.result.output), seed
        assert torch.equal(outcome.result.sample, alone.result.sample)
        assert outcome.final_reward == alone.final_reward and outcome.result.reward == alone.result.reward
        assert all(torch.equal(outcome.result.noises[k], v) for k, v in (alone.result.noises or {}).items())
        assert outcome.result.info == alone.result.info
        counts = lambda ledger: (ledger.reward_queries, ledger.nfe, ledger.denoiser_calls)  # noqa: E731
        assert counts(outcome.ledger) == counts(alone.ledger)
    # the same rows in all, in as many model calls as one seed makes: each carried the three seeds;
    # the reward's too, but for the scoring of each final output, outside the budget, seed by seed
    (calls_batched, queries_batched), (calls_alone, queries_alone) = batched_rows, zip(*alone_rows)
    assert sum(calls_batched) == sum(map(sum, calls_alone)) and len(calls_batched) == len(calls_alone[0])
    assert sum(queries_batched) == sum(map(sum, queries_alone))
    assert len(queries_batched) == len(queries_alone[0]) + len(seeds) - 1


def test_served_calls_stack_every_seed_and_split_rows_back_in_seed_order():
    lockstep, served = Lockstep(), []

    def double(x: torch.Tensor) -> torch.Tensor:
        served.append(x.clone())
        return 2 * x

    def task(value: float, rows: int):
        return lambda: [lockstep.call("double", double, torch.full((rows, 2), value)) for _ in range(3)]

    results = lockstep.run([task(1.0, 1), task(2.0, 2), task(3.0, 1)])
    assert len(served) == 3 and all(len(x) == 4 for x in served)
    assert torch.equal(served[0][:, 0], torch.tensor([1.0, 2.0, 2.0, 3.0]))
    for value, rows, outputs in zip((1.0, 2.0, 3.0), (1, 2, 1), results):
        assert all(torch.equal(o, torch.full((rows, 2), 2 * value)) for o in outputs)
    assert torch.equal(lockstep.call("double", double, torch.ones(1, 2)), torch.full((1, 2), 2.0))  # after: direct


def test_calls_that_differ_are_served_apart_and_a_seed_that_finishes_early_frees_the_others():
    lockstep, served = Lockstep(), []

    def record(x: torch.Tensor, sigma: float) -> torch.Tensor:
        served.append((sigma, len(x)))
        return x

    short = lambda: lockstep.call("f", record, torch.zeros(1, 1), 1.0, shared=(1.0,))            # noqa: E731
    long = lambda: [lockstep.call("f", record, torch.zeros(1, 1), s, shared=(s,)) for s in (2.0, 1.0, 3.0)]  # noqa: E731
    lockstep.run([long, short])
    assert served == [(2.0, 1), (1.0, 2), (3.0, 1)]     # seed 0's sigma 2 first: seed 1 waits for it at sigma 1


def test_a_failing_seed_ends_the_batch_and_the_others_are_aborted_not_failed():
    lockstep = Lockstep()
    aborted = []

    def failing():
        lockstep.call("f", lambda x: x, torch.zeros(1))
        raise ValueError("seed 0 broke")

    def steady():
        try:
            while True:
                lockstep.call("f", lambda x: x, torch.zeros(1))
        except Aborted:
            aborted.append(True)
            raise

    threads = threading.active_count()
    with pytest.raises(ValueError, match="seed 0 broke"):
        lockstep.run([failing, steady])
    assert aborted == [True] and threading.active_count() == threads          # every seed's thread has ended


class FailsAt:
    """A linear reward whose query number `at` (counting calls) raises, as a server going down."""

    name, differentiable = "fails-at", False

    def __init__(self, at: int):
        self.at, self.calls, self.linear = at, 0, Linear(torch.linspace(-1, 1, 8), differentiable=False)

    def __call__(self, outputs, prompts):
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError("the reward server is down")
        return self.linear(outputs, prompts)


@pytest.mark.parametrize("name", ["demon", "best-of-n", "fk"])
def test_a_failing_reward_fails_the_batch_keeping_every_seeds_best_so_far(name):
    make, budget = METHODS[name]
    broken = Problem(GaussianMixture.spread(8), FailsAt(at=3))
    with pytest.raises(RunFailed, match="the reward server is down") as failed:
        align_batch(broken, make(), [0, 1, 2], budget)
    kept = failed.value.outcomes
    assert [o.status for o in kept] == ["failed"] * 3
    assert all(o.result is not None and o.ledger.reward_queries > 0 for o in kept)


def test_a_stop_request_interrupts_every_seed_keeping_its_best_so_far():
    """The first SIGINT only asks to stop: every seed's thread stops at its next call."""
    make, budget = METHODS["demon"]
    seen = [[], []]

    def stop_after_two(events: list):
        def observe(event):
            events.append(event)
            if len(seen[0]) + len(seen[1]) == 2:
                signal.raise_signal(signal.SIGINT)
        return observe

    with stopping.stop_on_signals(), pytest.raises(RunInterrupted) as stopped:
        align_batch(problem(), make(), [0, 1], budget, [stop_after_two(s) for s in seen])
    kept = stopped.value.outcomes
    assert [o.status for o in kept] == ["interrupted"] * 2
    assert all(o.result is not None for o in kept) and all(len(s) <= 2 for s in seen)


def test_a_call_that_runs_out_of_memory_is_served_in_halves_and_later_calls_keep_the_size(capsys):
    lockstep, sizes = Lockstep(), []

    def bounded(x: torch.Tensor) -> torch.Tensor:        # at most 2 rows fit "on the device"
        sizes.append(len(x))
        if len(x) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return x + 1

    tasks = [lambda v=v: [lockstep.call("f", bounded, torch.full((1,), v)) for _ in range(2)] for v in range(5)]
    results = lockstep.run(tasks)
    assert [[float(r) for r in rows] for rows in results] == [[v + 1, v + 1] for v in range(5)]
    assert sizes == [5, 2, 2, 1, 2, 2, 1] and lockstep.seeds_per_call == 2
    assert "out of memory with 5 seeds in one call: 2 from now on" in capsys.readouterr().err


def test_one_seed_that_runs_out_of_memory_fails_every_seed():
    lockstep = Lockstep()

    def never(x: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(torch.OutOfMemoryError):
        lockstep.run([lambda: lockstep.call("f", never, torch.zeros(1)) for _ in range(3)])


def test_a_call_that_builds_a_graph_runs_in_its_seeds_thread_unbatched():
    """Each seed back-propagates through its own graph: a call on an input that requires grad is
    not stacked with the others' (dno, reno and guidance batch their seeds in run_batch)."""
    lockstep, served = Lockstep(), []

    def double(x: torch.Tensor) -> torch.Tensor:
        served.append(len(x))
        return 2 * x

    def seed(value: float):
        def run():
            x = torch.full((1,), value, requires_grad=True)
            lockstep.call("double", double, x).sum().backward()
            with torch.no_grad():
                lockstep.call("double", double, x)
            return float(x.grad)
        return run

    assert lockstep.run([seed(1.0), seed(2.0)]) == [2.0, 2.0]
    assert sorted(served) == [1, 1, 2]                     # the graph calls alone, the no-grad ones together
