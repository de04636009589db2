"""Demon (tanh, Boltzmann) against Best-of-N at equal reward queries, on the bundled digits model.

The unconditional digits model is aligned toward `digit:N` for several target digits and
seeds. Demon runs once per budget B; its final reward is the reward of its final output,
measured outside the budget. Best-of-N comes from one pool of plain PF-ODE samples per seed
(sample i drawn from the seed's stream i, exactly what `--method best-of-n` draws): the max
over the first n of a fixed pool is an honest Best-of-n curve for every n at once, up to 4x
the largest Demon budget. Best-of-N's seconds are n times its pool's per-sample cost (batches
of 512 plain samples plus the reward).

Goal: demon-tanh with budget B reaches at least the mean reward Best-of-N reaches with 4B.

Writes benchmarks/results/demon_vs_best_of_n.csv (means over digits x seeds),
demon_vs_best_of_n_runs.csv (every run), demon_vs_best_of_n_queries.png and
demon_vs_best_of_n_seconds.png.

    PYTHONPATH=src python benchmarks/demon_vs_best_of_n.py [--workers 2]
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


def demon_config(demon: str, budget: int) -> DemonConfig:
    """The Demon compared: the library's defaults but for the demon's kind."""
    return DemonConfig(demon=demon)


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


def demon_run(task: tuple[str, str, int, int]) -> dict:
    demon, spec, seed, budget = task
    torch.set_num_threads(1)
    problem = Problem(load_model("digits"), parse_reward(spec))
    outcome = align(problem, Demon(demon_config(demon, budget)), seed, budget)
    return {"method": f"demon-{demon}", "reward": spec, "seed": seed, "budget": budget,
            "queries": outcome.ledger.reward_queries, "final_reward": outcome.final_reward,
            "seconds": outcome.seconds, "nfe": outcome.ledger.nfe,
            "degenerate_steps": outcome.result.info["degenerate_steps"]}


def pool_runs(seed: int, specs: list[str], budgets: list[int]) -> list[dict]:
    torch.set_num_threads(1)
    scores, per_sample = best_of_n_pool(seed, specs, max(budgets))
    return [{"method": "best-of-n", "reward": spec, "seed": seed, "budget": n, "queries": n,
             "final_reward": float(scores[spec][:n].max()), "seconds": per_sample[spec] * n, "nfe": None,
             "degenerate_steps": None}
            for spec in specs for n in budgets]


def check_pool_is_best_of_n(spec: str, seed: int, n: int) -> None:
    """The pool's max over its first n equals what the best-of-n method returns with budget n."""
    problem = Problem(load_model("digits"), parse_reward(spec))
    method = align(problem, BestOfN(), seed, n).final_reward
    pool = float(best_of_n_pool(seed, [spec], n)[0][spec].max())
    assert math.isclose(method, pool, rel_tol=1e-5, abs_tol=1e-5), (method, pool)


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
        for method in sorted({r["method"] for r in rows}):
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
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    parser.add_argument("--jpeg-budgets", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    specs = [f"digit:{d}" for d in args.digits]
    seeds = range(args.seeds)
    check_pool_is_best_of_n(specs[0], seed=0, n=64)

    tasks = [(demon, spec, seed, budget) for demon in ("tanh", "boltzmann") for spec in specs
             for seed in seeds for budget in args.budgets]
    tasks += [("tanh", "jpeg", seed, budget) for seed in seeds for budget in args.jpeg_budgets]
    pool_budgets = sorted({b * f for b in args.budgets for f in (1, 4)} | set(args.jpeg_budgets))
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        pools = [pool.submit(pool_runs, seed, specs + ["jpeg"], pool_budgets) for seed in seeds]
        runs = [run for future in pools for run in future.result()]
        runs += list(pool.map(demon_run, sorted(tasks, key=lambda t: -t[3]), chunksize=1))
    runs = [r for r in runs if r["reward"] != "jpeg" or r["budget"] in args.jpeg_budgets]
    print(f"{len(runs)} runs in {time.perf_counter() - started:.0f} s")

    rows = summarize(runs)
    RESULTS.mkdir(exist_ok=True)
    write_csv(runs, RESULTS / f"{STEM}_runs.csv")
    write_csv(rows, RESULTS / f"{STEM}.csv")
    plot(rows, "digit")
    report(rows, args.budgets)


def report(rows: list[dict], budgets: list[int]) -> None:
    table = {(r["reward"], r["method"], r["budget"]): r for r in rows}
    for family in sorted({r["reward"] for r in rows}):
        print(f"\n{family}: mean final reward +- sem (mean seconds)")
        for method in sorted({r["method"] for r in rows if r["reward"] == family}):
            cells = [table.get((family, method, b)) for b in sorted({r["budget"] for r in rows if r["reward"] == family})]
            print(f"{method:>16}: " + "  ".join(f"B={c['budget']}: {c['reward_mean']:.3f}+-{c['reward_sem']:.3f} "
                                               f"({c['seconds_mean']:.2f}s)" for c in cells if c))
    print("\ngoal: demon-tanh(B) >= best-of-n(4B)")
    for b in budgets:
        demon, best = table.get(("digit", "demon-tanh", b)), table.get(("digit", "best-of-n", 4 * b))
        if demon and best:
            verdict = "met" if demon["reward_mean"] >= best["reward_mean"] else "NOT met"
            print(f"  B={b}: demon-tanh {demon['reward_mean']:.3f} vs best-of-{4 * b} {best['reward_mean']:.3f}: {verdict}")


if __name__ == "__main__":
    main()
