"""FK steering, SVDD, beam search, zero-order search and search over paths: budget, regenerate,
stopped runs, their reductions to each other, and FK against the tilted mixture known in closed form."""

from __future__ import annotations

import json
import math

import pytest
import torch

from noisealign import cli
from noisealign.align import RunInterrupted, align
from noisealign.budget import Ledger
from noisealign.errors import NoiseAlignError
from noisealign.methods.base import Problem, RunContext
from noisealign.methods.beam import Beam, BeamConfig
from noisealign.methods.candidates import CandidateValues, NoisyStep, ValueConfig
from noisealign.methods.fk import POTENTIALS, FeynmanKac, FkConfig, choose, scoring_steps, steer
from noisealign.methods.lineage import Genealogy
from noisealign.methods.path_search import PathSearch, PathSearchConfig
from noisealign.methods.plain import Plain, PlainConfig
from noisealign.methods.registry import METHODS
from noisealign.methods.resampling import systematic
from noisealign.methods.svdd import Svdd, SvddConfig
from noisealign.methods.zo_search import ZoSearch, ZoSearchConfig, neighbours_of
from noisealign.models.gmm import GaussianMixture
from noisealign.models.registry import load_model
from noisealign.rewards.registry import parse_reward
from noisealign.rewards.simple import Linear

GMM = GaussianMixture.default()
A = torch.tensor([1.0, 0.0])
SEARCHES = ("fk", "svdd", "beam", "zo-search", "path-search")
SMALL = {  # each method's small run on the digits model
    "fk": lambda: FeynmanKac(FkConfig(particles=4, steps=8)),
    "svdd": lambda: Svdd(SvddConfig(candidates=4)),
    "beam": lambda: Beam(BeamConfig(beams=2, candidates=3)),
    "zo-search": lambda: ZoSearch(ZoSearchConfig(neighbours=4, steps=6)),
    "path-search": lambda: PathSearch(PathSearchConfig(paths=2, branches=3)),
}


@pytest.fixture(scope="module")
def digits():
    return load_model("digits")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- the tilted mixture -------------------------------------------------------------------------

def test_tilted_mixture_is_p_times_exp_lambda_r():
    """log p_tilted(x) - log p(x) - lam a.x is one constant (-log Z) everywhere."""
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 4
    for lam in (0.25, 0.5, 2.0):
        gap = GMM.tilted(A, lam).log_density(x) - GMM.log_density(x) - lam * x @ A.double()
        assert float(gap.max() - gap.min()) < 1e-9
    draws = GMM.tilted(A, 0.5).sample_exact(100_000, torch.Generator().manual_seed(1))
    tilted = GMM.tilted(A, 0.5)
    assert torch.allclose(draws.mean(0), (tilted.weights[:, None] * tilted.means).sum(0), atol=0.03)


# ---- FK against the tilted mixture --------------------------------------------------------------

GROUPS, STEPS, EVERY = 1000, 128, 8


def fk_samples(lam: float, particles: int) -> torch.Tensor:
    """One FK `sample` (difference potential) per group, GROUPS independent systems as one batch."""
    context = RunContext(Problem(GMM, Linear(A)), 0, Ledger())
    generator = torch.Generator().manual_seed(int(100 * lam) + particles)
    rows, sigmas = GROUPS * particles, GMM.sigmas(STEPS)
    uniform = lambda g: torch.rand(g, generator=generator, dtype=torch.float64)  # noqa: E731
    config = FkConfig(lam=lam, potential="difference", select="sample")
    system = steer(context.denoiser, sigmas, NoisyStep("ancestral", 1.0), float(sigmas[0]) * torch.randn(
        rows, 2, generator=generator), config, EVERY, lambda: torch.randn(rows, 2, generator=generator),
        CandidateValues(context, ValueConfig(candidate_batch=rows)), uniform, groups=GROUPS)
    return system.x[choose(system, "sample", uniform, GROUPS)].double()


def errors(samples: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mode mass error, mean error, and their standard errors under the exact tilted mixture)."""
    exact = GMM.tilted(A, lam).sample_exact(200_000, torch.Generator().manual_seed(2))
    masses, exact_masses = mode_masses(samples), mode_masses(exact)
    mass_se = (exact_masses * (1 - exact_masses) / len(samples)).sqrt()
    return (masses - exact_masses, samples.mean(0) - exact.mean(0), mass_se, exact.std(0) / math.sqrt(len(samples)))


def mode_masses(samples: torch.Tensor) -> torch.Tensor:
    """The share of samples nearest each component's (untilted) mean."""
    nearest = ((samples[:, None] - GMM.means[None]) ** 2).sum(-1).argmin(1)
    return torch.bincount(nearest, minlength=3).double() / len(samples)


@pytest.fixture(scope="module")
def fk_runs():
    return {(lam, n): fk_samples(lam, n) for lam, n in [(0.25, 32), (0.5, 2), (0.5, 8), (0.5, 32)]}


@pytest.mark.parametrize("lam", [0.25, 0.5])
def test_fk_difference_sample_reproduces_the_tilted_mixture(fk_runs, lam):
    mass_error, mean_error, mass_se, mean_se = errors(fk_runs[lam, 32], lam)
    assert (mass_error.abs() <= 4 * mass_se).all(), (mass_error, mass_se)
    assert (mean_error.abs() <= 4 * mean_se).all(), (mean_error, mean_se)
    prior_gap = (GMM.tilted(A, lam).weights - GMM.weights).abs().max()
    assert mass_error.abs().max() < prior_gap / 5    # far closer to the tilted masses than to the prior's


def test_fk_error_falls_as_particles_grow(fk_runs):
    total = [float(sum(e.abs().sum() for e in errors(fk_runs[0.5, n], 0.5)[:2])) for n in (2, 8, 32)]
    assert total[0] > total[1] > total[2], total


@pytest.mark.parametrize("potential", POTENTIALS)
def test_every_potential_ends_at_lambda_times_the_final_reward(potential):
    """Without resampling, each particle's log-weight is the product of its potentials: lam r(x_0)."""
    context = RunContext(Problem(GMM, Linear(A)), 0, Ledger())
    generator = torch.Generator().manual_seed(3)
    sigmas = GMM.sigmas(12)
    system = steer(context.denoiser, sigmas, NoisyStep(), 80 * torch.randn(16, 2, generator=generator),
                   FkConfig(lam=0.7, potential=potential, ess_threshold=0.0), 3,
                   lambda: torch.randn(16, 2, generator=generator), CandidateValues(context, ValueConfig()),
                   lambda g: torch.rand(g, generator=generator, dtype=torch.float64))
    assert torch.allclose(system.log_w, 0.7 * system.x.double() @ A.double(), atol=1e-5)


def test_systematic_resampling_keeps_floor_or_ceil_of_n_p():
    weights = torch.tensor([[0.05, 0.3, 0.15, 0.5]], dtype=torch.float64)
    for u in (0.0, 0.37, 0.99):
        counts = torch.bincount(systematic(weights.log(), torch.tensor([u], dtype=torch.float64))[0], minlength=4)
        assert ((counts - 4 * weights[0]).abs() < 1).all() and counts.sum() == 4


# ---- every method: budget, regenerate, any reward, any model ------------------------------------

@pytest.mark.parametrize("name", SEARCHES)
@pytest.mark.parametrize("model_name, spec, budget", [("digits", "jpeg", 24), ("gmm", "coordinate:0", 40)])
def test_within_budget_and_regenerates_bit_for_bit(name, model_name, spec, budget, digits):
    model = digits if model_name == "digits" else GMM
    problem = Problem(model, parse_reward(spec))
    method = SMALL[name]() if model_name == "digits" else METHODS[name].method()
    events = []
    outcome = align(problem, method, seed=2, budget=budget, observer=events.append)
    assert 0 < outcome.ledger.reward_queries <= budget and events
    planned = method.plan(problem, budget)
    again = planned.regenerate(RunContext(problem, 2, Ledger(query_limit=0)), outcome.result.noises)
    assert torch.equal(again.output, outcome.result.output)
    assert align(problem, method, seed=2, budget=budget).final_reward == outcome.final_reward


@pytest.mark.parametrize("name", SEARCHES)
def test_a_budget_that_pays_nothing_is_one_line(name, digits):
    with pytest.raises(NoiseAlignError, match=f"^{name.split('-')[0]}.*needs.*raise --budget") as raised:
        METHODS[name].method().plan(Problem(digits, parse_reward("digit:3")), 1)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("name", SEARCHES)
def test_a_stopped_run_hands_back_a_sample_that_regenerates(name, digits):
    calls = []

    def reward(outputs, prompts):
        calls.append(len(outputs))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return outputs.float().flatten(1).mean(1)

    reward.name, reward.differentiable = "stops", True
    problem = Problem(digits, reward)
    with pytest.raises(RunInterrupted) as raised:
        align(problem, SMALL[name](), seed=1, budget=200)
    kept = raised.value.outcome.result
    # the third query was charged, then stopped the run; keeping the best spent none (the 4th call
    # is the run's report of the kept sample, outside the budget)
    assert sum(calls[:3]) == raised.value.outcome.ledger.reward_queries and calls[3:] == [1]
    again = SMALL[name]().plan(problem, 200).regenerate(RunContext(problem, 1, Ledger(query_limit=0)), kept.noises)
    assert torch.equal(again.output, kept.output)


# ---- reductions ---------------------------------------------------------------------------------

def test_svdd_with_one_candidate_and_fk_with_one_particle_are_plain_ddpm(digits):
    problem = Problem(digits, parse_reward("digit:3"))
    plain = Plain(PlainConfig(steps=10, eta=1.0)).run(RunContext(problem, 4, Ledger()))
    svdd = align(problem, Svdd(SvddConfig(candidates=1, steps=10)), seed=4, budget=9).result
    fk = align(problem, FeynmanKac(FkConfig(particles=1, steps=10)), seed=4, budget=9).result
    assert torch.equal(svdd.output, plain.output) and torch.equal(fk.output, plain.output)


def test_beam_with_one_beam_is_greedy_svdd(digits):
    problem = Problem(digits, parse_reward("digit:8"))
    beam = align(problem, Beam(BeamConfig(beams=1, candidates=4)), seed=5, budget=32)
    svdd = align(problem, Svdd(SvddConfig(candidates=4, alpha=0.0)), seed=5, budget=32)
    assert torch.equal(beam.result.output, svdd.result.output)
    assert torch.equal(beam.result.noises["z"], svdd.result.noises["z"])


def test_svdd_with_a_temperature_samples_among_candidates(digits):
    problem = Problem(digits, parse_reward("digit:8"))
    greedy = align(problem, Svdd(SvddConfig(candidates=4)), seed=5, budget=32).result
    soft = align(problem, Svdd(SvddConfig(candidates=4, alpha=100.0)), seed=5, budget=32).result
    assert not torch.equal(greedy.noises["z"], soft.noises["z"])


# ---- pieces -------------------------------------------------------------------------------------

def test_genealogy_follows_parents_back_to_z_t():
    family = Genealogy(torch.arange(3.0)[:, None])
    family.record(torch.tensor([2, 0, 2]), torch.tensor([[10.0], [11.0], [12.0]]))
    family.record(torch.tensor([1, 1, 0]), torch.tensor([[20.0], [21.0], [22.0]]))
    path = family.lineage(2)       # member 2 <- member 0 of gen 1 (noise 22) <- member 2 of z_T (noise 10)
    assert path["ancestors"].tolist() == [2, 0, 2]
    assert path["z_T"].tolist() == [[2.0]] and path["z"].flatten().tolist() == [10.0, 22.0]


def test_zo_neighbours_lie_on_the_pivots_sphere_at_angle_lambda():
    z = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    y = neighbours_of(z, torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(7)), 0.4)
    cosine = torch.nn.functional.cosine_similarity(y.flatten(1).double(), z.flatten(1).double())
    assert torch.allclose(y.flatten(1).norm(dim=1), z.norm().expand(5), rtol=1e-5)
    assert torch.allclose(cosine, torch.full((5,), math.cos(0.4), dtype=torch.float64), atol=1e-5)


def test_path_search_rounds_tile_the_grid():
    config = PathSearchConfig(start=0.2, forward_steps=1, backward_steps=3)
    rounds = config.rounds(20)
    assert rounds[0][0] == 4 and rounds[-1][2] == 20
    assert all(j == i - 1 and (k == j + 3 or k == 20) for i, j, k in rounds)
    assert all(a[2] == b[0] for a, b in zip(rounds, rounds[1:]))


def test_budget_maps_onto_particles_candidates_and_rounds(digits):
    problem = Problem(digits, parse_reward("digit:3"))
    fk = FeynmanKac().plan(problem, 256).config
    assert fk.particles * len(scoring_steps(fk.steps, fk.resample_every)) == 51 * 5   # 5 scorings on 18 steps
    assert FeynmanKac(FkConfig(particles=16)).plan(problem, 64).config.resample_every == 5  # 16 x 4 scorings
    svdd = Svdd().plan(problem, 256).config
    assert (svdd.candidates, svdd.steps) == (8, 33)          # 32 valued steps on a 33-point grid ending at 0
    path = PathSearch().plan(problem, 256).config
    assert len(path.rounds(path.steps)) * path.paths * path.branches == 256


def test_cli_flags_and_regenerate(tmp_path, capsys):
    out = tmp_path / "fk"
    assert cli.main(["generate", "--quiet", "--method", "fk", "--particles", "4", "--lambda", "2", "--potential",
                     "difference", "--select", "sample", "--resample-every", "3", "--ess-threshold", "0.8",
                     "--steps", "9", "--budget", "16", "--reward", "jpeg", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["method"]["lam"] == 2 and result["reward_queries"] == 12
    assert cli.main(["regenerate", str(out)]) == 0 and "identical" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = capsys.readouterr().out
    for flag in ("--particles", "--lambda", "--potential", "--select", "--resample-every", "--ess-threshold",
                 "--alpha", "--beams", "--neighbours", "--paths", "--branches"):
        assert flag in text
