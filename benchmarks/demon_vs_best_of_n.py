"""Demon (tanh, Boltzmann) against Best-of-N at equal reward queries, on the bundled digits model.

The unconditional digits model is aligned toward `digit:N` for several target digits and
seeds (and toward the non-differentiable `jpeg` at a couple of budgets). Every number is the
reward of the method's final output, measured outside its budget.

The `demon-tanh` and `demon-boltzmann` rows are `Demon(DemonConfig(demon=...))` with no other
option: the library's defaults, which `Demon.plan` resolves for the budget (K = default_K(B),
the grid fit_grid fits to B), i.e. exactly what `noisealign generate --method demon --demon
tanh --budget B` runs. The row `demon-tanh --K 16 --steps 64` is the paper's K and grid at
every budget, for comparison (the budget then pays for the grid's first steps only).
Best-of-N with budget n keeps the best of plain samples 0..n-1 of the seed's streams, so the
max over the first n of one pool of 4x the largest budget is every Best-of-n at once
(checked against the method). Its seconds are n times the pool's per-sample cost (batches of
512 plain samples plus the reward).
Best-of-1 is the plain sample of the seed (the run's baseline).
Goal: demon-tanh with budget B reaches at least the mean reward Best-of-N reaches with 4B.

Writes benchmarks/results/demon_vs_best_of_n.csv (means over targets x seeds, with standard
errors), demon_vs_best_of_n_runs.csv (every run), demon_vs_best_of_n_queries.png and
demon_vs_best_of_n_seconds.png; with `--tag T`, demon_vs_best_of_n_T*.csv and no plots.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/demon_vs_best_of_n.py --workers 1 \\
        | tee benchmarks/results/demon_vs_best_of_n.log           # 28 min on one shared core
    # held-out seeds, the tanh row only (docs/demon.md):
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/demon_vs_best_of_n.py --workers 1 --first-seed 100 \\
        --tag seeds100 --methods demon-tanh --jpeg-budgets | tee benchmarks/results/demon_vs_best_of_n_seeds100.log
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from noisealign.align import align
from noisealign.budget import Ledger
from noisealign.methods.base import Problem, RunContext
from noisealign.methods.best_of_n import BestOfN
from noisealign.methods.demon import Demon, DemonConfig
from noisealign.methods.plain import PlainConfig, sample_plain
from noisealign.models.registry import load_model
from noisealign.rewards.registry import parse_reward

RESULTS = Path(__file__).parent / "results"
STEM = "demon_vs_best_of_n"


PAPER = "demon-tanh --K 16 --steps 64"
DIGIT_DEMONS = {
    # the library's defaults: K and the grid resolved for the budget by Demon.plan
    "demon-tanh": DemonConfig(demon="tanh"),
    "demon-boltzmann": DemonConfig(demon="boltzmann"),
    # the paper's K 16 and T 64 at every budget (from 720 queries on, the grid has no step left to pay)
    PAPER: DemonConfig(demon="tanh", K=16, grid_points=64),
}
UNFITTED_BUDGETS = (64, 128, 256, 512)
JPEG_DEMONS = {
    "demon-tanh": DemonConfig(demon="tanh"),
    "demon-tanh --ode-after 0.01": DemonConfig(demon="tanh", ode_after=0.01),  # JPEG size is fine detail
}


def demon_run(task: tuple[str, str, str, int, int]) -> dict:
    """One `--method demon` run; its final reward is scored outside the budget."""
    family, name, spec, seed, budget = task
    torch.set_num_threads(1)
    config = (DIGIT_DEMONS if family == "digit" else JPEG_DEMONS)[name]
    outcome = align(Problem(load_model("digits"), parse_reward(spec)), Demon(config), seed, budget)
    info = outcome.result.info  # K and the grid as Demon.plan resolved them for the budget
    return {"method": name, "reward": spec, "seed": seed, "budget": budget, "K": info["K"],
            "grid_points": info["grid_points"], "queries": outcome.ledger.reward_queries,
            "final_reward": outcome.final_reward, "seconds": outcome.seconds, "nfe": outcome.ledger.nfe,
            "degenerate_steps": outcome.result.info["degenerate_steps"]}


def best_of_n_pool(seed: int, specs: list[str], size: int, chunk: int = 512) -> tuple[dict, dict]:
    """Rewards of plain samples 0..size-1 of `seed` under each reward spec, and each spec's
    seconds per sample (sampling plus that reward's scoring)."""
    model = load_model("digits")
    rewards = {spec: parse_reward(spec) for spec in specs}
    context = RunContext(Problem(model, rewards[specs[0]]), seed, Ledger())
    scores: dict[str, list[torch.Tensor]] = {spec: [] for spec in specs}
    seconds = dict.fromkeys(["sampling", *specs], 0.0)
    with torch.inference_mode():
        for start in range(0, size, chunk):
            began = time.perf_counter()
            outputs = model.decode(sample_plain(context, range(start, min(start + chunk, size)), PlainConfig()))
            seconds["sampling"] += time.perf_counter() - began
            for spec, reward in rewards.items():
                began = time.perf_counter()
                scores[spec].append(reward(outputs, [""] * len(outputs)).float())
                seconds[spec] += time.perf_counter() - began
    per_sample = {spec: (seconds["sampling"] + seconds[spec]) / size for spec in specs}
    return {spec: torch.cat(values) for spec, values in scores.items()}, per_sample


def pool_runs(seed: int, budgets: dict[str, list[int]]) -> list[dict]:
    """Best-of-n for every reward spec and every n in budgets[spec], from one pool of the seed."""
    torch.set_num_threads(1)
    scores, per_sample = best_of_n_pool(seed, list(budgets), max(max(b) for b in budgets.values()))
    return [{"method": "best-of-n", "reward": spec, "seed": seed, "budget": n, "K": None, "grid_points": None,
             "queries": n,
             "final_reward": float(scores[spec][:n].max()), "seconds": per_sample[spec] * n, "nfe": None,
             "degenerate_steps": None}
            for spec, ns in budgets.items() for n in ns]


def check_pool(spec: str, seed: int, budget: int, runs: list[dict]) -> None:
    """A pooled Best-of-N equals the method run on its own."""
    alone = align(Problem(load_model("digits"), parse_reward(spec)), BestOfN(), seed, budget).final_reward
    pooled = next(r["final_reward"] for r in runs
                  if (r["method"], r["reward"], r["seed"], r["budget"]) == ("best-of-n", spec, seed, budget))
    assert math.isclose(alone, pooled, rel_tol=1e-6, abs_tol=1e-6), (alone, pooled)


def summarize(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["reward"].split(":")[0], run["method"], run["budget"]), []).append(run)
    rows = []
    for (family, method, budget), members in sorted(groups.items()):
        rewards = torch.tensor([m["final_reward"] for m in members], dtype=torch.float64)
        rows.append({"reward": family, "method": method, "budget": budget, "runs": len(members),
                     "reward_mean": float(rewards.mean()),
                     "reward_sem": float(rewards.std() / math.sqrt(len(members))) if len(members) > 1 else 0.0,
                     "seconds_mean": sum(m["seconds"] for m in members) / len(members),
                     "queries_mean": sum(m["queries"] for m in members) / len(members)})
    return rows


def plot(rows: list[dict], family: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for axis, label in (("queries_mean", "reward queries"), ("seconds_mean", "seconds per sample (wall)")):
        figure, ax = plt.subplots(figsize=(5.5, 4))
        for method in sorted({r["method"] for r in rows if r["reward"] == family}):
            line = [r for r in rows if r["method"] == method and r["reward"] == family]
            ax.errorbar([r[axis] for r in line], [r["reward_mean"] for r in line],
                        yerr=[r["reward_sem"] for r in line], marker="o", capsize=3, label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.set_ylabel(f"mean final {family} reward (log-odds)")
        ax.set_title(f"digits: Demon vs Best-of-N ({family}:N, mean over digits x seeds)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
        figure.tight_layout()
        figure.savefig(RESULTS / f"{STEM}_{axis.split('_')[0]}.png", dpi=120)
        plt.close(figure)


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=int, nargs="+", default=[1, 3, 8])
    parser.add_argument("--seeds", type=int, default=8, help="seeds per target digit")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    parser.add_argument("--jpeg-budgets", type=int, nargs="*", default=[64, 256])
    parser.add_argument("--methods", nargs="+", default=list(DIGIT_DEMONS), choices=list(DIGIT_DEMONS),
                        help="the Demon rows on digit:N")
    parser.add_argument("--tag", default="", help="write demon_vs_best_of_n_TAG*.csv, no plots (e.g. held-out seeds)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--replot", action="store_true", help="redraw the plots and tables from the saved CSV")
    args = parser.parse_args()
    if args.replot:
        rows = [{k: v if k in ("reward", "method") else float(v) for k, v in row.items()}
                for row in csv.DictReader(open(RESULTS / f"{STEM}.csv"))]
        plot(rows, "digit")
        report(rows, args.budgets)
        return
    torch.set_num_threads(1)
    specs = [f"digit:{d}" for d in args.digits]
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    budgets, jpeg_budgets = tuple(args.budgets), tuple(args.jpeg_budgets)
    tasks = [("digit", name, spec, seed, b) for name in args.methods for spec in specs for seed in seeds
             for b in budgets if name != PAPER or b in UNFITTED_BUDGETS]
    tasks += [("jpeg", name, "jpeg", seed, b) for name in JPEG_DEMONS for seed in seeds for b in jpeg_budgets]
    times_four = lambda bs: sorted({1} | {b * f for b in bs for f in (1, 4)})  # noqa: E731  (n = 1 is plain)
    pooled = {spec: times_four(budgets) for spec in specs}
    if jpeg_budgets:
        pooled["jpeg"] = times_four(jpeg_budgets)
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        pools = [pool.submit(pool_runs, seed, pooled) for seed in seeds]
        runs = list(pool.map(demon_run, sorted(tasks, key=lambda t: -t[-1]), chunksize=1))
        runs += [run for future in pools for run in future.result()]
    print(f"{len(runs)} runs in {time.perf_counter() - started:.0f} s")
    check_pool(specs[0], seed=seeds[min(1, len(seeds) - 1)], budget=min(budgets), runs=runs)

    rows = summarize(runs)
    RESULTS.mkdir(exist_ok=True)
    stem = f"{STEM}_{args.tag}" if args.tag else STEM
    write_csv(runs, RESULTS / f"{stem}_runs.csv")
    write_csv(rows, RESULTS / f"{stem}.csv")
    if not args.tag:
        plot(rows, "digit")
    report(rows, args.budgets)


def report(rows: list[dict], budgets: list[int]) -> None:
    table = {(r["reward"], r["method"], r["budget"]): r for r in rows}
    for family in sorted({r["reward"] for r in rows}):
        print(f"\n{family}: mean final reward +- sem (mean seconds)")
        for method in sorted({r["method"] for r in rows if r["reward"] == family}):
            cells = [table.get((family, method, b)) for b in sorted({r["budget"] for r in rows if r["reward"] == family})]
            print(f"{method:>28}: " + "  ".join(f"B={c['budget']}: {c['reward_mean']:.3f}+-{c['reward_sem']:.3f} "
                                                f"({c['seconds_mean']:.2f}s)" for c in cells if c))
    print("\ngoal: demon-tanh(B) >= best-of-n(4B)  (difference +- its standard error, runs taken as independent)")
    for b in budgets:
        demon, best = table.get(("digit", "demon-tanh", b)), table.get(("digit", "best-of-n", 4 * b))
        if demon and best:
            verdict = "met" if demon["reward_mean"] >= best["reward_mean"] else "NOT met"
            gap, sem = demon["reward_mean"] - best["reward_mean"], math.hypot(demon["reward_sem"], best["reward_sem"])
            print(f"  B={b}: demon-tanh {demon['reward_mean']:.3f} vs best-of-{4 * b} {best['reward_mean']:.3f} "
                  f"({gap:+.2f} +- {sem:.2f}): {verdict}")
    cell = lambda key: (f"{table[key]['reward_mean']:.2f} +- {table[key]['reward_sem']:.2f}"  # noqa: E731
                        if key in table else "-")
    lines = {"demon-tanh": lambda b: cell(("digit", "demon-tanh", b)),
             "demon-boltzmann": lambda b: cell(("digit", "demon-boltzmann", b)),
             PAPER: lambda b: cell(("digit", PAPER, b)),
             "best-of-B": lambda b: cell(("digit", "best-of-n", b)),
             "best-of-4B": lambda b: cell(("digit", "best-of-n", 4 * b))}
    print("\n| budget B | " + " | ".join(str(b) for b in budgets) + " |")
    print("|---" * (len(budgets) + 1) + "|")
    for name, line in lines.items():
        cells = [line(b) for b in budgets]
        if any(c != "-" for c in cells):
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
