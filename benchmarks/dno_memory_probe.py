"""One DNO gradient step on a random-weight mid-size denoiser in a fresh process; prints its peak RSS.

Run by `benchmarks/dno.py memory`, one process per configuration, because ru_maxrss only
ever grows. Prints one JSON line: steps, checkpointing, the peak resident memory before the
step (imports, model, a no-grad warm-up), the peak after it, and the step's seconds.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from random_models import RandomConvDenoiser  # noqa: E402

from noisealign.budget import Ledger  # noqa: E402
from noisealign.methods.base import Problem, RunContext  # noqa: E402
from noisealign.methods.dno import Dno, DnoConfig  # noqa: E402
from noisealign.rewards.simple import Brightness  # noqa: E402


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--no-checkpointing", action="store_true")
    parser.add_argument("--shape", default="4,32,32")
    args = parser.parse_args()
    model = RandomConvDenoiser(shape=tuple(int(s) for s in args.shape.split(",")))
    problem = Problem(model, Brightness())
    with torch.inference_mode():  # warm-up: allocator pools and kernels, outside the measured step
        model.denoise(torch.randn(1, *model.sample_shape), torch.tensor(1.0), None)
    torch.utils.checkpoint.checkpoint(lambda t: t * 1, torch.ones(1, requires_grad=True), use_reentrant=False)
    before = peak_mb()
    ledger = Ledger()
    start = time.perf_counter()
    # iterations=1: score z_0 with the graph, back-propagate, Adam step, score z_1, regenerate
    Dno(DnoConfig(mode="grad", steps=args.steps, iterations=1,
                  checkpointing=not args.no_checkpointing)).run(RunContext(problem, 0, ledger))
    print(json.dumps({"steps": args.steps, "checkpointing": not args.no_checkpointing,
                      "peak_before_mb": round(before, 1), "peak_mb": round(peak_mb(), 1),
                      "seconds": round(time.perf_counter() - start, 2), "nfe": ledger.nfe}))


if __name__ == "__main__":
    main()
