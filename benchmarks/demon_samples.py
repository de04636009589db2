"""What Demon's high rewards look like: digits samples, plain vs Best-of-N vs Demon at one budget.

For each target digit, three rows of the same seeds: the plain sample, Best-of-N and tanh
Demon (the benchmark's fitted schedule) at budget B, toward `digit:N`, on the unconditional
digits model. Prints each row's rewards; writes benchmarks/results/demon_samples.png.

    PYTHONPATH=src python benchmarks/demon_samples.py [--budget 256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from noisealign.align import align, baseline
from noisealign.imaging import save_grid
from noisealign.methods.base import Problem
from noisealign.methods.best_of_n import BestOfN
from noisealign.methods.demon import Demon, DemonConfig, fit_grid
from noisealign.models.registry import load_model
from noisealign.rewards.registry import parse_reward

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=int, nargs="+", default=[1, 3, 8])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--budget", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model("digits")
    demon = Demon(fit_grid(DemonConfig(K=min(16, args.budget // 16)), model, args.budget))
    rows = []
    for digit in args.digits:
        problem = Problem(model, parse_reward(f"digit:{digit}"))
        for name, run in (("plain", lambda s: baseline(problem, s)),
                          (f"best-of-{args.budget}", lambda s: align(problem, BestOfN(), s, args.budget)),
                          (f"demon-tanh {args.budget}", lambda s: align(problem, demon, s, args.budget))):
            outcomes = [run(seed) for seed in range(args.seeds)]
            rows.append([o.result.output[0] for o in outcomes])
            print(f"digit:{digit} {name:>16}: " + " ".join(f"{o.final_reward:6.2f}" for o in outcomes))
    RESULTS.mkdir(exist_ok=True)
    save_grid(rows, RESULTS / "demon_samples.png")


if __name__ == "__main__":
    main()
