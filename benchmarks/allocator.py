"""The CLI's malloc thresholds (noisealign.cpu) on and off, on one Demon and one DNO run on digits.

    python benchmarks/allocator.py [--rounds 3]

Each run is `noisealign generate --model digits --threads 1` in a fresh process, once as the
CLI starts by default (glibc's mmap and trim thresholds pinned by mallopt) and once with
NOISEALIGN_MALLOPT=0 (glibc's defaults), the two alternating (A B, B A, ...). Prints the medians
of the run's own seconds (result.json's `seconds`: start-up excluded) and of the process's minor
page faults. Writes results/allocator_cli.log.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
RUNS = {"demon, budget 256": ["--method", "demon", "--budget", "256"],
        "dno, 50 steps, budget 30": ["--method", "dno", "--budget", "30"]}
ARMS = {"pinned (default)": {}, "glibc defaults (NOISEALIGN_MALLOPT=0)": {"NOISEALIGN_MALLOPT": "0"}}


def one_run(flags: list[str], environ: dict[str, str]) -> tuple[float, int]:
    """(the run's seconds, the process's minor page faults)."""
    out = Path(tempfile.mkdtemp(prefix="alloc-")) / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("NOISEALIGN_MALLOPT", "MALLOC_MMAP_THRESHOLD_",
                                                             "MALLOC_TRIM_THRESHOLD_")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    subprocess.run([sys.executable, "-m", "noisealign", "generate", "--model", "digits", "--threads", "1", "--quiet",
                    "--out", str(out), *flags], env={**env, **environ}, check=True, capture_output=True)
    faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before
    return json.loads((out / "result.json").read_text())["seconds"], faults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    lines = [f"# 1 torch thread, load average {load:.1f} at the start on {os.cpu_count()} CPUs shared with other "
             "jobs; medians of alternating runs", "| run | allocator | seconds | minor page faults |", "|---|---|---|---|"]
    for name, flags in RUNS.items():
        measured: dict[str, list[tuple[float, int]]] = {arm: [] for arm in ARMS}
        for round_ in range(args.rounds):
            for arm in (list(ARMS) if round_ % 2 == 0 else list(reversed(ARMS))):
                measured[arm].append(one_run(flags, ARMS[arm]))
        for arm, values in measured.items():
            lines.append(f"| {name} | {arm} | {statistics.median(s for s, _ in values):.2f} | "
                         f"{statistics.median(f for _, f in values):,.0f} |")
            print(lines[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "allocator_cli.log").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
