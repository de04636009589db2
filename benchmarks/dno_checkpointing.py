"""DNO's --checkpointing all | none | auto: seconds per iteration and peak memory against steps.

    python benchmarks/dno_checkpointing.py [--steps 10 20 50] [--threads 1]
    python benchmarks/dno_checkpointing.py interleaved [--steps 50] [--rounds 4]

For the digits model (digit:3) and the tiny random SD 1.x pipeline of tests/diffusers_tiny.py
(32 px: latent 4 x 16 x 16, CFG 5, "a cat", a fixed linear reward of the decoded image): DNO
in grad mode, eta 1, gamma 0, 3 Adam steps, each configuration in a fresh process. Seconds per
iteration are (clock at iteration 3 - clock at iteration 1) / 2 (iteration 0 pays one-off
costs: the first checkpointed call imports torch._dynamo, auto measures its first call).
Peak memory is the process's peak RSS minus its RSS before the run (weights and imports
excluded). Rows: all, none, auto with its default budget (on CPU half of available RAM), and
auto with --memory-budget set to half of the activations that none keeps (the budget auto
would meet on a device with that much room). Writes results/dno_checkpointing.{csv,log}.

interleaved: seconds only, on digits, all three settings in one process taking turns
(none, auto, all; `--rounds` times; 5 Adam steps each, the clock from iteration 1 to 5),
medians: on a loaded machine the load drifts less between turns than between processes.
Printed only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ITERATIONS = 3


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def worker(spec: dict) -> dict:
    """One measured run in this process: seconds per iteration, peak memory, what auto chose."""
    import torch

    torch.set_num_threads(spec["threads"])
    from noisealign.budget import Ledger
    from noisealign.methods.base import Problem, RunContext
    from noisealign.methods.dno import Dno, DnoConfig
    from noisealign.models.registry import load_model
    from noisealign.rewards.registry import parse_reward
    from noisealign.rewards.simple import Linear

    if spec["model"] == "digits":
        problem = Problem(load_model("digits"), parse_reward("digit:3"), "")
    else:
        model = load_model(spec["folder"], height=32, width=32, scheduler="ddim")
        weights = torch.linspace(-1, 1, 3 * 32 * 32).reshape(3, 32, 32) / (3 * 32 * 32)
        problem = Problem(model, Linear(weights), "a cat", "", 5.0)
    clock: dict[int, float] = {}
    config = DnoConfig(mode="grad", steps=spec["steps"], iterations=ITERATIONS, gamma=0.0,
                       checkpointing=spec["checkpointing"], memory_budget=spec.get("memory_budget"))
    before = _rss_mb()
    result = Dno(config).run(RunContext(problem, 0, Ledger(), lambda event: clock.setdefault(event.step,
                                                                                              event.counts["seconds"])))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds_per_iteration": (clock[3] - clock[1]) / 2, "peak_mb": peak - before,
            **{k: result.info.get(k) for k in ("checkpointed_steps", "activation_bytes_per_step")}}


def interleaved(steps: int, rounds: int) -> None:
    import statistics

    import torch

    from noisealign.budget import Ledger
    from noisealign.methods.base import Problem, RunContext
    from noisealign.methods.dno import Dno, DnoConfig
    from noisealign.models.registry import load_model
    from noisealign.rewards.registry import parse_reward

    problem = Problem(load_model("digits"), parse_reward("digit:3"), "")
    seconds: dict[str, list[float]] = {"none": [], "auto": [], "all": []}
    for _ in range(rounds):
        for setting, times in seconds.items():
            clock: dict[int, float] = {}
            config = DnoConfig(mode="grad", steps=steps, iterations=5, gamma=0.0, checkpointing=setting)
            Dno(config).run(RunContext(problem, 0, Ledger(), lambda e: clock.setdefault(e.step, e.counts["seconds"])))
            times.append((clock[5] - clock[1]) / 4)
    print(f"# digits, {steps} steps, {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}; "
          f"seconds per iteration, median of {rounds} turns: "
          + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in seconds.items()))


def measure(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "_worker", json.dumps(spec)], check=True,
                         capture_output=True, text=True).stdout
    return {**spec, **json.loads(out.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="run", choices=["run", "interleaved", "_worker"])
    parser.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved: turns of each setting")
    args = parser.parse_args()
    if args.what == "_worker":
        print(json.dumps(worker(json.loads(args.spec))))
        return
    if args.what == "interleaved":
        import torch

        torch.set_num_threads(args.threads)
        for steps in args.steps:
            interleaved(steps, args.rounds)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import diffusers_tiny as tiny

    folder = tempfile.mkdtemp(prefix="dno-ckpt-")
    tiny.sd_pipeline().save_pretrained(folder)
    load = os.getloadavg()
    lines = [f"# {args.threads} torch thread(s); load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on "
             f"{os.cpu_count()} CPUs shared with other jobs: read ratios, not absolute seconds",
             "| model | steps | checkpointing | checkpointed steps | NFE per iteration | s per iteration | "
             "peak memory MB |", "|---|---|---|---|---|---|---|"]
    print(lines[0], flush=True)
    rows = []
    for model in ("digits", "sd-tiny"):
        for steps in args.steps:
            base = {"model": model, "steps": steps, "threads": args.threads, "folder": folder}
            runs = [measure({**base, "checkpointing": setting}) for setting in ("all", "none", "auto")]
            runs.append(measure({**base, "checkpointing": "auto",
                                 "memory_budget": steps * runs[-1]["activation_bytes_per_step"] / 2e9}))
            for row in runs:
                label = row["checkpointing"] + (f", budget {row['memory_budget'] * 1e3:.1f} MB"
                                                if row.get("memory_budget") else "")
                line = (f"| {model} | {steps} | {label} | {row['checkpointed_steps']} | "
                        f"{steps + row['checkpointed_steps']} | "
                        f"{row['seconds_per_iteration']:.3f} | {row['peak_mb']:.0f} |")
                lines.append(line)
                rows.append(row)
                print(line, flush=True)
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "dno_checkpointing.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[-1]))
        writer.writeheader()
        writer.writerows(rows)
    (RESULTS / "dno_checkpointing.log").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
