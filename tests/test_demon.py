"""Demon on the analytic Gaussian mixture: weights, z* on the sphere, budget, determinism, reductions."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict

import pytest
import torch

from noisealign.budget import Ledger
from noisealign.engine import karras_sigmas, sample_beta_sde
from noisealign.engine.lookahead import ode_lookahead_evaluations
from noisealign.engine.noise import randn, sample_generator
from noisealign.engine.schedules import karras_position
from noisealign.errors import NoiseAlignError, NonFiniteReward
from noisealign.methods.base import Problem, RunContext
from noisealign.methods.demon import (Demon, DemonConfig, DemonSession, boltzmann_weights, combine_noises,
                                      default_K, demon_steps_on, fit_grid, tanh_weights)
from noisealign.methods.registry import METHODS
from noisealign.models.base import make_denoiser
from noisealign.models.gmm import GaussianMixture

MODEL = GaussianMixture.default()


def first_coordinate(outputs, prompts):
    """A smooth reward: r(x) = x_1 (pushes samples to the right)."""
    return outputs[:, 0].float()


def run_demon(config: DemonConfig, budget: int | None = 64, seed: int = 0, reward=first_coordinate,
              model=MODEL):
    events = []
    context = RunContext(Problem(model, reward), seed, Ledger(query_limit=budget), observer=events.append)
    return Demon(config).run(context), context.ledger, events


def fast(**options) -> DemonConfig:
    """A small, quick configuration: Tweedie look-ahead on a 24-point grid."""
    return DemonConfig(**{"K": 4, "lookahead": "tweedie", "grid_points": 24, **options})


# --- weights and z* -------------------------------------------------------------------------------

def test_tanh_weights_match_hand_values():
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64)  # mean 3
    expected = [math.tanh(-2 / 2), math.tanh(-1 / 2), 0.0, math.tanh(3 / 2)]
    assert tanh_weights(rewards, tau=2.0).tolist() == pytest.approx(expected, abs=1e-15)


def test_boltzmann_weights_match_hand_values():
    rewards = torch.tensor([0.0, math.log(2), math.log(4)], dtype=torch.float64)
    assert boltzmann_weights(rewards, tau=1.0).tolist() == pytest.approx([1 / 7, 2 / 7, 4 / 7], abs=1e-15)
    assert boltzmann_weights(rewards, tau=0.5).tolist() == pytest.approx([1 / 21, 4 / 21, 16 / 21], abs=1e-15)


def test_combined_noise_lies_on_the_sqrt_n_sphere_along_the_weighted_sum():
    z = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    weights = torch.tensor([0.9, -0.3, 0.1, -0.8, 0.5], dtype=torch.float64)
    z_star = combine_noises(z, weights)
    assert z_star.shape == (1, 3, 4, 4)
    assert float(z_star.norm()) == pytest.approx(math.sqrt(48), rel=1e-6)
    direction = (weights[:, None, None, None] * z.double()).sum(0)
    cosine = torch.nn.functional.cosine_similarity(z_star.double().flatten(), direction.flatten(), dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-6)


def test_combined_noise_is_none_when_the_weighted_sum_vanishes():
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(2))
    assert combine_noises(torch.stack([z[0], -z[0]]), torch.tensor([1.0, 1.0])) is None
    assert combine_noises(z, torch.zeros(2)) is None


# --- runs -----------------------------------------------------------------------------------------

def test_adaptive_tau_is_each_steps_reward_std():
    _, _, events = run_demon(fast(tau="adaptive"), budget=40)
    taus = [event.extras["tau"] for event in events]
    assert len(events) == 10
    for event, tau in zip(events, taus):
        assert tau == pytest.approx(float(event.rewards.double().std()), rel=1e-12)
    assert len(set(taus)) == len(taus)  # re-estimated, not frozen after the first step


def test_fixed_tau_is_used_at_every_step():
    _, _, events = run_demon(fast(tau=0.25), budget=20)
    assert [event.extras["tau"] for event in events] == [0.25] * 5


@pytest.mark.parametrize("budget,K", [(16, 16), (17, 4), (50, 8), (63, 16), (1000, 8)])
def test_budget_is_never_exceeded_and_maps_onto_floor_b_over_k_steps(budget, K):
    config = fast(K=K)
    result, ledger, events = run_demon(config, budget=budget)
    sigmas = karras_sigmas(config.grid_points, MODEL.sigma_min, MODEL.sigma_max)
    above = sum(1 for s in sigmas[:-2] if float(s) >= config.ode_after_for(MODEL))
    assert demon_steps_on(config.grid_points, MODEL, config.ode_after_for(MODEL)) == above == 17
    steps = min(above, budget // K)
    assert ledger.reward_queries <= budget
    assert ledger.reward_queries == K * steps == K * len(events)
    assert result.info["demon_steps"] == steps


def test_budget_below_k_is_a_clear_error():
    with pytest.raises(NoiseAlignError, match="raise --budget or lower --K"):
        run_demon(fast(K=16), budget=15)


@pytest.mark.parametrize("demon,tau", [("tanh", 1.0), ("tanh", "adaptive"), ("boltzmann", "adaptive")])
def test_constant_reward_falls_back_to_plain_noise_and_is_counted(demon, tau):
    constant = lambda outputs, prompts: torch.full((len(outputs),), 0.7)  # noqa: E731
    result, _, events = run_demon(fast(demon=demon, tau=tau), budget=24, reward=constant)
    assert [event.extras["degenerate"] for event in events] == [1.0] * 6
    assert result.info["degenerate_steps"] == 6
    # the fallback is candidate 0's noise, so the sample is Demon's with K = 1 (plain beta-SDE)
    single, _, _ = run_demon(fast(K=1), budget=6, reward=constant)
    assert torch.equal(result.sample, single.sample)


def test_same_seed_gives_the_same_bits_and_another_seed_does_not():
    config = DemonConfig(K=6, lookahead="ode", lookahead_steps=5, grid_points=20)
    first, _, _ = run_demon(config, budget=30, seed=3)
    again, _, _ = run_demon(config, budget=30, seed=3)
    other, _, _ = run_demon(config, budget=30, seed=4)
    assert torch.equal(first.sample, again.sample)
    assert torch.equal(first.noises["z_star"], again.noises["z_star"])
    assert not torch.equal(first.sample, other.sample)


def test_k_equal_1_is_plain_beta_sde_sampling_with_the_seeds_stream():
    config = fast(K=1, ode_after=0.0, beta=0.3)
    result, _, _ = run_demon(config, budget=None, seed=5)
    stream = sample_generator(5, 0)
    sigmas = karras_sigmas(config.grid_points, MODEL.sigma_min, MODEL.sigma_max)
    x_T = MODEL.sigma_max * randn((1, 2), stream)
    noises = [randn((1, 2), stream) for _ in range(len(sigmas) - 1)]
    expected = sample_beta_sde(make_denoiser(MODEL, ""), x_T, sigmas, noises, beta=0.3)
    assert torch.equal(result.sample, expected)
    assert result.info["demon_steps"] == config.grid_points - 1  # every step but the one into 0


def test_returned_noises_regenerate_the_sample():
    config = fast(K=5, beta=0.2)
    result, _, _ = run_demon(config, budget=45, seed=2)
    assert result.noises["z_T"].shape == (1, 2) and result.noises["z_star"].shape == (9, 1, 2)
    assert result.info["demon_steps"] == 9
    context = RunContext(Problem(MODEL, first_coordinate), 2, Ledger(query_limit=0))
    again = Demon(config).regenerate(context, result.noises)
    assert torch.equal(again.sample, result.sample) and context.ledger.reward_queries == 0


def test_nan_reward_stops_the_run_and_keeps_the_steps_so_far():
    calls = []

    def breaks_on_third_call(outputs, prompts):
        calls.append(1)
        values = outputs[:, 0].float()
        return values * math.nan if len(calls) == 3 else values

    events = []
    context = RunContext(Problem(MODEL, breaks_on_third_call), 0, Ledger(query_limit=64), observer=events.append)
    with pytest.raises(NonFiniteReward):
        Demon(fast()).run(context)
    assert [event.step for event in events] == [0, 1]


@pytest.mark.parametrize("lookahead", ["tweedie", "ode"])
def test_denoiser_at_x_is_called_once_per_step_and_shared(lookahead):
    config = DemonConfig(K=7, lookahead=lookahead, lookahead_steps=6, grid_points=16, candidate_batch=3)
    result, ledger, events = run_demon(config, budget=7 * 5)
    sigmas = karras_sigmas(config.grid_points, MODEL.sigma_min, MODEL.sigma_max)
    n, chunks = 5, 3  # ceil(7 / 3) look-ahead batches per step
    if lookahead == "tweedie":
        per_candidate = [1] * n
    else:
        per_candidate = [ode_lookahead_evaluations(float(sigmas[i + 1]), MODEL.sigma_min, MODEL.sigma_max, 6,
                                                   config.lookahead_solver) for i in range(n)]
    ode_tail = 2 * (config.grid_points - n) - 1  # Heun over the rest, Euler into 0
    assert ledger.nfe == sum(1 + 7 * c for c in per_candidate) + ode_tail
    assert ledger.denoiser_calls == sum(1 + chunks * c for c in per_candidate) + ode_tail


def test_non_differentiable_reward_runs_without_gradients():
    def rounded(outputs, prompts):
        assert torch.is_inference_mode_enabled() and not outputs.requires_grad
        return torch.from_numpy(outputs[:, 0].numpy().round(1)).float()  # piecewise constant

    result, ledger, _ = run_demon(fast(), budget=32, reward=rounded)
    assert ledger.reward_queries == 32 and torch.isfinite(result.sample).all()


def test_demon_raises_a_smooth_reward_over_plain_beta_sde():
    seeds = range(6)
    demon = [float(run_demon(fast(K=8), budget=96, seed=s)[0].sample[0, 0]) for s in seeds]
    plain = [float(run_demon(fast(K=1), budget=12, seed=s)[0].sample[0, 0]) for s in seeds]
    assert sum(demon) / 6 > sum(plain) / 6 + 1.0


# --- the step-wise session ------------------------------------------------------------------------

def test_session_takes_a_persons_clicks():
    context = RunContext(Problem(MODEL, first_coordinate), 0, Ledger())
    session = DemonSession(context, fast(K=4))
    with pytest.raises(NoiseAlignError, match="propose"):
        session.choose(torch.ones(4))
    outputs = session.propose()
    assert outputs.shape == (4, 2)
    with pytest.raises(NoiseAlignError, match="4 rewards"):
        session.choose(torch.ones(3))
    clicks = torch.tensor([-1.0, 1.0, -1.0, -1.0])  # the person prefers candidate 1
    event = session.choose(clicks)
    assert event.step == 0 and session.index == 1 and event.extras["degenerate"] == 0.0
    # mean -1/2, std 1: b = tanh(1.5) for the chosen, tanh(-0.5) for each other
    share = math.tanh(1.5) / (math.tanh(1.5) + 3 * math.tanh(0.5))
    assert event.extras["max_weight"] == pytest.approx(share, rel=1e-12)
    assert session.finish().shape == (1, 2) and context.ledger.reward_queries == 0


def test_restoring_a_snapshot_replays_the_same_candidates_steps_and_counts():
    context = RunContext(Problem(MODEL, first_coordinate), 0, Ledger())
    session = DemonSession(context, fast(K=4))

    def two_steps():
        taken = []
        for _ in range(2):
            looks = session.propose()
            taken.append((looks, session.choose(context.score(looks)).rewards))
        return taken, session.snapshot()

    with torch.inference_mode():
        start = session.snapshot()
        first, after_first = two_steps()
        session.propose()                  # a pending proposal is dropped by restore
        session.restore(start)
        with pytest.raises(NoiseAlignError, match="propose"):
            session.choose(torch.ones(4))
        assert session.index == 0 and context.ledger.reward_queries == 0 and context.ledger.nfe == 0
        second, after_second = two_steps()
    assert all(torch.equal(a, b) for pair, again in zip(first, second) for a, b in zip(pair, again))
    assert torch.equal(after_first.state.x, after_second.state.x) and after_first.counts == after_second.counts
    assert all(torch.equal(a, b) for a, b in zip(after_first.state.chosen, after_second.state.chosen))
    with pytest.raises(AttributeError):
        after_first.state.index = 0        # snapshots are immutable


def test_session_resolves_k_and_the_grid_like_demon_run():
    unbounded = DemonSession(RunContext(Problem(MODEL, reward=None), 0, Ledger()), DemonConfig(K=8))
    assert (unbounded.config.K, unbounded.config.grid_points) == (8, 64)
    context = RunContext(Problem(MODEL, first_coordinate), 0, Ledger(query_limit=64))
    session = DemonSession(context, DemonConfig())
    assert session.config == Demon(DemonConfig()).plan(context.problem, 64).config
    assert session.stochastic_steps_left == 64 // session.config.K


# --- configuration ----------------------------------------------------------------------------------

@pytest.mark.parametrize("tau", ["adaptive", 0.3])
def test_config_round_trips_through_json(tau):
    config = DemonConfig(demon="boltzmann", K=9, tau=tau, ode_after=0.5)
    assert DemonConfig(**json.loads(json.dumps(asdict(config)))) == config


@pytest.mark.parametrize("options", [{"demon": "greedy"}, {"K": 0}, {"beta": 0.0}, {"tau": -1.0},
                                     {"tau": "auto"}, {"lookahead": "sde"}, {"grid_points": 1}])
def test_bad_options_are_clear_errors(options):
    with pytest.raises(NoiseAlignError, match="bad demon option"):
        DemonConfig(**options)


class PaperRange:
    """The sigma range of the paper's Stable Diffusion grid."""

    sigma_min, sigma_max = 0.002, 14.648


def test_default_ode_after_sits_at_the_papers_karras_position():
    assert DemonConfig().ode_after_for(PaperRange) == pytest.approx(0.11, rel=1e-12)
    ours = DemonConfig().ode_after_for(MODEL)
    paper = karras_position(0.11, 0.002, 14.648)
    assert karras_position(ours, MODEL.sigma_min, MODEL.sigma_max) == pytest.approx(paper, rel=1e-12)
    assert DemonConfig(ode_after=0.5).ode_after_for(MODEL) == 0.5


def test_default_beta_keeps_the_papers_beta_times_sigma_max():
    assert DemonConfig().beta_for(PaperRange) == pytest.approx(0.1, rel=1e-12)
    assert DemonConfig().beta_for(MODEL) * MODEL.sigma_max == pytest.approx(0.1 * 14.648, rel=1e-12)
    assert DemonConfig(beta=0.3).beta_for(MODEL) == 0.3
    result, _, _ = run_demon(fast(), budget=8)
    assert result.info["beta"] == DemonConfig().beta_for(MODEL)


@pytest.mark.parametrize("budget,K", [(64, 4), (256, 16), (40, 8)])
def test_fit_grid_is_the_smallest_grid_the_budget_covers_down_to_ode_after(budget, K):
    config = fit_grid(DemonConfig(K=K, lookahead="tweedie"), MODEL, budget)
    ode_after = config.ode_after_for(MODEL)
    assert demon_steps_on(config.grid_points, MODEL, ode_after) >= budget // K
    assert demon_steps_on(config.grid_points - 1, MODEL, ode_after) < budget // K
    result, ledger, _ = run_demon(config, budget=budget)
    assert result.info["demon_steps"] == budget // K and ledger.reward_queries == K * (budget // K)


def test_consistency_lookahead_needs_a_model_that_offers_it():
    with pytest.raises(NoiseAlignError, match="--lookahead ode"):
        run_demon(fast(lookahead="consistency"), budget=8)

    class WithConsistency(GaussianMixture):
        def consistency_estimate(self, x, sigma, cond):
            return self.denoise(x, torch.as_tensor(sigma), cond)

    model = WithConsistency(MODEL.means, MODEL.stds, MODEL.weights)
    consistency, ledger, _ = run_demon(fast(lookahead="consistency"), budget=8, model=model)
    tweedie, _, _ = run_demon(fast(), budget=8, model=model)
    assert torch.equal(consistency.sample, tweedie.sample)  # here the estimate is Tweedie's
    assert ledger.nfe == 2 * (1 + 4) + 2 * (24 - 2) - 1


def test_cli_entry_builds_the_config_from_flags():
    parser = argparse.ArgumentParser()
    METHODS["demon"].add_arguments(parser.add_argument_group("demon"))
    args = parser.parse_args(["--demon", "boltzmann", "--K", "8", "--tau", "0.5", "--lookahead", "tweedie",
                              "--lookahead-steps", "9", "--ode-after", "0.2", "--beta", "0.05", "--steps", "64"])
    config = METHODS["demon"].build(args).config
    assert config == DemonConfig(demon="boltzmann", K=8, beta=0.05, tau=0.5, lookahead="tweedie",
                                 lookahead_steps=9, ode_after=0.2, grid_points=64)
    assert METHODS["demon"].from_config(json.loads(json.dumps(asdict(config)))).config == config
    assert METHODS["demon"].build(parser.parse_args(["--steps", "30"])).config.grid_points == 30
    assert METHODS["demon"].build(parser.parse_args([])).config == DemonConfig()  # no flag: the defaults
    with pytest.raises(SystemExit):
        parser.parse_args(["--tau", "warm"])


# --- the defaults: what `--method demon --budget B` runs with no other flag (docs/demon.md) ---------

def test_default_config_leaves_k_and_the_grid_to_the_budget():
    config = DemonConfig()
    assert (config.demon, config.K, config.grid_points, config.tau, config.lookahead, config.lookahead_solver,
            config.lookahead_steps) == (
        "tanh", None, None, "adaptive", "ode", "unipc", 15)
    assert [default_K(b) for b in (None, 1, 16, 64, 128, 255, 256, 512, 2048)] == [16, 1, 1, 4, 8, 15, 16, 16, 16]


DIGITS_DEFAULT_PLAN = {64: (4, 23), 128: (8, 23), 256: (16, 23), 512: (16, 46), 1024: (16, 92), 2048: (16, 183)}
"""budget -> (K, grid points) of the default plan on digits, the table in docs/demon.md."""


@pytest.mark.parametrize("budget", sorted(DIGITS_DEFAULT_PLAN))
def test_default_plan_on_digits_is_the_documented_k_and_grid(budget):
    from noisealign.models.digits import DigitsModel

    model = DigitsModel.load()
    config = Demon(DemonConfig()).plan(Problem(model, first_coordinate), budget).config
    assert (config.K, config.grid_points) == DIGITS_DEFAULT_PLAN[budget]
    assert config == fit_grid(DemonConfig(K=default_K(budget)), model, budget) == fit_grid(DemonConfig(), model, budget)
    steps = demon_steps_on(config.grid_points, model, config.ode_after_for(model))
    assert steps >= budget // config.K > demon_steps_on(config.grid_points - 1, model, config.ode_after_for(model))
    assert config.K * (budget // config.K) <= budget


@pytest.mark.parametrize("budget", [64, 100])
def test_default_run_on_digits_spends_at_most_the_budget_down_to_ode_after(budget):
    from noisealign.models.digits import DigitsModel
    from noisealign.rewards.registry import parse_reward

    result, ledger, events = run_demon(DemonConfig(), budget=budget, reward=parse_reward("digit:3"),
                                       model=DigitsModel.load())
    K = default_K(budget)
    assert result.info["K"] == K and len(events) == result.info["demon_steps"] == budget // K
    assert ledger.reward_queries == K * (budget // K) <= budget
    assert events[-1].sigma >= DemonConfig().ode_after_for(DigitsModel.load()) > events[-1].sigma / 2


def test_default_plan_without_a_budget_is_the_papers_k_and_grid():
    config = Demon(DemonConfig()).plan(Problem(MODEL, first_coordinate), None).config
    assert (config.K, config.grid_points) == (16, 64)


def test_jpeg_reward_on_the_digits_model():
    from noisealign.models.digits import DigitsModel
    from noisealign.rewards.registry import parse_reward

    jpeg = parse_reward("jpeg")
    assert not jpeg.differentiable
    result, ledger, events = run_demon(fast(K=4, grid_points=12), budget=18, reward=jpeg, model=DigitsModel.load())
    assert ledger.reward_queries == 16 and len(events) == 4
    assert result.output.shape == (1, 1, 8, 8) and all(len(event.rewards) == 4 for event in events)
