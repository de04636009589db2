"""Seeds in parallel: every method's grid of seeds run one at a time against as one batch.

    python benchmarks/seed_batch.py [--model digits|gmm|sd-tiny] [--seeds 4] [--repeats 2] [--threads 1]
                                    [--kernels default|batch-invariant]

sd-tiny is the tests' random-weight SD 1.x pipeline (UNet 32/64 channels, 32 px, CFG), saved to
a temporary folder and loaded as a user's checkpoint is, with the brightness reward.

For each method at its defaults (the flags below set only its size): `align` seed by seed, then
`align_batch` with every seed at once (dno, reno and guidance batch their rows themselves; the
others run in lockstep, `noisealign.lockstep`), alternating, in one process. Prints the wall
seconds of the grid both ways and their ratio, the model calls the batch made against the
calls of the seeds run alone (each batched call carries every seed's rows), and the largest
difference of a seed's output between the two: 0 where the kernels compute a row alike at
every batch size (the gmm, and every model under `--kernels batch-invariant`), float rounding
where they do not (torch's default CPU convolutions and matrix products on the digits model and
SD, which is why the CPU default stays one seed at a time unless the kernels are batch-invariant).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from noisealign.align import align
from noisealign.batch import align_batch
from noisealign.methods.base import Problem
from noisealign.methods.beam import Beam
from noisealign.methods.best_of_n import BestOfN
from noisealign.methods.demon import Demon
from noisealign.methods.dno import Dno, DnoConfig
from noisealign.methods.fk import FeynmanKac
from noisealign.methods.guidance import Guidance
from noisealign.methods.path_search import PathSearch
from noisealign.methods.svdd import Svdd
from noisealign.methods.zo_search import ZoSearch
from noisealign.models.registry import load_model
from noisealign.rewards.registry import parse_reward

METHODS = {   # (method, budget): the defaults, sized by the budget
    "best-of-n": (BestOfN, 64),
    "demon": (Demon, 64),
    "fk": (FeynmanKac, 64),
    "svdd": (Svdd, 64),
    "beam": (Beam, 64),
    "zo-search": (ZoSearch, 64),
    "path-search": (PathSearch, 64),
    "dno": (lambda: Dno(DnoConfig(steps=20)), 8),
    "guidance": (Guidance, 64),
}
REWARDS = {"digits": "digit:3", "gmm": "coordinate:0", "sd-tiny": "brightness"}


def load(name: str, folder: str, kernels: str):
    """The model by name; sd-tiny saved to `folder` and loaded from there."""
    if name != "sd-tiny":
        return load_model(name, kernels=kernels)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import diffusers_tiny
    diffusers_tiny.sd_pipeline().save_pretrained(folder)
    return load_model(folder, height=32, width=32, kernels=kernels)


class CallCounter:
    """Counts the denoiser's network calls (not rows) of a model."""

    def __init__(self, model):
        self.calls, inner = 0, model.denoise

        def denoise(x, *rest):
            self.calls += 1
            return inner(x, *rest)
        model.denoise = denoise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(REWARDS), default="digits")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--kernels", choices=["default", "batch-invariant"], default="default",
                        help="the CPU kernels of both ways (noisealign.batch_invariant)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="noisealign-seed-batch-") as folder:
        compare(args, load(args.model, folder, args.kernels))


def compare(args: argparse.Namespace, model) -> None:
    """The table: each method's grid one seed at a time and as one batch, alternating."""
    counter = CallCounter(model)
    problem = Problem(model, parse_reward(REWARDS[args.model]))
    seeds = list(range(args.seeds))
    print(f"{args.model}, reward {REWARDS[args.model]}, {args.seeds} seeds, {args.threads} thread(s), "
          f"{args.kernels} kernels, medians of {args.repeats} alternating repeats")
    print("| method | budget | one at a time: s | batch: s | ratio | model calls alone / batch | max output diff |")
    print("|---|---|---|---|---|---|---|")
    for name in args.methods:
        make, budget = METHODS[name]
        times = {"alone": [], "batch": []}
        for _ in range(args.repeats):
            counter.calls, start = 0, time.perf_counter()
            alone = [align(problem, make(), seed, budget) for seed in seeds]
            times["alone"].append(time.perf_counter() - start)
            calls_alone = counter.calls
            counter.calls, start = 0, time.perf_counter()
            batch = align_batch(problem, make(), seeds, budget)
            times["batch"].append(time.perf_counter() - start)
            calls_batch = counter.calls
        diff = max(float((a.result.output - b.result.output).abs().max()) for a, b in zip(alone, batch))
        one, together = statistics.median(times["alone"]), statistics.median(times["batch"])
        print(f"| {name} | {budget} | {one:.2f} | {together:.2f} | {together / one:.2f} | "
              f"{calls_alone} / {calls_batch} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
