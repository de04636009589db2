"""Reward guidance: its gradient, its tilt, its budget, its replay, and runs stopped midway; every
gradient method (dno, reno, guidance): gmm log densities in result.json, regeneration from the run folder."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from noisealign import cli
from noisealign.align import RunFailed, RunInterrupted, align
from noisealign.batch import align_batch
from noisealign.budget import Ledger
from noisealign.errors import NoiseAlignError
from noisealign.generate import RunRequest, execute, prepare
from noisealign.methods.base import Problem, RunContext
from noisealign.methods.guidance import Guidance, GuidanceConfig, replay, reward_gradient, schedule_weight
from noisealign.methods.plain import PlainConfig, sample_plain
from noisealign.methods.registry import METHODS
from noisealign.models.base import make_denoiser
from noisealign.models.gmm import GaussianMixture
from noisealign.rewards.base import NO_REWARD
from noisealign.rewards.simple import Linear
from test_dno import Scripted, TinyConv, brightness


class Squashed(GaussianMixture):
    """The 3-D mixture seen through a nonlinear decoder, so the gradient must go through it."""

    def decode(self, x0):
        return torch.tanh(x0 / 3)


def test_the_guidance_gradient_matches_a_finite_difference_on_the_gmm():
    model = Squashed(GaussianMixture.spread(3).means, torch.tensor([0.6, 1.0, 0.4]), torch.tensor([0.5, 0.3, 0.2]))
    denoiser = make_denoiser(model, "")
    w = torch.tensor([0.7, -1.2, 0.4], dtype=torch.float64)

    def score(outputs):                                          # a nonlinear reward of the decoded output
        return (torch.sin(2 * outputs) * w).sum(1) + outputs.square().sum(1)

    def r(x, sigma):
        return score(model.decode(denoiser(x, sigma)))

    x = torch.tensor([[1.5, -0.7, 2.2], [-3.0, 0.4, 0.1]], dtype=torch.float64)
    for sigma in (0.3, 2.0, 10.0):
        denoised, reward, g = reward_gradient(denoiser, model.decode, score, x, sigma)
        h, fd = 1e-6, torch.zeros_like(x)
        for j in range(3):
            step = torch.zeros_like(x)
            step[:, j] = h
            fd[:, j] = (r(x + step, sigma) - r(x - step, sigma)) / (2 * h)
        torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(reward, r(x, sigma))
        torch.testing.assert_close(denoised, denoiser(x, sigma))


def test_tilt_samples_a_gaussian_tilted_by_a_linear_reward():
    """For N(mu, s^2 I) and r = a . x, tilt guidance at scale lam samples p exp(lam r) = N(mu + lam s^2 a, s^2 I):
    every sample moves by lam s^2 a from the unguided sample of its seed (the sampler's own spread kept)."""
    mu, s, lam = torch.tensor([[1.0, 2.0]]), 0.7, 1.5
    model = GaussianMixture(mu, torch.tensor([s]), torch.tensor([1.0]))
    a = torch.tensor([0.6, -0.8])
    problem = Problem(model, Linear(a))
    shift = model.tilted(a, lam).means[0] - model.means[0]
    torch.testing.assert_close(shift, lam * s ** 2 * a.double())
    samples = {scale: torch.cat([o.result.sample for o in align_batch(
        problem, Guidance(GuidanceConfig(steps=30, scale=scale, recurrence=1)), range(16), 30)]).double()
        for scale in (0.0, lam)}
    moved = samples[lam] - samples[0.0]                                               # (16, 2), one row per seed
    torch.testing.assert_close(moved, shift.expand_as(moved), rtol=0, atol=0.01 * float(shift.norm()))


def test_scale_zero_without_recurrence_is_the_plain_sampler_bit_for_bit():
    problem = Problem(TinyConv(), brightness())
    for eta in (0.0, 1.0):
        result = Guidance(GuidanceConfig(steps=6, eta=eta, scale=0.0, recurrence=1)).run(RunContext(problem, 2, Ledger()))
        with torch.inference_mode():
            plain = sample_plain(RunContext(problem, 2, Ledger()), [0], PlainConfig(steps=6, eta=eta, solver="euler"))
        assert torch.equal(result.sample, plain)


def test_the_budget_buys_recurrences_and_each_pass_costs_one_query():
    problem = Problem(TinyConv(), brightness())
    plan = lambda budget, **options: Guidance(GuidanceConfig(steps=10, **options)).plan(problem, budget)  # noqa: E731
    assert plan(35).config.recurrence == 3 and plan(1000).config.recurrence == 10 and plan(None).config.recurrence == 1
    with pytest.raises(NoiseAlignError, match="raise --budget to at least 10"):
        plan(9)
    with pytest.raises(NoiseAlignError, match="raise --budget to at least 40"):
        plan(35, recurrence=4)
    with pytest.raises(NoiseAlignError, match="not differentiable"):
        Guidance().plan(Problem(TinyConv(), brightness(False)), 100)
    seen = []
    outcome = align(problem, plan(35), 0, 35, observer=seen.append)
    assert outcome.ledger.reward_queries == 30 and len(seen) == 30
    assert [e.extras["recurrence"] for e in seen[:3]] == [0, 1, 2]
    assert outcome.ledger.nfe == 2 * 30 + 30                    # forward + recomputation per pass, then the replay


def test_recurrence_re_noises_and_repeats_each_step():
    problem = Problem(TinyConv(), brightness())
    once = Guidance(GuidanceConfig(steps=6, scale=0.0, recurrence=1)).run(RunContext(problem, 0, Ledger()))
    twice = Guidance(GuidanceConfig(steps=6, scale=0.0, recurrence=2)).run(RunContext(problem, 0, Ledger()))
    assert twice.noises["renoise"].shape == (6, 1, 1, 1, 8, 8) and once.noises["renoise"].shape == (6, 0, 1, 1, 8, 8)
    assert torch.equal(twice.noises["z"][0, 0], once.noises["z"][0, 0])              # one stream, in the order used:
    assert torch.equal(twice.noises["renoise"][0, 0], once.noises["z"][1, 0])        # z_00, eps_00, z_01, z_10, ...
    assert not torch.equal(once.sample, twice.sample)


def test_the_applied_terms_follow_the_schedule():
    problem = Problem(GaussianMixture.default(), Linear(torch.tensor([1.0, 0.0])))
    for schedule in ("tilt", "constant"):
        config = GuidanceConfig(steps=5, scale=0.5, schedule=schedule, recurrence=1)
        seen = []
        result = Guidance(config).run(RunContext(problem, 0, Ledger(), seen.append))
        sigmas = problem.model.sigmas(5)
        for i, event in enumerate(seen):
            w = schedule_weight(schedule, float(sigmas[i]), float(sigmas[i + 1]), 1.0)
            assert event.extras["guidance_norm"] == pytest.approx(0.5 * w * event.extras["grad_norm"], rel=1e-6)
        assert schedule_weight("tilt", 2.0, 0.0, 1.0) == 4.0 and schedule_weight("constant", 2.0, 1.0, 1.0) == 1.0
        assert float(result.noises["guidance"].abs().sum()) > 0


def test_regenerate_replays_the_run_bit_for_bit_without_a_reward(tmp_path):
    problem = Problem(TinyConv(), brightness())
    method = Guidance(GuidanceConfig(steps=6, scale=30.0)).plan(problem, 12)             # 2 recurrences
    seen = []
    outcome = align(problem, method, 1, 12, observer=seen.append)
    torch.save(outcome.result.noises, tmp_path / "noise.pt")
    rebuilt = METHODS["guidance"].from_config(json.loads(json.dumps(asdict(method.config))))
    again = rebuilt.regenerate(RunContext(Problem(TinyConv(), NO_REWARD), 1, Ledger(query_limit=0)),
                               torch.load(tmp_path / "noise.pt", weights_only=True))
    assert torch.equal(again.sample, outcome.result.sample) and torch.equal(again.output, outcome.result.output)
    states = []                                                  # the replay passes through the run's own states

    def recording(x, sigma):
        states.append(x.clone())
        return make_denoiser(problem.model, "")(x, sigma)

    replay(recording, problem.model, 6, 1.0, outcome.result.noises)
    assert len(states) == len(seen) and all(torch.equal(s, e.x) for s, e in zip(states, seen))
    with pytest.raises(NoiseAlignError, match="do not fit"):
        Guidance(GuidanceConfig(steps=7)).regenerate(RunContext(problem, 1, Ledger()), outcome.result.noises)


@pytest.mark.parametrize("stop", [RuntimeError, KeyboardInterrupt])
def test_keeps_its_run_so_far_when_the_reward_raises_at_its_kth_call(stop):
    class Stops(Scripted):
        def __call__(self, outputs, prompts):
            if self.calls == self.fails_at and stop is KeyboardInterrupt:
                self.calls += 1
                raise KeyboardInterrupt
            return super().__call__(outputs, prompts)

    problem = Problem(TinyConv(), Stops([0.0] * 6, fails_at=3))                     # the 4th pass's query raises
    context = RunContext(problem, 0, Ledger())
    config = GuidanceConfig(steps=6, scale=30.0, recurrence=1)
    with pytest.raises(NoiseAlignError if stop is RuntimeError else KeyboardInterrupt):
        Guidance(config).run(context)
    queries = context.ledger.reward_queries
    kept = context.best_so_far()
    assert context.ledger.reward_queries == queries                                 # keeping spends no query
    terms = kept.noises["guidance"].flatten(1).abs().sum(1)
    assert (terms[:3] > 0).all() and (terms[3:] == 0).all()                         # 3 guided steps, then none
    again = Guidance(config).regenerate(RunContext(problem, 0, Ledger()), kept.noises)
    assert torch.equal(again.output, kept.output)
    with pytest.raises(RunFailed if stop is RuntimeError else RunInterrupted) as stopped:   # the run contract's way
        align(Problem(TinyConv(), Stops([0.0] * 6, fails_at=3)), Guidance(config), 0, 6)
    assert torch.equal(stopped.value.outcome.result.output, kept.output)


@pytest.mark.parametrize("method", ["guidance", "reno", "best-of-n"])
def test_gmm_runs_report_the_exact_log_density_of_the_final_and_the_baseline_sample(tmp_path, method):
    report = execute(prepare(RunRequest(model="gmm", method=method, budget=60, out=str(tmp_path / "run"))))
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    model = GaussianMixture.default()
    final = report.seeds[0].aligned.result.sample
    baseline = report.seeds[0].baseline.result.sample
    assert record["log_density"] == pytest.approx(float(model.log_density(final)[0]), rel=1e-12)
    assert record["baseline_log_density"] == pytest.approx(float(model.log_density(baseline)[0]), rel=1e-12)


GRADIENT_RUNS = {  # every gradient method and DNO mode, at a few steps of the digits model
    "dno-grad": ["--method", "dno", "--dno-mode", "grad", "--steps", "4", "--budget", "3"],
    "dno-zo": ["--method", "dno", "--dno-mode", "zo", "--q", "2", "--steps", "4", "--budget", "7"],
    "dno-hybrid": ["--method", "dno", "--dno-mode", "hybrid", "--q", "2", "--steps", "4", "--budget", "7"],
    "reno": ["--method", "reno", "--steps", "2", "--budget", "3"],
    "guidance": ["--method", "guidance", "--steps", "4", "--budget", "8"],
}


@pytest.mark.parametrize("run", GRADIENT_RUNS)
def test_every_gradient_method_regenerates_its_image_bit_for_bit_from_the_run_folder(tmp_path, capsys, run):
    out = tmp_path / run
    assert cli.main(["generate", "--quiet", "--out", str(out), *GRADIENT_RUNS[run]]) == 0
    assert cli.main(["regenerate", str(out)]) == 0 and "identical" in capsys.readouterr().out
