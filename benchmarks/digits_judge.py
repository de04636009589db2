"""The independent judge's agreement in a digits sweep: for every cell aligned toward digit:N, the
held-out digit_judge:N of its output (the share of the output's nearest neighbours, among digits
the reward's classifier never saw, that show N), averaged per method and budget.

    python benchmarks/digits_judge.py runs/digits        # a folder `noisealign sweep` wrote

Reads results.jsonl only (examples/digits.toml scores digit_judge:1, :3 and :8 on every output).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path


def agreement(lines: list[dict]) -> dict[tuple[str, int], list[float]]:
    """(label, budget) -> the judge's vote for the target digit, one per complete cell; plain too."""
    votes: dict[tuple[str, int], list[float]] = defaultdict(list)
    baselines: dict[tuple[str, int], float] = {}
    for line in lines:
        if line["status"] != "complete" or not line["reward"].startswith("digit:"):
            continue
        judge = "digit_judge:" + line["reward"].split(":", 1)[1]
        votes[(line["label"], line["budget"])].append(line["evaluation"][judge])
        baselines[(line["reward"], line["seed"])] = line["baseline_evaluation"][judge]
    votes[("plain (baseline)", 0)] = list(baselines.values())
    return votes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path)
    lines = [json.loads(line) for line in (parser.parse_args().sweep / "results.jsonl").read_text().splitlines()]
    votes = agreement(lines)
    budgets = sorted({budget for _, budget in votes if budget})
    print("| method | " + " | ".join(f"B = {b}" for b in budgets) + " |")
    print("|---" * (len(budgets) + 1) + "|")
    for label in dict.fromkeys(label for label, _ in votes):
        cells = []
        for budget in budgets:
            values = votes.get((label, budget)) or votes.get((label, 0))
            if not values:
                cells.append("-")
                continue
            mean = sum(values) / len(values)
            error = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
            cells.append(f"{mean:.2f} ± {error:.2f}")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
