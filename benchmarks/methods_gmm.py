"""What each method's samples converge to, on the Gaussian mixture tilted by a linear reward.

On the default 2-D mixture (gmm model) with r(x) = a . x, a = (1, 0), the target
p(x) exp(lambda r(x)) / Z is the mixture `GaussianMixture.tilted(a, lambda)`, known exactly.
For lambda = 0.25 and 0.5 this script reports each method's mode masses (share of samples
nearest each component's mean) and sample mean against that target:

- FK steering (difference potential, `sample`, 128 DDPM steps, scored every 8) for N = 2 .. 128
  particles, 4000 independent systems per N run as one batch (`fk.steer` with groups),
  and FK's default optimizer setting (max potential, lambda 10, `best`) for contrast;
- the DDPM sampler's own limit: exact importance reweighting of 100,000 of its plain samples
  by exp(lambda r), the law FK converges to as N grows on that grid;
- SVDD-PM with alpha = 1 / lambda (its nominal target is the same tilt), Demon (defaults) and
  Best-of-N, one `align` run per seed, budget 256.

    PYTHONPATH=src python benchmarks/methods_gmm.py [--seeds 200]

Writes benchmarks/results/methods_gmm.csv and prints the table of docs/methods.md.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

from noisealign.align import align
from noisealign.budget import Ledger
from noisealign.engine import sample_ancestral
from noisealign.methods.base import Problem, RunContext
from noisealign.methods.best_of_n import BestOfN
from noisealign.methods.candidates import CandidateValues, NoisyStep, ValueConfig
from noisealign.methods.demon import Demon
from noisealign.methods.fk import FkConfig, choose, steer
from noisealign.methods.svdd import Svdd, SvddConfig
from noisealign.models.gmm import GaussianMixture
from noisealign.rewards.simple import Linear

RESULTS = Path(__file__).parent / "results"
GMM = GaussianMixture.default()
A = torch.tensor([1.0, 0.0])
STEPS, EVERY, GROUPS, BUDGET = 128, 8, 4000, 256


def statistics(x: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[list[float], list[float]]:
    """(mode masses, mean) of samples x (n, 2), optionally weighted."""
    x = x.double()
    w = torch.full((len(x),), 1 / len(x), dtype=torch.float64) if weights is None else weights
    nearest = ((x[:, None] - GMM.means[None]) ** 2).sum(-1).argmin(1)
    masses = torch.zeros(3, dtype=torch.float64).index_add_(0, nearest, w)
    return masses.tolist(), (w[:, None] * x).sum(0).tolist()


def fk(lam: float, particles: int, config: FkConfig, seed: int = 0) -> torch.Tensor:
    """One FK result per group, GROUPS groups as one batch."""
    context = RunContext(Problem(GMM, Linear(A)), 0, Ledger())
    generator = torch.Generator().manual_seed(seed)
    rows, sigmas = GROUPS * particles, GMM.sigmas(STEPS)
    uniform = lambda g: torch.rand(g, generator=generator, dtype=torch.float64)  # noqa: E731
    system = steer(context.denoiser, sigmas, NoisyStep(), float(sigmas[0]) * torch.randn(rows, 2, generator=generator),
                   config, EVERY, lambda: torch.randn(rows, 2, generator=generator),
                   CandidateValues(context, ValueConfig(candidate_batch=rows)), uniform, groups=GROUPS)
    return system.x[choose(system, config.select, uniform, GROUPS)]


def sampler_limit(lam: float) -> tuple[list[float], list[float]]:
    """The DDPM grid's own tilt: its plain samples reweighted by exp(lambda r) exactly."""
    generator = torch.Generator().manual_seed(1)
    sigmas = GMM.sigmas(STEPS)
    x = float(sigmas[0]) * torch.randn(100_000, 2, generator=generator)
    noises = [torch.randn(100_000, 2, generator=generator) for _ in range(STEPS)]
    context = RunContext(Problem(GMM, Linear(A)), 0, Ledger())
    samples = sample_ancestral(context.denoiser, x, sigmas, noises, 1.0).double()
    return statistics(samples, torch.softmax(lam * samples @ A.double(), 0))


def per_seed(method, seeds: int) -> torch.Tensor:
    problem = Problem(GMM, Linear(A))
    return torch.cat([align(problem, method, seed, BUDGET).result.output for seed in range(seeds)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200, help="runs of SVDD, Demon and Best-of-N")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []

    def add(lam: float, method: str, stats: tuple[list[float], list[float]], samples: int, target: tuple):
        """One row; errors are summed absolute differences from the exact target's statistics, and
        mass_se, mean_se the standard errors of one mass and one mean coordinate of that many exact draws."""
        (masses, mean), (target_masses, target_mean) = stats, target
        rows.append({"lambda": lam, "method": method, "samples": samples,
                     **{f"mass_{k}": round(m, 4) for k, m in enumerate(masses)},
                     "mean_x": round(mean[0], 3), "mean_y": round(mean[1], 3),
                     "mass_error": round(sum(abs(m - t) for m, t in zip(masses, target_masses)), 4),
                     "mean_error": round(sum(abs(m - t) for m, t in zip(mean, target_mean)), 3),
                     "mass_se": round(max(t * (1 - t) for t in target_masses) ** 0.5 / samples ** 0.5, 4),
                     "mean_se": round(spread / samples ** 0.5, 3)})
        print(rows[-1], flush=True)

    started = time.perf_counter()
    optimizers = {f"demon defaults B={BUDGET}": per_seed(Demon(), args.seeds),
                  f"best-of-n B={BUDGET}": per_seed(BestOfN(), args.seeds)}   # neither depends on lambda
    for lam in (0.25, 0.5):
        # the target's statistics from 400,000 exact draws (mode masses by the same nearest-mean rule)
        draws = GMM.tilted(A, lam).sample_exact(400_000, torch.Generator().manual_seed(2))
        target, spread = statistics(draws), float(draws.std(0).max())   # spread: the larger coordinate std
        add(lam, "tilted target (exact draws)", target, 400_000, target)
        add(lam, "prior p (exact)", statistics(GMM.sample_exact(200_000, torch.Generator().manual_seed(3))),
            200_000, target)
        add(lam, f"DDPM {STEPS} steps reweighted (FK's limit)", sampler_limit(lam), 100_000, target)
        for n in (2, 8, 32, 128):
            config = FkConfig(lam=lam, potential="difference", select="sample")
            add(lam, f"fk difference sample N={n}", statistics(fk(lam, n, config)), GROUPS, target)
        add(lam, "fk defaults (max, lambda 10, best) N=32", statistics(fk(lam, 32, FkConfig())), GROUPS, target)
        svdd = per_seed(Svdd(SvddConfig(alpha=1 / lam)), args.seeds)
        add(lam, f"svdd alpha={1 / lam:g} B={BUDGET}", statistics(svdd), args.seeds, target)
        for name, samples in optimizers.items():
            add(lam, name, statistics(samples), args.seeds, target)
    print(f"{time.perf_counter() - started:.0f} s")
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "methods_gmm.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
