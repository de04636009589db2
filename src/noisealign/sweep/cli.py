"""`noisealign sweep` and `noisealign report`: their flags, and the call into the library."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..options import integer

COMMANDS = ("sweep", "report")
EXECUTORS = ("local", "ray")


def add_parsers(commands: Any) -> None:
    """Register `sweep` and `report` on the main parser's subcommands."""
    from ..report.cli import add_parser as add_report_parser

    sweep = commands.add_parser(
        "sweep", help="run methods x budgets x rewards x prompts x seeds from a sweep file (docs/sweep.md)",
        description="Run every cell of a sweep file: each is one `generate` run folder under OUT/cells plus one "
                    "line in OUT/results.jsonl with the held-out rewards. Rerunning the same command resumes: "
                    "finished cells never run twice. Then `noisealign report OUT`.")
    sweep.add_argument("spec", help="the sweep file (TOML; see examples/digits-small.toml)")
    sweep.add_argument("--out", required=True, help="the sweep folder: new, or this sweep's to resume it")
    given = sweep.add_argument_group("overrides (replace that part of the sweep file)")
    given.add_argument("--model", help="the model, as `generate --model`")
    given.add_argument("--device", help="the model's device, e.g. cuda")
    given.add_argument("--kernels", choices=["default", "batch-invariant"],
                       help="CPU kernels, as `generate --kernels`: batch-invariant keeps a seed batch's cells "
                            "bit-identical to each cell run alone")
    given.add_argument("--prompts", help="a prompt set: digits, animals, hpsv2[:style], drawbench[:PATH], "
                                         "parti[:PATH], geneval:PATH, file:PATH")
    given.add_argument("--take", type=integer, help="only the first N prompts of the set")
    given.add_argument("--seeds", type=_seed_list, help="seeds, e.g. 0-7 or 0,3,5")
    given.add_argument("--methods", type=_word_list, help="only these method labels, comma separated")
    given.add_argument("--budgets", type=_number_list, help="these budgets for every method, e.g. 64,256")
    given.add_argument("--optimize", action="append", help="a reward to align toward (repeat for several)")
    given.add_argument("--evaluate", action="append", help="a held-out reward to score (repeat for several)")
    run = sweep.add_argument_group("execution (how, not what: results are the same, timings aside)")
    run.add_argument("--executor", choices=EXECUTORS, default="local",
                     help="local: one worker in this process (default); ray: one actor per GPU or CPU worker")
    run.add_argument("--workers", type=integer, help="Ray actors (default: one per GPU, else per CPU / --threads)")
    run.add_argument("--ray-address", help="the Ray cluster (default: RAY_ADDRESS, else a local one started here)")
    run.add_argument("--threads", type=integer, default=1, help="torch CPU threads per worker (default 1; bit-identical results need equal threads)")
    run.add_argument("--retries", type=integer, default=1, help="runs of a failed cell after the first (default 1)")
    run.add_argument("--seed-batch", type=integer, default=None, metavar="K",
                     help="run the cells that differ only in their seed K at a time as one seed batch, each network "
                          "call and reward query carrying all K (default: every seed on a GPU; 1 on CPU, where a "
                          "batched cell may differ in the last bits from the cell run alone, unless --kernels "
                          "batch-invariant, which keeps the bits: then all)")
    run.add_argument("--offline", action="store_true", help="forbid every download (also NOISEALIGN_OFFLINE=1)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    add_report_parser(commands)


def main(args: argparse.Namespace) -> int:
    """Run the `sweep` or `report` command parsed into `args`; returns the exit status."""
    if args.command == "report":
        from ..report.cli import main as report_main

        return report_main(args)
    from ..errors import NoiseAlignError
    from .driver import ExecutionOptions, run_sweep
    from .spec import load_spec

    checks = [(args.workers is not None and args.workers < 1, f"--workers must be at least 1, got {args.workers}"),
              (args.retries < 0, f"--retries must be 0 or more, got {args.retries}"),
              (args.threads < 1, f"--threads must be at least 1, got {args.threads}"),
              (args.seed_batch is not None and args.seed_batch < 1,
               f"--seed-batch must be at least 1, got {args.seed_batch}")]
    for bad, message in checks:
        if bad:
            raise NoiseAlignError(message)
    overrides = {key: getattr(args, key) for key in ("model", "device", "kernels", "prompts", "take", "seeds", "methods",
                                                     "budgets", "optimize", "evaluate")}
    spec = load_spec(Path(args.spec), overrides)
    options = ExecutionOptions(args.executor, args.workers, args.threads, args.retries, args.ray_address,
                               args.quiet, args.seed_batch)
    return run_sweep(spec, Path(args.out), options)


def _word_list(text: str) -> list[str]:
    words = [word.strip() for word in text.split(",") if word.strip()]
    if not words:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing; give labels separated by commas")
    return words


def _number_list(text: str) -> list[int]:
    return [integer(word) for word in _word_list(text)]


def _seed_list(text: str) -> list[int]:
    """Seeds as `0-7`, `0,3,5` or both (`0-3,8`); ranges include their end."""
    seeds = []
    for word in _word_list(text):
        start, dash, end = word.partition("-")
        seeds += list(range(integer(start), integer(end) + 1)) if dash else [integer(word)]
    return seeds
