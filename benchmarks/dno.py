"""DNO benchmarks: reward vs cost per estimator, memory. Reward hacking: benchmarks/hacking.py.

    python benchmarks/dno.py curves  [--budget 200 --steps 50 --seeds 2 --q 8]
    python benchmarks/dno.py memory
    python benchmarks/dno.py overhead

curves:  reward of each iterate vs iteration, reward queries and seconds for grad, zo and
         hybrid at one query budget, on digits (digit:3 and jpeg) when the bundled digits model
         is available, else on the 2-D gmm with a linear reward; best-of-N at the same budget
         as the reference. -> results/dno_curves.{csv,png}
memory:  peak RSS of one gradient step at 10, 20, 50 steps with and without checkpointing on
         a random-weight mid-size conv denoiser, one fresh process each. -> results/dno_memory.csv
overhead: what DNO's own bookkeeping costs per iteration besides the model: the unweighted
         regularizer report (no autograd) at the digits size and at Stable Diffusion's, and
         saving / restoring the RNG state around a checkpointed call. Printed only.
checkpointing: see benchmarks/dno_checkpointing.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from noisealign.budget import Ledger
from noisealign.errors import NoiseAlignError
from noisealign.methods.base import Problem, RunContext, StepEvent
from noisealign.methods.best_of_n import BestOfN, BestOfNConfig
from noisealign.methods.dno import Dno, DnoConfig
from noisealign.methods.plain import PlainConfig
from noisealign.models.gmm import GaussianMixture
from noisealign.rewards.simple import Linear

RESULTS = Path(__file__).parent / "results"


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def dno_trace(problem: Problem, config: DnoConfig, seed: int, budget: int | None):
    """Run DNO; return (result, one row per iterate: iteration, queries, nfe, seconds, reward, regularizers)."""
    rows = []

    def observe(event: StepEvent) -> None:
        rows.append({"iteration": event.step, "queries": event.counts["queries"], "nfe": event.counts["nfe"],
                     "seconds": event.counts["seconds"], "reward": float(event.rewards[0]),
                     **{k: v for k, v in event.extras.items() if k.startswith("reg_")}})

    result = Dno(config).run(RunContext(problem, seed, Ledger(query_limit=budget), observe))
    return result, rows


# ---- 1. reward vs cost ---------------------------------------------------------------------

def curve_targets() -> list[tuple[str, Problem, list[tuple[str, dict]]]]:
    """(target, problem, [(run label, DnoConfig overrides)]). JPEG sizes of 8 x 8 digits move in
    whole bytes, so mu = 0.01 perturbations rarely change them: a larger mu is run beside it."""
    from noisealign.models.registry import load_model
    from noisealign.rewards.registry import parse_reward

    try:
        digits = load_model("digits")
    except (NoiseAlignError, ImportError, FileNotFoundError) as error:
        print(f"digits unavailable ({error}); curves on the 2-D gmm", file=sys.stderr)
        v = torch.tensor([1.0, 1.0]) / math.sqrt(2)
        gmm = GaussianMixture.default()
        return [("gmm x.v", Problem(gmm, Linear(v)), [("grad", {"mode": "grad"})]),
                ("gmm x.v (no gradient)", Problem(gmm, Linear(v, differentiable=False)),
                 [("zo", {"mode": "zo"}), ("hybrid", {"mode": "hybrid"})])]
    tuned = {"mu": 0.3, "lr": 0.05}
    return [("digits digit:3", Problem(digits, parse_reward("digit:3")),
             [(mode, {"mode": mode}) for mode in ("grad", "zo", "hybrid")]),
            ("digits jpeg", Problem(digits, parse_reward("jpeg")),
             [("zo", {"mode": "zo"}), ("hybrid", {"mode": "hybrid"}),
              ("zo mu=0.3 lr=0.05", {"mode": "zo", **tuned}), ("hybrid mu=0.3 lr=0.05", {"mode": "hybrid", **tuned})])]


def best_of_n_reward(problem: Problem, seed: int, args: argparse.Namespace) -> tuple[float, float]:
    """Best-of-N at the same query budget, over eta = 1 samples of the same grid: (reward, seconds)."""
    context = RunContext(problem, seed, Ledger(query_limit=args.budget))
    result = BestOfN(BestOfNConfig(sampler=PlainConfig(steps=args.steps, eta=1.0))).run(context)
    return result.reward, context.ledger.seconds


def curves(args: argparse.Namespace) -> None:
    rows, references = [], {}
    for target, problem, runs in curve_targets():
        references[target] = [best_of_n_reward(problem, seed, args) for seed in range(args.seeds)]
        for label, overrides in runs:
            for seed in range(args.seeds):
                config = DnoConfig(**{"steps": args.steps, "q": args.q, "lr": args.lr, **overrides})
                result, trace = dno_trace(problem, config, seed, args.budget)
                rows += [{"target": target, "mode": label, "seed": seed, **row} for row in trace]
                print(f"{target:16s} {label:22s} seed {seed}: {result.info['start_reward']:8.3f} -> "
                      f"{result.reward:8.3f} in {result.info['iterations']} steps, {trace[-1]['queries']} queries, "
                      f"{trace[-1]['seconds']:.0f} s", flush=True)
    write_csv(rows, RESULTS / "dno_curves.csv")
    plot_curves(rows, references, RESULTS / "dno_curves.png")
    print(curves_table(rows, references, args.budget))


def _mean_by_iteration(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    by_iteration: dict[int, list[dict]] = {}
    for row in rows:
        by_iteration.setdefault(row["iteration"], []).append(row)
    xs = [sum(r[key] for r in group) / len(group) for _, group in sorted(by_iteration.items())]
    ys = [sum(r["reward"] for r in group) / len(group) for _, group in sorted(by_iteration.items())]
    return xs, ys


def plot_curves(rows: list[dict], references: dict[str, list[tuple[float, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(r["target"] for r in rows))
    figure, axes = plt.subplots(len(targets), 3, figsize=(13, 3.4 * len(targets)), squeeze=False)
    for row_axes, target in zip(axes, targets):
        for mode in dict.fromkeys(r["mode"] for r in rows if r["target"] == target):
            selected = [r for r in rows if r["target"] == target and r["mode"] == mode]
            for ax, key in zip(row_axes, ["iteration", "queries", "seconds"]):
                xs, ys = _mean_by_iteration(selected, key)
                ax.plot(xs, ys, label=mode)
                ax.set_xlabel(key if key != "queries" else "reward queries")
        best_of_n = sum(r for r, _ in references[target]) / len(references[target])
        for ax in row_axes:
            ax.axhline(best_of_n, color="k", linestyle="--", linewidth=0.8, label="best-of-N, same budget")
        row_axes[0].set_ylabel(f"{target}\nreward (mean over seeds)")
        row_axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def curves_table(rows: list[dict], references: dict[str, list[tuple[float, float]]], budget: int) -> str:
    lines = ["| target | mode | steps | queries | seconds | reward start | reward best | reward last |",
             "|---|---|---|---|---|---|---|---|"]
    keys = dict.fromkeys((r["target"], r["mode"]) for r in rows)
    for target in dict.fromkeys(t for t, _ in keys):
        pairs = references[target]
        lines.append(f"| {target} | best-of-{budget} (eta=1) | | {budget} | {sum(s for _, s in pairs) / len(pairs):.0f} | "
                     f"| {sum(r for r, _ in pairs) / len(pairs):.3f} | |")
    for target, mode in keys:
        selected = [r for r in rows if r["target"] == target and r["mode"] == mode]
        seeds = sorted({r["seed"] for r in selected})
        per_seed = [[r for r in selected if r["seed"] == s] for s in seeds]
        mean = lambda values: sum(values) / len(values)  # noqa: E731
        lines.append(f"| {target} | {mode} | {mean([t[-1]['iteration'] for t in per_seed]):.0f} | "
                     f"{mean([t[-1]['queries'] for t in per_seed]):.0f} | {mean([t[-1]['seconds'] for t in per_seed]):.0f} | "
                     f"{mean([t[0]['reward'] for t in per_seed]):.3f} | "
                     f"{mean([max(r['reward'] for r in t) for t in per_seed]):.3f} | "
                     f"{mean([t[-1]['reward'] for t in per_seed]):.3f} |")
    return "\n".join(lines)


# ---- 3. overhead ---------------------------------------------------------------------------

def seconds_per_call(fn, repeats: int) -> float:
    """Median seconds of fn() over `repeats` calls, after one warm-up call."""
    import statistics
    import time

    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def overhead(args: argparse.Namespace) -> None:
    from torch.utils.checkpoint import checkpoint

    from noisealign.methods.dno import regularizer_report
    from noisealign.methods.dno_regularizer import orderings
    from noisealign.methods.regularizers import regularizers

    load = os.getloadavg()[0]
    print(f"# {torch.get_num_threads()} torch thread(s), load average {load:.1f} on {os.cpu_count()} CPUs "
          "(shared with other jobs)")
    print("| noise (51 tensors of) | regularizer report, orderings kept | the same, orderings redrawn per call | "
          "concentration | chi-norm | moments |\n|---|---|---|---|---|---|")
    for shape, repeats in (((1, 8, 8), 50), ((4, 64, 64), 5)):
        noise = torch.randn(51, *shape)
        kept = seconds_per_call(lambda: regularizer_report(noise, 16), repeats)

        def redrawn() -> None:
            orderings.cache_clear()
            regularizer_report(noise, 16)

        parts = []
        for fn in regularizers(16).values():
            with torch.no_grad():
                parts.append(seconds_per_call(lambda: fn(noise), repeats))
        print(f"| {' x '.join(map(str, shape))} | {kept * 1e3:.2f} ms | {seconds_per_call(redrawn, repeats) * 1e3:.2f} ms | "
              + " | ".join(f"{p * 1e3:.2f} ms" for p in parts) + " |")
    state = torch.get_rng_state()
    x = torch.randn(16, requires_grad=True)
    timed = {preserve: seconds_per_call(lambda: checkpoint(torch.sin, x, use_reentrant=False,
                                                           preserve_rng_state=preserve).sum().backward(), 2000)
             for preserve in (True, False)}
    print(f"torch.get_rng_state {seconds_per_call(torch.get_rng_state, 2000) * 1e6:.1f} us, set_rng_state "
          f"{seconds_per_call(lambda: torch.set_rng_state(state), 2000) * 1e6:.1f} us; a checkpointed forward + "
          f"backward of sin on 16 numbers: {timed[True] * 1e6:.0f} us with the RNG state saved, "
          f"{timed[False] * 1e6:.0f} us without")


# ---- 2. memory -----------------------------------------------------------------------------

def memory(args: argparse.Namespace) -> None:
    probe = Path(__file__).parent / "dno_memory_probe.py"
    rows = []
    for checkpointing in (True, False):
        for steps in (10, 20, 50):
            command = [sys.executable, str(probe), "--steps", str(steps)] + ([] if checkpointing else ["--no-checkpointing"])
            line = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            rows.append(json.loads(line))
            print(line, flush=True)
    write_csv(rows, RESULTS / "dno_memory.csv")
    lines = ["| checkpointing | steps | peak RSS (MB) | peak - before (MB) | x 10-step peak | NFE | seconds |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        base = next(r for r in rows if r["checkpointing"] == row["checkpointing"] and r["steps"] == 10)
        lines.append(f"| {row['checkpointing']} | {row['steps']} | {row['peak_mb']:.0f} | "
                     f"{row['peak_mb'] - row['peak_before_mb']:.0f} | {row['peak_mb'] / base['peak_mb']:.2f} | "
                     f"{row['nfe']} | {row['seconds']:.1f} |")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["curves", "memory", "overhead"])
    parser.add_argument("--budget", type=int, default=200, help="curves: reward queries per run")
    parser.add_argument("--steps", type=int, default=50, help="curves: sampler steps")
    parser.add_argument("--q", type=int, default=8, help="curves: perturbations per zo / hybrid step")
    parser.add_argument("--lr", type=float, default=0.01, help="curves: Adam step size")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per configuration")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the tiny models run 10x+ slower with two on a busy 2-core CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    {"curves": curves, "memory": memory, "overhead": overhead}[args.part](args)


if __name__ == "__main__":
    main()
