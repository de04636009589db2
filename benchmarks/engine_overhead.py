"""Engine overhead: a full sampling run's wall time over the time of its bare denoiser calls.

For each model and batch size: time `Plain` (counted, guided denoiser; sigma grid; Heun steps;
noise streams; decode) and then the same number of bare `model.denoise` calls at the same batch
size. A ratio of 1.00 means the engine costs nothing beyond the network. Goal: <= 1.10 for the
mid-size net. Usage: python benchmarks/engine_overhead.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from random_models import RandomConvDenoiser  # noqa: E402

from noisealign.budget import Ledger  # noqa: E402
from noisealign.methods.base import Problem, RunContext  # noqa: E402
from noisealign.methods.plain import PlainConfig, sample_plain  # noqa: E402
from noisealign.rewards.simple import Brightness  # noqa: E402


def full_run_seconds(model, batch: int, steps: int, prompt: str) -> tuple[float, int]:
    context = RunContext(Problem(model, Brightness(), prompt), seed=0, ledger=Ledger())
    start = time.perf_counter()
    with torch.inference_mode():
        model.decode(sample_plain(context, range(batch), PlainConfig(steps=steps)))
    return time.perf_counter() - start, context.ledger.denoiser_calls


def bare_calls_seconds(model, batch: int, calls: int, prompt: str, guided: bool) -> float:
    x = torch.randn(batch * (2 if guided else 1), *model.sample_shape)
    cond = model.encode_prompt(prompt)
    if guided:
        cond = torch.cat([cond.expand(batch, *cond.shape[1:]), model.encode_prompt("").expand(batch, *cond.shape[1:])])
    sigma = torch.tensor(1.0)
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(calls):
            model.denoise(x, sigma, cond)
    return time.perf_counter() - start


def measure(name: str, model, batch: int, steps: int, prompt: str, guided: bool, repeats: int) -> dict:
    full_run_seconds(model, batch, 2, prompt)                      # warm-up
    runs = [full_run_seconds(model, batch, steps, prompt) for _ in range(repeats)]
    calls = runs[0][1]
    bare = [bare_calls_seconds(model, batch, calls, prompt, guided) for _ in range(repeats)]
    full_best, bare_best = min(r[0] for r in runs), min(bare)
    return {"model": name, "batch": batch, "calls": calls, "full_s": full_best, "bare_s": bare_best,
            "ratio": full_best / bare_best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=18)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    mid = RandomConvDenoiser()
    params = sum(p.numel() for p in mid.parameters()) / 1e6
    for batch in (1, 16):
        rows.append(measure(f"random-conv {params:.1f}M 4x32x32", mid, batch, args.steps, "", False, args.repeats))
    try:
        from noisealign.models.digits import DigitsModel
    except ImportError:
        DigitsModel = None
    if DigitsModel is not None:
        digits = DigitsModel.load()
        for batch in (1, 64, 512):
            rows.append(measure("digits uncond", digits, batch, args.steps, "", False, args.repeats))
            rows.append(measure("digits '3' + CFG", digits, batch, args.steps, "3", True, args.repeats))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, Heun, {args.steps} grid points, "
          f"best of {args.repeats}")
    print(f"| model | batch | denoiser calls | full run (s) | bare calls (s) | ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['calls']} | {r['full_s']:.4f} | {r['bare_s']:.4f} | {r['ratio']:.3f} |")


if __name__ == "__main__":
    main()
