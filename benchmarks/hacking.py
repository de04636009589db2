"""Reward hacking, measured: does a method raise the reward and keep its sample in distribution?

    python benchmarks/hacking.py run gmm2 gmm64 digits   [--iterations 200 --seeds 4]
    python benchmarks/hacking.py report                  # table + figure from the saved runs

Settings (the reward is unbounded or maximal off the data, so only the model keeps it honest):
- gmm2, gmm64: the default 2-D Gaussian mixture and `GaussianMixture.spread(64)`, reward
  r(x) = x . v for a fixed unit v. In distribution: the exact log p(x) within the 1st..99th
  percentile of 4096 exact draws of the mixture.
- digits: the bundled model, reward `brightness` (its maximum, a white image, is no digit).
  "Still a digit": the bundled classifier's top-class probability at least the 10th
  percentile of 1024 plain samples (50 DDPM steps). The 1st percentile would not do: the
  classifier gives a white image 0.47 and uniform noise 0.3 to 0.8.

Methods, seeds batched (`run_batch`), every iterate measured:
- dno: all noises of 50 DDPM steps (eta 1), Adam at lr 0.01 and 0.05, 200 iterations;
- dno-ode: the same with eta 0, so z_T alone is optimized (through the 50-step ODE on the
  gmm, 4 steps on digits): ReNO's variable with DNO's optimizer;
- reno: ReNO as shipped (SGD, Nesterov 0.9, clipping 0.1) at lr 0.01, 0.05 and its own 5;
- each with every regularizer and gamma (0: none);
- guidance: one guided sample per scale (tilt schedule, and constant), no iterations.

"kept" is how many iterations stay in distribution before the first that leaves, counted from
the first in-distribution iterate, for the worst seed ("all": none leaves; "starts out" counts
seeds whose start is out); "gain" the best reward among in-distribution iterates minus the
start's reward (mean over seeds).
Results: results/hacking_<setting>.csv and _trace.csv.gz (every iterate), results/hacking.csv,
results/hacking.png.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from noisealign.budget import Ledger
from noisealign.methods.base import Problem, RunContext, StepEvent
from noisealign.methods.dno import Dno, DnoConfig
from noisealign.methods.guidance import Guidance, GuidanceConfig
from noisealign.methods.plain import PlainConfig, sample_plain
from noisealign.methods.regularizers import NAMES
from noisealign.methods.reno import Reno, RenoConfig
from noisealign.models.gmm import GaussianMixture
from noisealign.rewards.simple import Linear

RESULTS = Path(__file__).parent / "results"
SETTINGS = ("gmm2", "gmm64", "digits")
GAMMAS = {"dno": (1.0, 10.0, 100.0), "dno-ode": (1.0, 10.0, 100.0), "reno": (0.01, 1.0, 10.0)}
LRS = {"dno": (0.01, 0.05), "dno-ode": (0.01, 0.05), "reno": (0.01, 0.05, 5.0)}
GUIDANCE = {"gmm": [("tilt", s) for s in (0.3, 1.0, 3.0, 10.0, 30.0)] + [("constant", s) for s in (0.01, 0.03, 0.1, 0.3)],
            "digits": [("tilt", s) for s in (10.0, 30.0, 100.0, 300.0, 1000.0)] + [("constant", s) for s in (1.0, 3.0, 10.0, 30.0)]}
"""Guidance scales per setting: brightness's gradient is about 1/128 of x . v's per state element."""


# ---- settings: problem and in-distribution measure --------------------------------------------

class Setting:
    """A problem, its in-distribution measure of a clean state, and the plain range of that measure."""

    def __init__(self, name: str):
        self.name = name
        if name == "digits":
            from noisealign.models.registry import load_model
            from noisealign.rewards.registry import parse_reward

            self.problem = Problem(load_model("digits"), parse_reward("brightness"))
            self.classifier = parse_reward("digit:0").classifier
            self.measure_name = "top-class probability"
            with torch.inference_mode():
                plain = sample_plain(RunContext(self.problem, 0, Ledger()), range(1024), PlainConfig(steps=50, eta=1.0))
            values = self.measure(plain)
            self.low, self.high = float(values.quantile(0.10)), 1.0
        else:
            dim = 2 if name == "gmm2" else 64
            model = GaussianMixture.default() if dim == 2 else GaussianMixture.spread(dim)
            v = torch.randn(dim, generator=torch.Generator().manual_seed(1))
            self.problem = Problem(model, Linear(v / v.norm()))
            self.measure_name = "exact log p(x)"
            values = self.measure(model.sample_exact(4096, torch.Generator().manual_seed(2)))
            self.low, self.high = float(values.quantile(0.01)), float(values.quantile(0.99))

    def measure(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.name == "digits":
                return torch.softmax(self.classifier(self.problem.model.decode(x)), dim=1).max(1).values
            return self.problem.model.log_density(x)

    def inside(self, value: float) -> bool:
        return self.low <= value <= self.high


# ---- runs -------------------------------------------------------------------------------------

def configurations(setting: str, iterations: int) -> list[tuple[str, str, float, float, Any]]:
    """(method, regularizer, gamma, lr, method object) for every row of the table."""
    digits = setting == "digits"
    rows = []
    for method, lrs in LRS.items():
        for lr in lrs:
            for regularizer, gamma in [("none", 0.0)] + [(r, g) for r in NAMES for g in GAMMAS[method]]:
                if regularizer == "concentration" and setting == "gmm2" and method != "dno":
                    continue                                 # z_T of a 2-D state has 2 elements: undefined
                common = dict(lr=lr, iterations=iterations, gamma=gamma,
                              regularizer="moments" if regularizer == "none" else regularizer)
                if method == "reno":
                    config = Reno(RenoConfig(steps=4 if digits else 50, **common))
                else:
                    config = Dno(DnoConfig(mode="grad", steps=4 if digits and method == "dno-ode" else 50,
                                           eta=1.0 if method == "dno" else 0.0, checkpointing=False, **common))
                rows.append((method, regularizer, gamma, lr, config))
    return rows


def run_setting(setting: Setting, seeds: int, iterations: int) -> None:
    """Every configuration of the setting, saved after each (a run stopped midway keeps what it did)."""
    traces, summary = [], []

    def save() -> None:
        write_csv(summary, RESULTS / f"hacking_{setting.name}.csv")
        write_csv(traces, RESULTS / f"hacking_{setting.name}_trace.csv.gz")

    for method, regularizer, gamma, lr, algorithm in configurations(setting.name, iterations):
        start = time.perf_counter()
        per_seed: list[list[dict]] = [[] for _ in range(seeds)]

        def observer(b: int) -> Callable[[StepEvent], None]:
            def record(event: StepEvent) -> None:
                per_seed[b].append({"iteration": event.step, "reward": float(event.rewards[0]),
                                    "measure": float(setting.measure(event.x)[0]),
                                    **{k: v for k, v in event.extras.items() if k.startswith("reg_")}})
            return record

        contexts = [RunContext(setting.problem, seed, Ledger(), observer(seed)) for seed in range(seeds)]
        algorithm.run_batch(contexts)
        for seed, rows in enumerate(per_seed):
            traces += [{"setting": setting.name, "method": method, "regularizer": regularizer, "gamma": gamma,
                        "lr": lr, "seed": seed, **row} for row in rows]
        summary.append(summarize(setting.name, method, regularizer, gamma, lr, per_seed, setting.low, setting.high))
        row = summary[-1]
        print(f"{setting.name:6s} {method:7s} {regularizer:13s} gamma {gamma:<6g} lr {lr:<5g} gain {row['gain']:8.3f} "
              f"kept {row['kept']:>4} best {row['reward_best']:8.3f} measure {row['measure_of_best']:9.3f} "
              f"[{setting.low:.3f}, {setting.high:.3f}] {time.perf_counter() - start:4.0f} s", flush=True)
        save()
    for schedule, scale in GUIDANCE["digits" if setting.name == "digits" else "gmm"]:
        config = GuidanceConfig(steps=50, eta=1.0, scale=scale, schedule=schedule, recurrence=1, checkpointing=False)
        contexts = [RunContext(setting.problem, seed, Ledger()) for seed in range(seeds)]
        results = Guidance(config).run_batch(contexts)
        rewards = [float(setting.problem.reward(r.output, [""])[0]) for r in results]
        measures = [float(setting.measure(r.sample)[0]) for r in results]
        with torch.inference_mode():        # guidance at scale 0: the same noises, the plain DDPM sample
            plain = [float(setting.problem.reward(setting.problem.model.decode(sample_plain(
                RunContext(setting.problem, seed, Ledger()), [0], PlainConfig(steps=50, eta=1.0))), [""])[0])
                for seed in range(seeds)]
        inside = sum(setting.inside(m) for m in measures)
        summary.append({"setting": setting.name, "method": "guidance", "regularizer": schedule, "gamma": scale,
                        "lr": "", "seeds": seeds, "reward_start": mean(plain), "reward_best": mean(rewards),
                        "gain": mean([r - p for r, p in zip(rewards, plain)]), "measure_of_best": mean(measures),
                        "kept": f"{inside}/{seeds} in", "start_out": "", "low": setting.low, "high": setting.high})
        traces += [{"setting": setting.name, "method": "guidance", "regularizer": schedule, "gamma": scale, "lr": "",
                    "seed": seed, "iteration": 0, "reward": r, "measure": m} for seed, (r, m) in enumerate(zip(rewards, measures))]
        print(f"{setting.name:6s} guidance {schedule:8s} scale {scale:<5g} reward {mean(plain):7.3f} -> {mean(rewards):7.3f} "
              f"measure {mean(measures):9.3f}, {inside}/{seeds} in range", flush=True)
        save()


def summarize(setting: str, method: str, regularizer: str, gamma: float, lr: float, per_seed: list[list[dict]],
              low: float, high: float) -> dict:
    """One table row over the seeds' iterates: gain in range, iterations kept (worst seed), the best iterate."""
    inside = lambda row: low <= float(row["measure"]) <= high  # noqa: E731
    gains, kept, best, measure_of_best, start_out = [], [], [], [], 0
    for rows in per_seed:
        first_in = next((k for k, r in enumerate(rows) if inside(r)), len(rows))
        first_out = next((k for k in range(first_in, len(rows)) if not inside(rows[k])), None)
        start_out += first_in != 0
        kept.append(math.inf if first_out is None else first_out - 1 - first_in)
        gains.append(max((float(r["reward"]) for r in rows if inside(r)), default=math.nan) - float(rows[0]["reward"]))
        top = max(rows, key=lambda r: float(r["reward"]))
        best.append(float(top["reward"]))
        measure_of_best.append(float(top["measure"]))
    return {"setting": setting, "method": method, "regularizer": regularizer, "gamma": gamma, "lr": lr,
            "seeds": len(per_seed), "reward_start": mean([float(rows[0]["reward"]) for rows in per_seed]),
            "reward_best": mean(best), "gain": mean(gains), "measure_of_best": mean(measure_of_best),
            "kept": "all" if min(kept) == math.inf else min(kept), "start_out": start_out, "low": low, "high": high}


def mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


# ---- report -----------------------------------------------------------------------------------

def read_csv(path: Path) -> list[dict]:
    with (gzip.open(path, "rt", newline="") if path.suffix == ".gz" else open(path, newline="")) as handle:
        return list(csv.DictReader(handle))


def write_csv(rows: list[dict], path: Path) -> None:
    """CSV (gzipped for a .gz path), floats to 6 significant digits."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with (gzip.open(path, "wt", newline="") if path.suffix == ".gz" else open(path, "w", newline="")) as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()} for row in rows)


def resummarize(row: dict, trace: list[dict]) -> dict:
    """A saved summary row recomputed from its saved iterates (guidance rows, without iterates, as saved)."""
    if row["method"] == "guidance":
        return row
    key = ("method", "regularizer", "gamma", "lr")
    runs: dict[str, list[dict]] = {}
    for r in trace:
        if all(r[k] == row[k] for k in key):
            runs.setdefault(r["seed"], []).append(r)
    return summarize(row["setting"], row["method"], row["regularizer"], float(row["gamma"]), float(row["lr"]),
                     list(runs.values()), float(row["low"]), float(row["high"]))


def table(summary: list[dict]) -> str:
    lines = ["| setting | method | regularizer | gamma | lr | reward start | reward best | gain in range | "
             "measure of best | range | kept (of iterations) | starts out |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {r['setting']} | {r['method']} | {r['regularizer']} | {float(r['gamma']):g} | {r['lr']} | "
                     f"{float(r['reward_start']):.3f} | {float(r['reward_best']):.3f} | {float(r['gain']):.3f} | "
                     f"{float(r['measure_of_best']):.3f} | [{float(r['low']):.2f}, {float(r['high']):.2f}] | "
                     f"{r['kept']} | {r['start_out']} |")
    return "\n".join(lines)


def pivot(summary: list[dict], settings: tuple[str, ...], cell: Callable[[dict], str]) -> str:
    """Rows side by side: one column per setting and step size (reno at ReNO's lr 5 too)."""
    columns = [(setting, lr) for setting in settings for lr in ("0.01", "0.05", "5.0")]
    cells: dict[tuple, dict] = {}
    for r in summary:
        if r["setting"] in settings and r["method"] != "guidance":
            cells.setdefault((r["method"], r["regularizer"], float(r["gamma"])), {})[(r["setting"], str(float(r["lr"])))] = r
    used = [c for c in columns if any(c in row for row in cells.values())]
    lines = ["| method | regularizer | gamma | " + " | ".join(f"{s} lr {lr}" for s, lr in used) + " |",
             "|---|---|---|" + "---|" * len(used)]

    def order(key: tuple) -> tuple:
        return list(LRS).index(key[0]), ("none", *NAMES).index(key[1]), key[2]

    for (method, regularizer, gamma), row in sorted(cells.items(), key=lambda item: order(item[0])):
        lines.append(f"| {method} | {regularizer} | {gamma:g} | " +
                     " | ".join(cell(row[c]) if c in row else "-" for c in used) + " |")
    return "\n".join(lines)


def gmm_cell(row: dict) -> str:
    return f"{float(row['gain']):+.2f} / {row['kept']}"


def digits_cell(row: dict) -> str:
    return f"{float(row['reward_best']):.3f} ({float(row['measure_of_best']):.2f})"


def plot(traces: list[dict], summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [s for s in SETTINGS if any(r["setting"] == s for r in traces)]
    methods = ["dno", "dno-ode", "reno", "guidance"]
    colors = {"none": "k", "concentration": "tab:blue", "chi-norm": "tab:orange", "moments": "tab:green",
              "tilt": "tab:purple", "constant": "tab:brown"}
    figure, axes = plt.subplots(len(settings), len(methods), figsize=(4.2 * len(methods), 3.6 * len(settings)),
                                squeeze=False)
    for row_axes, setting in zip(axes, settings):
        rows = [r for r in summary if r["setting"] == setting]
        low, high = float(rows[0]["low"]), float(rows[0]["high"])
        for ax, method in zip(row_axes, methods):
            selected = [r for r in traces if r["setting"] == setting and r["method"] == method]
            if not selected:
                ax.axis("off")
                continue
            if method == "guidance":
                for schedule in dict.fromkeys(r["regularizer"] for r in selected):
                    points = [r for r in selected if r["regularizer"] == schedule]
                    ax.scatter([float(r["reward"]) for r in points], [float(r["measure"]) for r in points], s=10,
                               color=colors[schedule], label=schedule)
            else:
                lr = max(float(r["lr"]) for r in selected if float(r["lr"]) < 1)   # the largest Adam-like step
                for regularizer in dict.fromkeys(r["regularizer"] for r in selected):
                    gamma = max(float(r["gamma"]) for r in selected if r["regularizer"] == regularizer)
                    line = [r for r in selected if r["regularizer"] == regularizer and float(r["gamma"]) == gamma
                            and float(r["lr"]) == lr and r["seed"] == "0"]
                    ax.plot([float(r["reward"]) for r in line], [float(r["measure"]) for r in line],
                            color=colors[regularizer], linewidth=1, label=f"{regularizer} gamma {gamma:g}")
                    ax.plot(float(line[0]["reward"]), float(line[0]["measure"]), "o", color="k", markersize=3)
                ax.set_title(f"{method}, lr {lr:g} (seed 0)", fontsize=9)
            if method == "guidance":
                ax.set_title("guidance (one point per scale and seed)", fontsize=9)
            ax.axhspan(low, high, color="0.9", zorder=0)
            ax.set_xlabel("reward")
            if setting != "digits":
                ax.set_yscale("symlog")
            ax.legend(fontsize=6)
        row_axes[0].set_ylabel(f"{setting}\n" + ("top-class probability" if setting == "digits" else "exact log p(x)"))
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["run", "report"])
    parser.add_argument("settings", nargs="*", help=f"run: any of {', '.join(SETTINGS)}")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per configuration, run as one batch")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.part == "run":
        unknown = [name for name in args.settings if name not in SETTINGS]
        if unknown or not args.settings:
            parser.error(f"run takes settings among {', '.join(SETTINGS)}")
        for name in args.settings:
            run_setting(Setting(name), args.seeds, args.iterations)
        return
    summary, traces = [], []
    for name in SETTINGS:
        if (RESULTS / f"hacking_{name}.csv").exists():
            saved, trace = read_csv(RESULTS / f"hacking_{name}.csv"), read_csv(RESULTS / f"hacking_{name}_trace.csv.gz")
            summary += [resummarize(row, trace) for row in saved]
            traces += trace
    if not summary:
        sys.exit("no runs saved yet: python benchmarks/hacking.py run gmm2 gmm64 digits")
    write_csv(summary, RESULTS / "hacking.csv")
    plot(traces, summary, RESULTS / "hacking.png")
    compact = ("gmm: reward gain in range / iterations kept (of 200)\n\n" + pivot(summary, ("gmm2", "gmm64"), gmm_cell)
               + "\n\ndigits: best brightness (top-class probability of that iterate)\n\n"
               + pivot(summary, ("digits",), digits_cell))
    (RESULTS / "hacking.md").write_text(table(summary) + "\n\n" + compact + "\n")
    print(compact)


if __name__ == "__main__":
    main()
