"""Every method with its library defaults against Best-of-N, on the bundled digits model.

The unconditional digits model is aligned toward `digit:1`, `digit:3`, `digit:8` and the
non-differentiable `jpeg`, for every seed and budget B (reward queries). Every method runs as
`noisealign generate --method M --budget B` would, with no option but the budget: plain, Demon,
DNO, FK steering, SVDD, beam search, zero-order search, search over paths. Every number is
measured on the method's final output, outside its budget.

Best-of-N with budget n keeps the best of plain samples 0..n-1 of the seed's streams, so the
maximum over the first n of one pool of 16 x the largest budget is every Best-of-n at once
(checked against the method). Its seconds are n times the pool's per-sample cost (batches of
512 plain samples plus the reward).

Judge agreement: the share of final samples the bundled digit classifier (trained on the half
of scikit-learn's digits the diffusion model never saw) labels as the target digit (its
argmax). It is the same network whose log-odds are the `digit:N` reward, so it turns the mean
log-odds into a success rate rather than judging independently. For `jpeg` it is the share the
classifier still recognises as some digit with probability >= 0.9 (plain samples: about half).

Goal (issue 10): at least one method at budget B reaches the mean `digit:N` reward of
Best-of-N at 16 B.

Writes benchmarks/results/STEM.csv (means over targets x seeds), STEM_runs.csv (every run,
appended as runs finish; --resume skips those done), STEM_queries.png and STEM_seconds.png,
STEM = methods_digits unless --stem says otherwise.

    PYTHONPATH=src python benchmarks/methods_digits.py --budgets 64 256 1024 --seeds 4 --workers 1
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import torch

from noisealign.align import align
from noisealign.budget import Ledger
from noisealign.errors import NoiseAlignError
from noisealign.methods.base import Problem, RunContext
from noisealign.methods.best_of_n import BestOfN
from noisealign.methods.plain import PlainConfig, sample_plain
from noisealign.methods.registry import METHODS
from noisealign.models.registry import load_model
from noisealign.rewards.registry import parse_reward

RESULTS = Path(__file__).parent / "results"
FIELDS = ["method", "reward", "seed", "budget", "queries", "final_reward", "judge", "seconds", "nfe"]
SEARCHED = ("demon", "fk", "svdd", "beam", "zo-search", "path-search", "dno")
FACTOR = 16
RECOGNISED = 0.9
"""Classifier probability above which a jpeg-aligned sample still counts as a digit."""


@lru_cache(maxsize=1)
def classifier() -> torch.nn.Module:
    """The bundled digit classifier (the network behind `digit:N`)."""
    return parse_reward("digit:0").classifier


def judge(outputs: torch.Tensor, spec: str) -> torch.Tensor:
    """1 where the classifier agrees: argmax = N for digit:N; max probability >= 0.9 for jpeg."""
    probabilities = classifier()(outputs.float()).softmax(1)
    if spec.startswith("digit:"):
        return (probabilities.argmax(1) == int(spec.split(":")[1])).float()
    return (probabilities.max(1).values >= RECOGNISED).float()


def method_run(task: tuple[str, str, int, int]) -> dict | None:
    """One `--method name --budget B` run with the library's defaults (None: the method refuses the budget)."""
    name, spec, seed, budget = task
    torch.set_num_threads(1)
    try:
        outcome = align(Problem(load_model("digits"), parse_reward(spec)), METHODS[name].method(), seed, budget)
    except NoiseAlignError as refusal:
        print(f"{name} {spec} B={budget}: {refusal}", flush=True)
        return None
    with torch.inference_mode():
        agrees = float(judge(outcome.result.output, spec)[0])
    return {"method": name, "reward": spec, "seed": seed, "budget": budget, "queries": outcome.ledger.reward_queries,
            "final_reward": outcome.final_reward, "judge": agrees, "seconds": outcome.seconds,
            "nfe": outcome.ledger.nfe}


def pool_runs(seed: int, specs: list[str], budgets: list[int], chunk: int = 512) -> list[dict]:
    """Best-of-n for every spec and n in `budgets` from one pool of plain samples of the seed."""
    torch.set_num_threads(1)
    model, size = load_model("digits"), max(budgets)
    rewards = {spec: parse_reward(spec) for spec in specs}
    context = RunContext(Problem(model, rewards[specs[0]]), seed, Ledger())
    scores = {spec: [] for spec in specs}
    agrees = {spec: [] for spec in specs}
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
                agrees[spec].append(judge(outputs, spec))
    runs = []
    for spec in specs:
        values, agreement = torch.cat(scores[spec]), torch.cat(agrees[spec])
        per_sample = (seconds["sampling"] + seconds[spec]) / size
        for n in budgets:
            best = int(values[:n].argmax())
            runs.append({"method": "best-of-n", "reward": spec, "seed": seed, "budget": n, "queries": n,
                         "final_reward": float(values[best]), "judge": float(agreement[best]),
                         "seconds": per_sample * n, "nfe": None})
    return runs


def check_pool(runs: list[dict]) -> None:
    """A pooled Best-of-N equals the method run on its own."""
    pooled = min((r for r in runs if r["method"] == "best-of-n"), key=lambda r: r["budget"])
    problem = Problem(load_model("digits"), parse_reward(pooled["reward"]))
    alone = align(problem, BestOfN(), pooled["seed"], pooled["budget"]).final_reward
    assert math.isclose(alone, pooled["final_reward"], rel_tol=1e-5, abs_tol=1e-5), (alone, pooled)


def summarize(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["reward"].split(":")[0], run["method"], int(run["budget"])), []).append(run)
    rows = []
    for (family, method, budget), members in sorted(groups.items()):
        rewards = torch.tensor([float(m["final_reward"]) for m in members], dtype=torch.float64)
        rows.append({"reward": family, "method": method, "budget": budget, "runs": len(members),
                     "reward_mean": float(rewards.mean()),
                     "reward_sem": float(rewards.std() / math.sqrt(len(members))) if len(members) > 1 else 0.0,
                     "judge_agreement": sum(float(m["judge"]) for m in members) / len(members),
                     "seconds_mean": sum(float(m["seconds"]) for m in members) / len(members),
                     "queries_mean": sum(float(m["queries"]) for m in members) / len(members)})
    return rows


def plot(rows: list[dict], stem: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = sorted({r["reward"] for r in rows})
    for axis, label in (("queries_mean", "reward queries"), ("seconds_mean", "seconds per sample (wall, 1 thread)")):
        figure, axes = plt.subplots(1, len(families), figsize=(5.5 * len(families), 4.2), squeeze=False)
        for ax, family in zip(axes[0], families):
            for method in sorted({r["method"] for r in rows if r["reward"] == family}):
                line = [r for r in rows if r["method"] == method and r["reward"] == family]
                if method == "plain":          # no query: a level, not a point on the log axis
                    ax.axhline(line[0]["reward_mean"], color="gray", linestyle=":",
                               label=f"plain ({line[0]['reward_mean']:.3g})")
                    continue
                ax.errorbar([r[axis] for r in line], [r["reward_mean"] for r in line],
                            yerr=[r["reward_sem"] for r in line], marker="o", capsize=3, label=method,
                            linestyle="--" if method == "best-of-n" else "-")
            ax.set_xscale("log", base=2)
            ax.set_xlabel(label)
            ax.set_ylabel(f"mean final {family} reward")
            ax.set_title(f"digits, {family}{':1,3,8' if family == 'digit' else ''} (library defaults)", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(RESULTS / f"{stem}_{axis.split('_')[0]}.png", dpi=120)
        plt.close(figure)


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def report(rows: list[dict], budgets: list[int]) -> None:
    table = {(r["reward"], r["method"], r["budget"]): r for r in rows}
    for family in sorted({r["reward"] for r in rows}):
        print(f"\n{family}: mean final reward +- sem [judge agreement] (mean seconds)")
        for method in sorted({r["method"] for r in rows if r["reward"] == family}):
            cells = [table.get((family, method, b)) for b in sorted({r["budget"] for r in rows})]
            print(f"{method:>12}: " + "  ".join(f"B={c['budget']}: {c['reward_mean']:.3f}+-{c['reward_sem']:.3f} "
                                               f"[{c['judge_agreement']:.2f}] ({c['seconds_mean']:.2f}s)"
                                               for c in cells if c))
    print(f"\ngoal: a method at B >= best-of-{FACTOR}B on digit")
    for b in budgets:
        best = table.get(("digit", "best-of-n", FACTOR * b))
        if best is None:
            continue
        met = [m for m in SEARCHED if (c := table.get(("digit", m, b))) and c["reward_mean"] >= best["reward_mean"]]
        top = max((table[("digit", m, b)] for m in SEARCHED if ("digit", m, b) in table),
                  key=lambda c: c["reward_mean"])
        print(f"  B={b}: best-of-{FACTOR * b} {best['reward_mean']:.3f}; best method {top['method']} "
              f"{top['reward_mean']:.3f}; met by: {', '.join(met) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=int, nargs="+", default=[1, 3, 8])
    parser.add_argument("--jpeg", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    parser.add_argument("--methods", nargs="+", default=list(SEARCHED))
    parser.add_argument("--dno-budgets", type=int, nargs="+", default=[64],
                        help="DNO's budgets (a grad step back-propagates through 50 steps: 13 s per 64 queries)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--stem", default="methods_digits", help="name of the result files in benchmarks/results")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in the runs CSV")
    parser.add_argument("--replot", action="store_true", help="redraw the plots and tables from the runs CSV")
    args = parser.parse_args()
    runs_path = RESULTS / f"{args.stem}_runs.csv"
    if args.replot:
        rows = summarize(list(csv.DictReader(open(runs_path))))
        plot(rows, args.stem)
        report(rows, args.budgets)
        return
    torch.set_num_threads(1)
    specs = [f"digit:{d}" for d in args.digits] + (["jpeg"] if args.jpeg else [])
    seeds = range(args.seeds)
    done = ({(r["method"], r["reward"], int(r["seed"]), int(r["budget"])) for r in csv.DictReader(open(runs_path))}
            if args.resume and runs_path.exists() else set())
    tasks = [(name, spec, seed, b) for name in args.methods for spec in specs for seed in seeds for b in args.budgets
             if name != "dno" or b in args.dno_budgets]
    tasks += [("plain", spec, seed, 1) for spec in specs for seed in seeds]
    tasks = [t for t in tasks if t not in done]
    RESULTS.mkdir(exist_ok=True)
    if not done:
        with open(runs_path, "w", newline="") as handle:
            csv.DictWriter(handle, fieldnames=FIELDS).writeheader()
    pooled = sorted({n for b in args.budgets for n in (b, FACTOR * b)})
    started = time.perf_counter()

    def keep(run: dict) -> None:
        with open(runs_path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=FIELDS).writerow(run)

    for seed in seeds:
        if any(("best-of-n", spec, seed, n) not in done for spec in specs for n in pooled):
            for run in pool_runs(seed, specs, pooled):
                if (run["method"], run["reward"], seed, run["budget"]) not in done:
                    keep(run)
    with ProcessPoolExecutor(args.workers) if args.workers > 1 else _Inline() as pool:
        for run in filter(None, pool.map(method_run, sorted(tasks, key=lambda t: -t[-1]))):
            keep(run)
            print(f"{run['method']} {run['reward']} seed {run['seed']} B={run['budget']}: {run['final_reward']:.3f} "
                  f"({run['seconds']:.1f}s; {time.perf_counter() - started:.0f}s elapsed)", flush=True)
    print(f"{len(tasks)} method runs in {time.perf_counter() - started:.0f} s")
    runs = list(csv.DictReader(open(runs_path)))
    check_pool([{**r, "seed": int(r["seed"]), "budget": int(r["budget"]), "final_reward": float(r["final_reward"])}
                for r in runs])
    rows = summarize(runs)
    write_csv(rows, RESULTS / f"{args.stem}.csv")
    plot(rows, args.stem)
    report(rows, args.budgets)


class _Inline:
    """The executor interface in this process (one worker: no process pool)."""

    def __enter__(self) -> "_Inline":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn, items):
        return map(fn, items)


if __name__ == "__main__":
    main()
