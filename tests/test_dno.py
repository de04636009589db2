"""DNO: gradients through the sampler, checkpointing, the penalty, estimators, bookkeeping."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
from torch import nn

from noisealign.align import RunFailed, align
from noisealign.batch import align_batch
from noisealign.budget import Ledger
from noisealign.configs import config_from_dict
from noisealign.engine import karras_sigmas
from noisealign.errors import NoiseAlignError, NonFiniteReward
from noisealign.methods import dno
from noisealign.methods.base import Problem, RunContext
from noisealign.methods.dno import (
    Dno, DnoConfig, generate, injecting_steps, make_optimizer, stack_variables, unstack_variables,
)
from noisealign.methods.guidance import Guidance, GuidanceConfig
from noisealign.methods.dno_checkpointing import CheckpointPlan, saved_bytes
from noisealign.methods.dno_regularizer import PENALTY_FLOOR, concentration_log_probs, concentration_penalty
from noisealign.methods.regularizers import regularizers as dno_regularizers
from noisealign.methods.plain import PlainConfig, sample_plain
from noisealign.methods.registry import METHODS
from noisealign.methods.reno import Reno, RenoConfig
from noisealign.methods.zo import image_gradient, zo_gradient
from noisealign.models.base import make_denoiser
from noisealign.models.gmm import GaussianMixture
from noisealign.rewards.simple import Linear


class TinyConv:
    """A random-weight EDM-preconditioned conv denoiser on 1 x 8 x 8 states (DiffusionModel)."""

    name, sample_shape = "tiny-conv", (1, 8, 8)
    sigma_min, sigma_max = 0.002, 80.0
    default_steps, default_guidance, default_solver = 6, 1.0, "euler"

    def __init__(self):
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 1, 3, padding=1))
        self.net.eval().requires_grad_(False)

    def encode_prompt(self, prompt):
        return torch.zeros(1, 0)

    def denoise(self, x, sigma, cond):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        c_in, c_skip, c_out = (1 + sigma ** 2).rsqrt(), 1 / (1 + sigma ** 2), sigma * (1 + sigma ** 2).rsqrt()
        noise_level = (sigma.log() / 4).expand(len(x), 1, *x.shape[2:])
        return c_skip * x + c_out * self.net(torch.cat([c_in * x, noise_level], dim=1))

    def decode(self, x0):
        return torch.sigmoid(x0)

    def sigmas(self, steps):
        return karras_sigmas(steps, self.sigma_min, self.sigma_max)

    def prior_std(self, sigma):
        return sigma


class Scripted:
    """Brightness plus a bonus that depends only on how many times it was called (no gradient
    from the bonus): makes a chosen iterate the best regardless of what the optimizer does.
    With `fails_at` its call of that index raises, as a reward server going down."""

    name, differentiable = "scripted", True

    def __init__(self, bonus: list[float], fails_at: int | None = None):
        self.bonus, self.calls, self.fails_at = bonus, 0, fails_at

    def __call__(self, outputs, prompts):
        if self.calls == self.fails_at:
            raise RuntimeError("the reward server is down")
        value = outputs.float().flatten(1).mean(1) + self.bonus[self.calls]
        self.calls += 1
        return value


def run(model, reward, seed=0, budget=None, observer=None, **options):
    ledger = Ledger(query_limit=budget)
    problem = Problem(model, reward)
    result = Dno(DnoConfig(**options)).run(RunContext(problem, seed, ledger, observer))
    return result, ledger, problem


def brightness(differentiable=True):
    return Linear(torch.full((1, 8, 8), 1 / 64), differentiable)


# ---- config and registry ------------------------------------------------------------------

def test_config_round_trips_through_json_and_rejects_bad_values():
    config = DnoConfig(mode="hybrid", steps=7, iterations=3, gamma=0.5, q=5)
    assert METHODS["dno"].from_config(json.loads(json.dumps(asdict(config)))).config == config
    with pytest.raises(NoiseAlignError, match="mode"):
        DnoConfig(mode="adam")
    with pytest.raises(NoiseAlignError, match="--q 0: need a finite value above 0"):
        DnoConfig(q=0)
    with pytest.raises(NoiseAlignError, match="--regularizer 'l2'"):
        DnoConfig(regularizer="l2")
    with pytest.raises(NoiseAlignError, match="unknown DnoConfig option"):
        config_from_dict(DnoConfig, {"steps": 5, "K": 3})


def test_registry_entry_uses_dno_defaults_and_flags():
    entry = METHODS["dno"]
    parser = argparse.ArgumentParser()
    entry.add_arguments(parser.add_argument_group("dno"))
    config = entry.build(parser.parse_args([])).config
    assert (config.steps, config.eta, config.mode, config.checkpointing) == (50, 1.0, "auto", "auto")
    config = entry.build(parser.parse_args(
        "--steps 9 --eta 0.5 --dno-mode zo --lr 0.1 --iterations 4 --gamma 2 --q 3 --mu 0.1 "
        "--grad-clip 2 --checkpointing none --memory-budget 2 --micro-batch 2 --regularizer chi-norm".split())).config
    assert config == DnoConfig(mode="zo", steps=9, eta=0.5, lr=0.1, iterations=4, gamma=2.0, q=3, mu=0.1,
                               grad_clip=2.0, checkpointing="none", memory_budget=2.0, micro_batch=2, regularizer="chi-norm")


# ---- gradients through the sampler --------------------------------------------------------

def _variables_and_loss(model, steps, checkpointing, ledger=None):
    denoiser = make_denoiser(model, "")
    if ledger is not None:
        from noisealign.budget import CountedDenoiser
        denoiser = CountedDenoiser(denoiser, ledger)
    sigmas = model.sigmas(steps)
    g = torch.Generator().manual_seed(1)
    z_T, z = torch.randn(1, *model.sample_shape, generator=g), torch.randn(steps, 1, *model.sample_shape, generator=g)
    active = injecting_steps(sigmas, 1.0)
    variables = stack_variables(z_T, z, active).requires_grad_(True)
    _, output = generate(denoiser, model, sigmas, 1.0, *unstack_variables(variables, z, active), checkpointing)
    loss = (output * torch.linspace(-1, 1, output.numel()).reshape(output.shape)).sum()
    loss.backward()
    return variables, active


def test_gradients_reach_every_optimized_noise():
    model, steps = TinyConv(), 6
    variables, active = _variables_and_loss(model, steps, checkpointing=True)
    assert active == list(range(steps - 1))  # the step into sigma = 0 injects no noise
    per_noise = variables.grad.flatten(1).norm(dim=1)
    assert len(per_noise) == steps and (per_noise > 0).all(), per_noise


def test_checkpointing_recomputes_a_denoiser_that_draws_random_numbers_exactly():
    class Jittery(TinyConv):
        def denoise(self, x, sigma, cond):
            return super().denoise(x, sigma, cond) * (1 + 0.1 * torch.rand(()))

    grads = {checkpointing: _variables_and_loss(Jittery(), 6, checkpointing)[0].grad  # Jittery() seeds torch
             for checkpointing in (False, True)}
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-6, atol=1e-7)


def test_checkpointed_and_plain_backprop_agree_and_recomputation_counts_as_nfe():
    model, steps = TinyConv(), 6
    ledgers = {True: Ledger(), False: Ledger()}
    plain, _ = _variables_and_loss(model, steps, checkpointing=False, ledger=ledgers[False])
    checkpointed, _ = _variables_and_loss(model, steps, checkpointing=True, ledger=ledgers[True])
    torch.testing.assert_close(checkpointed.grad, plain.grad, rtol=1e-6, atol=1e-7)
    assert ledgers[False].nfe == steps and ledgers[True].nfe == 2 * steps


def test_a_checkpointed_step_records_no_graph_in_the_forward_and_one_in_the_recomputation():
    """Reentrant checkpointing: the forward runs with autograd off (no graph, no saved-tensor hooks),
    the backward pass recomputes each step with it on."""
    class Recording(TinyConv):
        def denoise(self, x, sigma, cond):
            modes.append(torch.is_grad_enabled())
            return super().denoise(x, sigma, cond)

    modes, steps = [], 4
    _variables_and_loss(Recording(), steps, checkpointing=True)
    assert modes == [False] * steps + [True] * steps


def _pass(plan, steps=6):
    """(gradient, NFE) of one pass of TinyConv's sampler under `plan`."""
    ledger = Ledger()
    variables, _ = _variables_and_loss(TinyConv(), steps, plan, ledger)
    return variables.grad, ledger.nfe


def test_auto_checkpoints_as_few_steps_as_the_budget_allows_with_the_same_gradient():
    steps = 6
    exact, nfe = _pass(False, steps)
    assert nfe == steps and torch.equal(_pass(True, steps)[0], exact)
    probe = CheckpointPlan("auto")
    assert torch.equal(_pass(probe, steps)[0], exact) and probe.step_bytes > 0
    assert probe.report() == {"checkpointed_steps": 0, "activation_bytes_per_step": probe.step_bytes}     # gigabytes free: nothing to save
    for kept in (0, 2, steps):
        plan = CheckpointPlan("auto", budget_gb=(kept + 0.5) * probe.step_bytes / 1e9)
        first, first_nfe = _pass(plan, steps)          # its first call runs plain, to be measured
        again, again_nfe = _pass(plan, steps)
        assert torch.equal(first, exact) and torch.equal(again, exact)
        assert plan.report()["checkpointed_steps"] == steps - kept
        assert (first_nfe, again_nfe) == (2 * steps - max(kept, 1), 2 * steps - kept)


def test_saved_bytes_counts_activations_not_weights():
    weight = torch.randn(256, 256)
    x = torch.randn(4, 256, requires_grad=True)
    output, saved = saved_bytes(lambda v: torch.tanh(v.mul(2) @ weight), x)
    assert torch.equal(output, torch.tanh(x.mul(2) @ weight))
    assert saved == x.numel() * 4       # tanh's output; the matmul keeps only the weight, a leaf: not counted


def test_bad_checkpointing_options_are_refused_and_older_runs_bools_still_read():
    with pytest.raises(NoiseAlignError, match="--checkpointing 'some'"):
        DnoConfig(checkpointing="some")
    with pytest.raises(NoiseAlignError, match="--memory-budget 0"):
        DnoConfig(memory_budget=0)
    assert DnoConfig(checkpointing=True).checkpointing == "all" and DnoConfig(checkpointing=False).checkpointing == "none"


def _runs_under_each_setting(model, reward, prompt="", **options):
    """{setting: (output, noises, info)} of the same 2-iteration DNO run, with auto also on a
    budget that keeps 2 steps' graphs."""
    def one(**config):
        result = Dno(DnoConfig(iterations=2, **options, **config)).run(
            RunContext(Problem(model, reward, prompt), 5, Ledger()))
        return result.output, result.noises, result.info

    runs = {setting: one(checkpointing=setting) for setting in ("none", "all", "auto")}
    runs["auto-2"] = one(memory_budget=2.5 * runs["auto"][2]["activation_bytes_per_step"] / 1e9)
    return runs


def _assert_identical(runs, steps):
    output, noises, _ = runs["none"]
    for setting, (other, other_noises, info) in runs.items():
        assert torch.equal(other, output) and all(torch.equal(other_noises[k], noises[k]) for k in noises), setting
    assert [runs[s][2]["checkpointed_steps"] for s in runs] == [0, steps, 0, steps - 2]


def test_checkpointing_settings_give_identical_runs_on_digits():
    from noisealign.models.digits import DigitsModel
    from noisealign.rewards.digit import DigitLogOdds

    _assert_identical(_runs_under_each_setting(DigitsModel.load(), DigitLogOdds.from_argument("3"), "3", steps=8), 8)


def test_checkpointing_settings_give_identical_runs_on_a_tiny_sd_pipeline(tmp_path_factory):
    import diffusers_tiny as tiny

    model = tiny.load(tiny.saved(tiny.sd_pipeline(), tmp_path_factory, "sd-dno"))
    reward = Linear(torch.linspace(-1, 1, 3 * tiny.SIZE ** 2).reshape(3, tiny.SIZE, tiny.SIZE))
    _assert_identical(_runs_under_each_setting(model, reward, "a cat", steps=4), 4)


def test_dno_starts_from_its_own_eta_one_sample_not_the_baseline_sampler():
    model, seen, reward = TinyConv(), [], brightness()
    result, _, problem = run(model, reward, iterations=1, steps=6, observer=seen.append)
    context = RunContext(problem, 0, Ledger())
    with torch.inference_mode():
        own = sample_plain(context, [0], PlainConfig(steps=6, eta=1.0))
        baseline = sample_plain(context, [0], PlainConfig())        # the model's default sampler
    assert torch.equal(seen[0].x, own) and not torch.equal(own, baseline)
    assert result.info["start_reward"] == float(reward(model.decode(own), [""]))


# ---- the probability regularization -------------------------------------------------------

def _hand_penalty(x: np.ndarray, d: int = 4) -> float:
    n = x.size // d
    rows = x.reshape(-1)[: n * d].reshape(n, d)
    m = rows.mean(0)
    log_p_mean = min(-n * (m ** 2).sum() / (2 * d), -math.log(2))
    M = np.linalg.norm(rows.T @ rows / n - np.eye(d), ord=2)
    t = max(math.sqrt(1 + M) - 1 - math.sqrt(d / n), 0.0)
    log_p_cov = min(-n * t ** 2 / 2, -math.log(2))
    return -(log_p_mean + log_p_cov)


def test_penalty_matches_its_formula_by_hand():
    rng = np.random.default_rng(0)
    shifted = torch.tensor(rng.normal(0.8, 1.6, size=(3, 21, 1)))  # 63 elements: 15 rows, 3 dropped
    value = float(concentration_penalty(shifted, permutations=0))
    assert value == pytest.approx(_hand_penalty(shifted.numpy()), rel=1e-12)
    log_p_mean, log_p_cov = concentration_log_probs(shifted.reshape(-1)[:60].reshape(15, 4))
    assert log_p_mean < -math.log(2) - 1 and log_p_cov < -math.log(2) - 1  # neither term clamped
    near_zero = torch.tensor([[0.9, -1.1, 1.0, -0.95], [-1.0, 1.05, -0.9, 1.0]] * 4)
    assert float(concentration_penalty(near_zero, permutations=0)) == pytest.approx(PENALTY_FLOOR)


def test_penalty_averages_over_permutations_and_is_differentiable():
    x = torch.randn(400, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 1.3 + 0.2
    generator = torch.Generator().manual_seed(0)
    orders = [x] + [x[torch.randperm(400, generator=generator)] for _ in range(3)]
    expected = np.mean([_hand_penalty(o.numpy()) for o in orders])
    x.requires_grad_(True)
    value = concentration_penalty(x, permutations=3)
    assert float(value.detach()) == pytest.approx(expected, rel=1e-10)
    value.backward()
    assert x.grad.abs().sum() > 0


def test_every_regularizer_is_reported_unweighted_whatever_is_selected_and_gamma():
    keys = ("reg_concentration", "reg_chi_norm", "reg_moments")
    for regularizer, gamma in [("concentration", 0.0), ("chi-norm", 1.0), ("moments", 5.0)]:
        seen = []
        result, _, _ = run(TinyConv(), brightness(), iterations=3, steps=6, gamma=gamma, regularizer=regularizer,
                           observer=seen.append)
        assert result.info["regularizer"] == regularizer
        assert all(set(keys) <= set(event.extras) for event in seen)
        assert all(f"{key}_{when}" in result.info for key in keys for when in ("start", "final", "last"))
        assert result.info["reg_concentration_start"] >= PENALTY_FLOOR - 1e-9
        assert ["grad_norm" in event.extras for event in seen] == [True, True, True, False]


def test_the_selected_regularizer_is_the_one_gamma_weighs(monkeypatch):
    calls = []
    monkeypatch.setattr(dno, "regularizers", lambda permutations: {
        name: (lambda noise, fn=fn, name=name: calls.append((name, noise.requires_grad)) or fn(noise))
        for name, fn in dno_regularizers(permutations).items()})
    run(TinyConv(), brightness(), iterations=2, steps=6, gamma=1.0, regularizer="chi-norm")
    differentiated = {name for name, grad in calls if grad}
    assert differentiated == {"chi-norm"}
    outputs = {r: run(TinyConv(), brightness(), iterations=4, steps=6, gamma=50.0, lr=0.1, regularizer=r)[0].output
               for r in ("chi-norm", "moments")}
    assert not torch.equal(outputs["chi-norm"], outputs["moments"])


def test_penalty_gaussian_sits_at_its_floor_and_1_05_scaled_far_above():
    """Stable Diffusion's size: 4 x 64 x 64 latents, z_T plus 50 steps (n = 208,896 rows)."""
    z = torch.randn(51, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    gaussian = concentration_penalty(z)
    assert PENALTY_FLOOR - 1e-9 <= float(gaussian) < PENALTY_FLOOR + 0.2
    scaled = 1.05 * z.clone().requires_grad_(True)
    value = concentration_penalty(scaled)
    assert float(value.detach()) > 100
    (gradient,) = torch.autograd.grad(value, scaled)
    assert float((gradient * scaled.detach()).sum()) > 0                   # shrinking the noise lowers it


# ---- optimizer, budget, bookkeeping -------------------------------------------------------

def test_adam_has_no_weight_decay():
    z = torch.randn(3, 1, 4).requires_grad_(True)
    optimizer = make_optimizer(z, lr=0.1)
    assert type(optimizer) is torch.optim.Adam
    assert all(group["weight_decay"] == 0 for group in optimizer.param_groups)
    before = z.detach().clone()
    z.grad = torch.zeros_like(z)
    optimizer.step()
    assert torch.equal(z.detach(), before)


def test_zero_reward_gradient_leaves_every_iterate_unchanged():
    """End to end: with weight decay the noise would shrink even though r gives no gradient."""
    seen = []
    constant = Linear(torch.zeros(1, 8, 8))
    run(TinyConv(), constant, iterations=3, steps=6, gamma=0.0, observer=seen.append)
    assert len(seen) == 4 and all(torch.equal(event.x, seen[0].x) for event in seen)


@pytest.mark.parametrize("mode,budget,q,steps_expected", [("grad", 5, 4, 4), ("zo", 10, 3, 2), ("hybrid", 13, 3, 3)])
def test_budget_pays_the_steps_and_is_never_exceeded(mode, budget, q, steps_expected):
    result, ledger, _ = run(TinyConv(), brightness(mode == "grad"), budget=budget, mode=mode, q=q, steps=4)
    assert result.info["iterations"] == steps_expected
    assert ledger.reward_queries == 1 + steps_expected * (1 if mode == "grad" else q + 1) <= budget


def test_budget_that_cannot_pay_one_step_and_missing_stop_rule_are_clear_errors():
    with pytest.raises(NoiseAlignError, match="raise --budget to at least 5"):
        run(TinyConv(), brightness(False), budget=4, mode="zo", q=3, steps=4)
    with pytest.raises(NoiseAlignError, match="--iterations or --budget"):
        run(TinyConv(), brightness(), steps=4)
    result, ledger, _ = run(TinyConv(), brightness(), budget=3, iterations=10, steps=4)
    assert result.info["iterations"] == 2 and ledger.reward_queries == 3


def test_the_best_iterate_and_its_noise_are_kept_not_the_last():
    seen = []
    reward = Scripted([0.0, 0.0, 5.0, 0.0, 0.0, 0.0])              # iterate 2 is made the best
    result, _, problem = run(TinyConv(), reward, iterations=5, steps=6, observer=seen.append)
    rewards = [float(event.rewards) for event in seen]
    assert result.info["best_iteration"] == 2 and result.reward == max(rewards) == rewards[2]
    assert torch.equal(result.sample, seen[2].x) and not torch.equal(result.sample, seen[-1].x)
    regenerated = Dno(DnoConfig(iterations=5, steps=6)).regenerate(RunContext(problem, 0, Ledger()), result.noises)
    assert torch.equal(regenerated.sample, seen[2].x)


def test_a_reward_failing_mid_run_leaves_the_best_iterate_kept():
    seen, ledger = [], Ledger()
    reward = Scripted([0.0, 0.0, 5.0, 0.0, 0.0], fails_at=5)      # iterate 2 is the best; query 6 raises
    context = RunContext(Problem(TinyConv(), reward), 0, ledger, seen.append)
    config = DnoConfig(iterations=8, steps=6)
    with pytest.raises(Exception, match="server is down"):   # the ledger may wrap it
        Dno(config).run(context)
    assert len(seen) == 5
    queries = ledger.reward_queries
    kept = context.best_so_far()
    assert ledger.reward_queries == queries                            # keeping spends no query
    assert kept.reward == float(seen[2].rewards) and kept.info["best_iteration"] == 2
    assert kept.info["start_reward"] == float(seen[0].rewards)
    assert torch.equal(kept.sample, seen[2].x)
    again = Dno(config).regenerate(RunContext(context.problem, 0, Ledger()), kept.noises)
    assert torch.equal(again.sample, kept.sample) and torch.equal(again.output, kept.output)

    nothing_scored = RunContext(Problem(TinyConv(), Scripted([0.0], fails_at=0)), 0, Ledger())
    with pytest.raises(Exception, match="server is down"):
        Dno(config).run(nothing_scored)
    assert nothing_scored.best_so_far() is None


def test_the_kept_result_of_a_finished_run_is_its_result():
    context = RunContext(Problem(TinyConv(), Scripted([0.0, 3.0, 0.0, 0.0])), 0, Ledger())
    result = Dno(DnoConfig(iterations=3, steps=6)).run(context)
    kept = context.best_so_far()
    assert torch.equal(kept.sample, result.sample) and torch.equal(kept.output, result.output)
    assert all(torch.equal(kept.noises[k], result.noises[k]) for k in result.noises)
    assert kept.reward == result.reward and kept.info.items() <= result.info.items()


@pytest.mark.parametrize("mode", ["grad", "hybrid"])
def test_same_seed_same_bits_other_seed_other_result(mode):
    options = dict(mode=mode, iterations=3, steps=5, q=3, gamma=0.1)
    reward = brightness(mode == "grad")
    first, _, _ = run(TinyConv(), reward, seed=4, **options)
    second, _, _ = run(TinyConv(), reward, seed=4, **options)
    other, _, _ = run(TinyConv(), reward, seed=5, **options)
    assert torch.equal(first.output, second.output)
    assert all(torch.equal(first.noises[k], second.noises[k]) for k in first.noises)
    assert not torch.equal(first.output, other.output)


def test_regenerate_reproduces_the_saved_result_bit_for_bit(tmp_path):
    config = DnoConfig(mode="hybrid", iterations=3, steps=6, q=4, gamma=0.1)
    result, _, problem = run(TinyConv(), brightness(False), **asdict(config))
    torch.save(result.noises, tmp_path / "noise.pt")
    (tmp_path / "config.json").write_text(json.dumps(asdict(config)))
    method = METHODS["dno"].from_config(json.loads((tmp_path / "config.json").read_text()))
    context = RunContext(problem, 0, Ledger())
    regenerated = method.regenerate(context, torch.load(tmp_path / "noise.pt", weights_only=True))
    assert torch.equal(regenerated.sample, result.sample) and torch.equal(regenerated.output, result.output)
    assert float(problem.reward(regenerated.output, [""])) == result.reward
    with pytest.raises(NoiseAlignError, match="do not fit"):
        Dno(DnoConfig(steps=7)).regenerate(context, result.noises)


def test_nan_reward_stops_the_run():
    class NaN:
        name, differentiable = "nan", True

        def __call__(self, outputs, prompts):
            return outputs.flatten(1).mean(1) * float("nan")

    with pytest.raises(NonFiniteReward):
        run(TinyConv(), NaN(), iterations=2, steps=4)


def test_modes_resolve_from_the_reward():
    result, _, _ = run(TinyConv(), brightness(False), iterations=1, steps=4, q=2)
    assert result.info["mode"] == "hybrid"
    result, _, _ = run(TinyConv(), brightness(True), iterations=1, steps=4)
    assert result.info["mode"] == "grad"
    with pytest.raises(NoiseAlignError, match="not differentiable"):
        run(TinyConv(), brightness(False), iterations=1, steps=4, mode="grad")


def test_perturbed_samples_run_as_micro_batches():
    steps, q, micro_batch, iterations = 4, 5, 2, 2
    _, ledger, _ = run(TinyConv(), brightness(False), mode="zo", iterations=iterations, steps=steps, q=q,
                       micro_batch=micro_batch)
    calls_per_pass = steps
    chunks = math.ceil(q / micro_batch)
    # iterates z_0 .. z_T, the perturbed chunks of each step, the final regeneration
    assert ledger.denoiser_calls == calls_per_pass * ((iterations + 1) + iterations * chunks + 1)
    assert ledger.nfe == steps * ((iterations + 1) + iterations * q + 1)


# ---- estimators ---------------------------------------------------------------------------

def test_zo_estimator_is_unbiased_on_a_quadratic():
    """f(z) = -1/2 (z - a)^T H (z - a): E[g] = grad f(z) = -H (z - a) exactly, any mu."""
    generator = torch.Generator().manual_seed(0)
    dim, q, mu = 6, 200_000, 0.05
    A = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    H, a = A @ A.T / dim + torch.eye(dim, dtype=torch.float64), torch.randn(dim, generator=generator, dtype=torch.float64)
    z = torch.randn(dim, generator=generator, dtype=torch.float64)

    def f(x):
        return -0.5 * (((x - a) @ H) * (x - a)).sum(-1)

    xi = torch.randn(q, dim, generator=generator, dtype=torch.float64)
    estimate = zo_gradient(f(z), f(z + mu * xi), xi, mu)
    terms = ((f(z + mu * xi) - f(z)) / mu)[:, None] * xi        # the q i.i.d. terms it averages
    standard_error = terms.std(dim=0) / math.sqrt(q)
    truth = -H @ (z - a)
    assert ((estimate - truth).abs() < 4 * standard_error).all(), (estimate, truth, standard_error)
    assert (standard_error < 0.05 * truth.norm()).all()         # the check has power


def test_hybrid_image_direction_aligns_with_a_linear_reward():
    generator = torch.Generator().manual_seed(0)
    v = torch.randn(1, 3, 4, 4, generator=generator)
    x0 = torch.randn(1, 3, 4, 4, generator=generator)
    outputs = x0 + 0.01 * torch.randn(400, 3, 4, 4, generator=generator)
    reward = lambda x: (x * v).flatten(1).sum(1)                  # noqa: E731
    g = image_gradient(reward(x0)[0], reward(outputs), x0, outputs)
    assert float(g.norm()) == pytest.approx(1.0, abs=1e-2)
    cosine = float((g * v).sum() / v.norm())
    assert cosine > 0.9


# ---- it does what it is for ---------------------------------------------------------------

def test_grad_mode_raises_a_reward_on_the_exact_gmm():
    model = GaussianMixture.default()
    result, ledger, _ = run(model, Linear(torch.tensor([1.0, 1.0])), iterations=10, steps=20, lr=0.05)
    assert result.reward > result.info["start_reward"] + 1.0
    assert result.info["reg_concentration_start"] >= PENALTY_FLOOR - 1e-9
    assert ledger.nfe == 20 * (11 + 1)  # 11 forwards, 1 regeneration; auto checkpoints nothing on this tiny model
    assert result.info["checkpointed_steps"] == 0


# ---- seeds as one batch (dno, reno, guidance) ------------------------------------------------

BATCHED = {
    "dno": lambda: Dno(DnoConfig(steps=8, iterations=4, gamma=1.0, regularizer="moments")),
    "dno-hybrid": lambda: Dno(DnoConfig(steps=8, iterations=2, mode="hybrid", q=3, gamma=1.0)),
    "reno": lambda: Reno(RenoConfig(steps=8, iterations=4, lr=0.5)),
    "guidance": lambda: Guidance(GuidanceConfig(steps=8, recurrence=2, scale=2.0)),
}


@pytest.mark.parametrize("name", list(BATCHED))
def test_align_batch_is_bit_identical_to_one_seed_at_a_time_on_cpu(name):
    """On the gmm, whose kernels compute each row alike at any batch size (docs/gradient_methods.md)."""
    problem = Problem(GaussianMixture.spread(8), Linear(torch.linspace(-1, 1, 8)))
    seeds, budget = [3, 4, 5], 40
    batched = align_batch(problem, BATCHED[name](), seeds, budget)
    for seed, outcome in zip(seeds, batched):
        alone = align(problem, BATCHED[name](), seed, budget)
        assert torch.equal(outcome.result.output, alone.result.output) and outcome.final_reward == alone.final_reward
        assert all(torch.equal(outcome.result.noises[k], alone.result.noises[k]) for k in alone.result.noises)
        assert outcome.result.info == alone.result.info
        counts = lambda ledger: (ledger.reward_queries, ledger.nfe, ledger.denoiser_calls)  # noqa: E731
        assert counts(outcome.ledger) == counts(alone.ledger)


def test_a_batch_stopped_by_its_reward_keeps_every_seeds_best_so_far():
    seen = [[], [], []]
    problem = Problem(TinyConv(), Scripted([0.0, 0.0, 5.0, 0.0], fails_at=4))   # one call scores all 3 seeds
    with pytest.raises(RunFailed) as stopped:
        align_batch(problem, Dno(DnoConfig(steps=5, iterations=5)), [0, 1, 2], None, [s.append for s in seen])
    kept = stopped.value.outcomes
    assert [o.status for o in kept] == ["failed"] * 3 and [len(s) for s in seen] == [4, 4, 4]
    for seed, outcome in enumerate(kept):
        assert outcome.result.info["best_iteration"] == 2 and outcome.result.reward == float(seen[seed][2].rewards)
        again = Dno(DnoConfig(steps=5)).regenerate(RunContext(problem, seed, Ledger()), outcome.result.noises)
        assert torch.equal(again.output, outcome.result.output)
