"""ReNO: DNO's loop on the initial noise only, with ReNO's optimizer, regularizer and steps."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import pytest
import torch

from noisealign.align import RunFailed, RunInterrupted, align
from noisealign.budget import Ledger
from noisealign.errors import NoiseAlignError
from noisealign.methods.base import Problem, RunContext
from noisealign.methods.dno import Dno, DnoConfig
from noisealign.methods.registry import METHODS
from noisealign.methods.reno import Reno, RenoConfig
from noisealign.models.gmm import GaussianMixture
from noisealign.rewards.base import NO_REWARD
from noisealign.rewards.simple import Linear
from test_dno import Scripted, TinyConv, brightness


def run(model, reward, seed=0, budget=None, observer=None, **options):
    context = RunContext(Problem(model, reward), seed, Ledger(query_limit=budget), observer)
    return Reno(RenoConfig(**options)).run(context), context


def test_defaults_are_renos_and_flags_round_trip():
    entry = METHODS["reno"]
    parser = argparse.ArgumentParser()
    entry.add_arguments(parser.add_argument_group("reno"))
    config = entry.build(parser.parse_args([])).config
    assert (config.lr, config.momentum, config.grad_clip, config.gamma, config.regularizer, config.eta) == \
        (5.0, 0.9, 0.1, 1.0, "chi-norm", 0.0)            # ReNO's, but gamma (benchmarks/hacking.py)
    config = entry.build(parser.parse_args("--steps 2 --lr 0.5 --momentum 0 --gamma 1 --regularizer moments "
                                           "--grad-clip 1 --iterations 3".split())).config
    assert config == RenoConfig(steps=2, lr=0.5, momentum=0.0, gamma=1.0, regularizer="moments", grad_clip=1.0,
                                iterations=3)
    assert entry.from_config(json.loads(json.dumps(asdict(config)))).config == config
    with pytest.raises(NoiseAlignError, match="--momentum 1.0"):
        RenoConfig(momentum=1.0)


def test_plan_resolves_few_steps_and_refuses_what_cannot_run():
    digits_like = Problem(TinyConv(), brightness())
    assert Reno().plan(digits_like, 10).config.steps == 4                  # not a few-step model: 4 steps

    class Turbo(TinyConv):
        default_steps, supports_consistency = 1, True

        def consistency_estimate(self, x, sigma, cond):
            return self.denoise(x, sigma, cond)

    assert Reno().plan(Problem(Turbo(), brightness()), 10).config.steps == 1   # its own one step
    with pytest.raises(NoiseAlignError, match="not differentiable"):
        Reno().plan(Problem(TinyConv(), brightness(False)), 10)
    with pytest.raises(NoiseAlignError, match="cannot pay one reno step"):
        Reno().plan(digits_like, 1)
    with pytest.raises(NoiseAlignError, match="at least 4 optimized noise elements"):
        Reno(RenoConfig(regularizer="concentration")).plan(Problem(GaussianMixture.default(), Linear(torch.ones(2))), 9)


def test_only_the_initial_noise_moves_with_sgd_nesterov_and_clipping():
    seen = []
    result, context = run(TinyConv(), brightness(), iterations=3, steps=3, eta=1.0, observer=seen.append)
    fresh = context.noise_streams([0])
    z_T, z = fresh.draw(), torch.stack([fresh.draw() for _ in range(3)])
    assert torch.equal(result.noises["z"], z)                              # the seed's per-step noises, untouched
    assert not torch.equal(result.noises["z_T"], z_T) and result.info["optimized_noise_elements"] == 64
    assert all(event.extras["grad_norm"] > 0 for event in seen[:-1])
    optimizer = Reno().make_optimizer([torch.zeros(3, requires_grad=True)])
    group = optimizer.param_groups[0]
    assert type(optimizer) is torch.optim.SGD and group["nesterov"] and (group["lr"], group["momentum"]) == (5.0, 0.9)


def test_it_is_dno_with_the_initial_noise_only():
    """ReNO with Adam's step would be DNO at eta 0 (z_T alone): same noises, same trajectory."""
    class AdamReno(Reno):
        def make_optimizer(self, variables):
            return torch.optim.Adam(variables, lr=self.config.lr, weight_decay=0.0)

    options = dict(steps=4, eta=0.0, lr=0.05, iterations=3, gamma=1.0, regularizer="chi-norm", grad_clip=1.0)
    model, reward = GaussianMixture.spread(4), Linear(torch.ones(4))
    reno = AdamReno(RenoConfig(**options)).run(RunContext(Problem(model, reward), 0, Ledger()))
    dno = Dno(DnoConfig(mode="grad", checkpointing="all", **options)).run(RunContext(Problem(model, reward), 0, Ledger()))
    assert torch.equal(reno.output, dno.output) and reno.info == dno.info


def test_regenerates_bit_for_bit_without_a_reward(tmp_path):
    problem = Problem(TinyConv(), brightness())
    method = Reno(RenoConfig(lr=0.5, eta=0.5)).plan(problem, 6)
    outcome = align(problem, method, 3, 6)
    torch.save(outcome.result.noises, tmp_path / "noise.pt")
    rebuilt = METHODS["reno"].from_config(json.loads(json.dumps(asdict(method.config))))
    again = rebuilt.regenerate(RunContext(Problem(TinyConv(), NO_REWARD), 3, Ledger(query_limit=0)),
                               torch.load(tmp_path / "noise.pt", weights_only=True))
    assert torch.equal(again.sample, outcome.result.sample) and torch.equal(again.output, outcome.result.output)


@pytest.mark.parametrize("stop", [RuntimeError, KeyboardInterrupt])
def test_keeps_its_best_so_far_when_the_reward_raises_at_its_kth_call(stop):
    class Stops(Scripted):
        def __call__(self, outputs, prompts):
            if self.calls == self.fails_at and stop is KeyboardInterrupt:
                self.calls += 1                                             # a Ctrl-C, once
                raise KeyboardInterrupt
            return super().__call__(outputs, prompts)

    seen = []
    problem = Problem(TinyConv(), Stops([0.0, 4.0, 0.0, 0.0, 0.0], fails_at=3))  # iterate 1 is the best; call 4 raises
    with pytest.raises(RunFailed if stop is RuntimeError else RunInterrupted) as stopped:
        align(problem, Reno(RenoConfig(steps=3, lr=0.5)), 0, 10, observer=seen.append)
    kept = stopped.value.outcome
    assert kept.ledger.reward_queries == 4 and len(seen) == 3
    assert kept.result.info["best_iteration"] == 1 and kept.result.reward == float(seen[1].rewards)
    assert torch.equal(kept.result.sample, seen[1].x)
    again = Reno(RenoConfig(steps=3)).regenerate(RunContext(problem, 0, Ledger()), kept.result.noises)
    assert torch.equal(again.output, kept.result.output)


def test_raises_the_reward_of_a_few_step_sample():
    result, _ = run(GaussianMixture.spread(16), Linear(torch.linspace(-1, 1, 16)), iterations=20, steps=4, lr=1.0)
    assert result.reward > result.info["start_reward"] + 1.0
    assert result.info["reg_chi_norm_start"] < 3 and "reg_moments_final" in result.info
