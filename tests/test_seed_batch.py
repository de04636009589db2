"""`generate --grid N --seed-batch K`: every method runs the grid's seeds K at a time through
`align_batch` (dno, guidance and reno as one batch, the others in lockstep), each seed's outcome
and grid cell as if run alone, under the run contract."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from noisealign import cli, generate
from noisealign.align import COMPLETE, FAILED, RunFailed, align
from noisealign.batch import align_batch, seed_batch_size, seed_chunks
from noisealign.errors import NoiseAlignError
from noisealign.generate import RunRequest, execute, prepare
from noisealign.methods.base import Problem
from noisealign.methods.best_of_n import BestOfNConfig
from noisealign.methods.demon import DemonConfig
from noisealign.methods.dno import Dno, DnoConfig
from noisealign.methods.fk import FkConfig
from noisealign.methods.guidance import Guidance, GuidanceConfig
from noisealign.methods.plain import PlainConfig
from noisealign.methods.reno import Reno, RenoConfig
from noisealign.models.gmm import GaussianMixture
from noisealign.rewards.simple import Linear
from test_run_contract import ENV, ROOT, noisealign, strict_json

SMALL = {  # (config, budget): a few iterations or steps on the 2-D mixture
    "dno": (DnoConfig(steps=8, regularizer="moments"), 5),
    "guidance": (GuidanceConfig(steps=8, recurrence=1, scale=2.0), 8),
    "reno": (RenoConfig(steps=4, lr=0.5), 5),
    "demon": (DemonConfig(K=2, lookahead="tweedie"), 8),                    # in lockstep
    "best-of-n": (BestOfNConfig(batch_size=2, sampler=PlainConfig(steps=6)), 5),
    "fk": (FkConfig(steps=8, particles=3), 12),
}


def grid_run(tmp_path, method: str, seed_batch: int | None, grid: int = 3):
    config, budget = SMALL[method]
    request = RunRequest(model="gmm", method=method, method_config=config, budget=budget, seed=4, grid=grid,
                         seed_batch=seed_batch, out=str(tmp_path / f"{method}-{seed_batch}"))
    return execute(prepare(request))


@pytest.mark.parametrize("method", list(SMALL))
def test_a_batched_grid_is_bit_identical_to_its_seeds_run_one_at_a_time_on_cpu(tmp_path, method, monkeypatch):
    batches = []
    align_batch = generate.align_batch
    monkeypatch.setattr(generate, "align_batch", lambda problem, m, seeds, *rest: batches.append(seeds)
                        or align_batch(problem, m, seeds, *rest))
    batched = grid_run(tmp_path, method, seed_batch=2)                      # seeds 4, 5 as one batch, then 6 alone
    assert batches == [[4, 5]] and batched.record["config"]["seed_batch"] == 2
    alone = grid_run(tmp_path, method, seed_batch=None)                    # the CPU default: one at a time
    assert batches == [[4, 5]] and alone.record["config"]["seed_batch"] == 1
    for b, a in zip(batched.seeds, alone.seeds, strict=True):
        assert torch.equal(b.aligned.result.output, a.aligned.result.output)
        assert all(torch.equal(b.aligned.result.noises[k], v) for k, v in a.aligned.result.noises.items())
        assert (b.aligned.ledger.reward_queries, b.aligned.ledger.nfe) == (a.aligned.ledger.reward_queries,
                                                                            a.aligned.ledger.nfe)
        assert b.aligned.final_reward == a.aligned.final_reward
        assert b.aligned.result.info == a.aligned.result.info
    without_seconds = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert without_seconds(batched.record["grid"]) == without_seconds(alone.record["grid"])
    assert (batched.folder / "image.json").read_bytes() == (alone.folder / "image.json").read_bytes()


@pytest.mark.parametrize("flags", [["--method", "guidance", "--steps", "4"],
                                   ["--method", "demon", "--K", "2", "--lookahead", "tweedie"]])   # in lockstep
def test_a_batched_digits_grid_writes_every_cell_and_its_first_seed_regenerates(tmp_path, capsys, flags):
    """On a convolutional model, where a batch may round differently, the kept samples still
    regenerate exactly: each is replayed alone from its noises."""
    out = tmp_path / "run"
    assert cli.main(["generate", "--quiet", "--out", str(out), *flags,
                     "--budget", "4", "--grid", "3", "--seed-batch", "2"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert [row["seed"] for row in result["grid"]] == [0, 1, 2] and (out / "grid.png").exists()
    assert all(row["reward_queries"] == 4 for row in result["grid"])
    assert cli.main(["regenerate", str(out)]) == 0 and "identical" in capsys.readouterr().out


def test_the_default_is_every_seed_on_an_accelerator_and_one_on_cpu():
    assert seed_batch_size(None, 8, "cuda") == 8 and seed_batch_size(None, 8, torch.device("cpu")) == 1
    assert seed_batch_size(3, 8, "cpu") == 3 and seed_batch_size(16, 8, "cuda:1") == 8
    assert seed_chunks(range(10, 15), 2) == [[10, 11], [12, 13], [14]]


@pytest.mark.parametrize("flags, message", [
    (["--method", "dno", "--grid", "4", "--seed-batch", "0"], "--seed-batch must be at least 1, got 0"),
    (["--method", "reno", "--seed-batch", "two"], "--seed-batch"),
])
def test_a_bad_seed_batch_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    try:
        code = cli.main(["generate", "--quiet", "--model", "gmm", "--out", str(out), *flags])
    except SystemExit as parser_exit:                                      # argparse's own errors
        code = parser_exit.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("flags, after", [
    (["--method", "dno", "--steps", "6"], 19),                  # the first batch's 2 baselines, 10 queries, 2 final scores
    (["--method", "demon", "--K", "2", "--lookahead", "tweedie"], 12),    # 2 baselines, 5 queries, 2 final scores
])
def test_a_sigterm_during_a_batched_grid_keeps_the_seeds_that_finished(tmp_path, flags, after):
    """Grid 4 in batches of 2: the reward slows down in the second batch (after the first batch's
    calls and the second's 2 baselines), where SIGTERM lands; demon runs its seeds in lockstep threads."""
    out, marker = tmp_path / "run", tmp_path / "marker"
    env = {**ENV, "NOISEALIGN_TEST_MARKER": str(marker), "NOISEALIGN_TEST_AFTER": str(after),
           "NOISEALIGN_TEST_SLEEP": "0.3"}
    process = subprocess.Popen([sys.executable, "-m", "noisealign", "generate", "--quiet", "--out", str(out),
                                "--model", "gmm", "--reward", "python:misbehaving_rewards.slow_after_marker",
                                *flags, "--budget", "10", "--grid", "4", "--seed-batch", "2"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not marker.exists():
            assert process.poll() is None, process.communicate()[1]
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143 and "Traceback" not in err and "interrupted" in err, err
    result = strict_json(out / "result.json")
    assert result["status"] == "interrupted" and result["signal"] == "SIGTERM"
    assert [row["seed"] for row in result["grid"]] == [0, 1]                 # the first batch, complete
    assert result["reward_queries"] == 10 and (out / "image.json").exists() and (out / "noise.pt").exists()
    again = noisealign("regenerate", str(out))
    assert again.returncode == 0 and "identical" in again.stdout, again.stdout + again.stderr
    assert json.loads((out / "result.json").read_text())["config"]["seed_batch"] == 2


# ---- a batch-path run that runs out of memory -------------------------------------------------

BATCH_PATH = {  # dno, guidance and reno run their seeds as the rows of one batch (`run_batch`)
    "dno": (Dno, DnoConfig(steps=6, iterations=2), 3),
    "guidance": (Guidance, GuidanceConfig(steps=6, recurrence=1, scale=2.0), 6),
    "reno": (Reno, RenoConfig(steps=3, iterations=2), 3),
}


class FailingReward:
    """Linear, raising NoiseAlignError from its `fail_at`-th call on (None: never)."""

    name, differentiable = "linear", True

    def __init__(self, fail_at: int | None = None):
        self.linear, self.calls, self.fail_at = Linear(torch.linspace(-1, 1, 8)), 0, fail_at

    def __call__(self, outputs, prompts):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise NoiseAlignError("the reward failed (simulated)")
        return self.linear(outputs, prompts)


def bounded_problem(reward, rows: int = 2, after_calls: int = 0) -> tuple[Problem, list[int]]:
    """The 8-D mixture whose denoiser raises CUDA's out-of-memory error for more than `rows` rows
    at a time, from its `after_calls`-th call on; and the row counts it was asked for."""
    model, asked = GaussianMixture.spread(8), []
    denoise = model.denoise

    def bounded(x, sigma, cond):
        asked.append(len(x))
        if len(x) > rows and len(asked) > after_calls:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return denoise(x, sigma, cond)

    model.denoise = bounded
    return Problem(model, reward), asked


@pytest.mark.parametrize("name", list(BATCH_PATH))
def test_a_batch_that_runs_out_of_memory_runs_again_in_halves_and_equals_its_seeds_alone(name, capsys):
    make, config, budget = BATCH_PATH[name]
    seeds = [3, 4, 5, 6, 7]
    shared, asked = bounded_problem(FailingReward())
    batched = align_batch(shared, make(config), seeds, budget)              # 5 -> 3 + 2 -> (2 + 1) + 2
    assert max(asked) == 5 and {n for n in asked[1:] if n > 2} == {3}
    assert "out of memory with 5 seeds in one batch: running 3 and 2 at a time" in capsys.readouterr().err
    for seed, outcome in zip(seeds, batched, strict=True):
        alone = align(Problem(GaussianMixture.spread(8), FailingReward()), make(config), seed, budget)
        assert torch.equal(outcome.result.output, alone.result.output), seed
        assert (outcome.ledger.reward_queries, outcome.ledger.nfe, outcome.final_reward) == \
            (alone.ledger.reward_queries, alone.ledger.nfe, alone.final_reward)


def test_a_batch_that_runs_out_of_memory_after_its_seeds_observed_a_step_fails_as_it_is():
    """Its observers (a trace) already saw steps: running again would write them twice."""
    make, config, budget = BATCH_PATH["guidance"]
    shared, asked = bounded_problem(FailingReward(), after_calls=3)
    seen = []
    with pytest.raises(torch.OutOfMemoryError):
        align_batch(shared, make(config), [3, 4, 5], budget, [seen.append, None, None])
    assert seen and asked == [3, 3, 3, 3]


def test_a_failure_in_a_later_half_keeps_the_earlier_halfs_outcomes():
    make, config, budget = BATCH_PATH["dno"]
    first_half = FailingReward()
    align_batch(Problem(GaussianMixture.spread(8), first_half), make(config), [3, 4], budget)
    shared, _ = bounded_problem(FailingReward(fail_at=first_half.calls + 1))  # the second half's first query
    with pytest.raises(RunFailed) as stop:
        align_batch(shared, make(config), [3, 4, 5, 6], budget)
    statuses = [outcome.status for outcome in stop.value.outcomes]
    assert statuses == [COMPLETE, COMPLETE, FAILED, FAILED] and stop.value.outcome.status == COMPLETE
