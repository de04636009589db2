"""Demon on the analytic Gaussian mixture: does it raise a smooth reward without leaving the support?

For each reward, prints the mean reward and the mean exact log-density log p(x) (GaussianMixture.
log_density) of plain PF-ODE samples, of Best-of-N and of Demon at the same budget, from the
same seeds, next to the range (min .. max) of the plain samples' log-densities. Demon runs
with its defaults (K 16, T 64: the budget pays for the grid's first steps only) and with K 4
on the grid `fit_grid` fits to the budget (demon steps all the way down to ode_after). Writes
benchmarks/results/demon_gmm.csv.

--dim D embeds the default 2-D mixture in D dimensions (the other means are 0, widths as
before), to see how z* = sqrt(N) normalize(sum b_k z_k) behaves when the reward's direction is
one of many (N = 2 leaves it no random part at all).

    PYTHONPATH=src python benchmarks/demon_gmm.py [--seeds 64] [--budgets 64 256] [--dim 2]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from noisealign.align import align, baseline
from noisealign.methods.base import Problem
from noisealign.methods.best_of_n import BestOfN
from noisealign.methods.demon import Demon, DemonConfig, fit_grid
from noisealign.models.gmm import GaussianMixture
from noisealign.rewards.simple import Coordinate

RESULTS = Path(__file__).parent / "results"


class SquaredDistance:
    """r(x) = -|x_{1,2} - target|^2 on the first two coordinates: its maximum (the origin)
    lies between the modes, off the support."""

    differentiable = True

    def __init__(self, target: tuple[float, float]):
        self.target = torch.tensor(target)
        self.name = f"-|x-{target}|^2"

    def __call__(self, outputs, prompts):
        return -((outputs[:, :2].float() - self.target) ** 2).sum(1)


def embedded_mixture(dim: int) -> GaussianMixture:
    default = GaussianMixture.default()
    means = torch.zeros(len(default.means), dim, dtype=torch.float64)
    means[:, :2] = default.means
    return GaussianMixture(means, default.stds, default.weights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--dim", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = embedded_mixture(args.dim)
    rows = []
    for reward in (Coordinate(0), SquaredDistance((0.0, 0.0))):
        problem = Problem(model, reward)
        plain = torch.cat([baseline(problem, seed).result.sample for seed in range(args.seeds)])
        rows.append(summary(model, reward, "plain (PF-ODE)", 0, plain))
        low, high = float(model.log_density(plain).min()), float(model.log_density(plain).max())
        for budget in args.budgets:
            methods = {"best-of-n": BestOfN(), "demon-tanh": Demon(DemonConfig(demon="tanh")),
                       "demon-boltzmann": Demon(DemonConfig(demon="boltzmann")),
                       "demon-tanh K4 to ode_after": Demon(fit_grid(DemonConfig(K=4), model, budget))}
            for name, method in methods.items():
                samples = torch.cat([align(problem, method, seed, budget).result.sample for seed in range(args.seeds)])
                rows.append(summary(model, reward, name, budget, samples))
        for row in rows[-1 - 4 * len(args.budgets):]:
            row.update(plain_logp_min=low, plain_logp_max=high)
            print(f"{row['reward']:>17} {row['method']:>27} B={row['budget']:<4} reward {row['reward_mean']:8.3f}"
                  f"  mean log p {row['logp_mean']:7.3f}  (plain samples' log p: {low:.2f} .. {high:.2f})")
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / ("demon_gmm.csv" if args.dim == 2 else f"demon_gmm_dim{args.dim}.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def summary(model: GaussianMixture, reward, method: str, budget: int, samples: torch.Tensor) -> dict:
    rewards, log_p = reward(samples, None).double(), model.log_density(samples)
    return {"reward": reward.name, "dim": samples.shape[1], "method": method, "budget": budget, "seeds": len(samples),
            "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
            "logp_mean": float(log_p.mean()), "logp_min": float(log_p.min())}


if __name__ == "__main__":
    main()
