"""`noisealign`: a thin command line over the library; it parses, calls, and writes the run folder."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from .errors import NoiseAlignError
from .options import config_from_namespace, finite_float, integer


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit status 2; no abbreviated flags
    (with per-method flags, `--q` must never silently mean `--quiet`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


class _GenerateHelp(argparse.Action):
    """`generate --help`: the shared options, then each method's own options."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from .methods.registry import METHODS

        sections = [parser.format_help()]
        for name, entry in METHODS.items():
            method_parser = _method_parser(name)
            text = method_parser.format_help().split("\n\n", 1)[-1]   # drop the usage line
            sections.append(text if entry.flags() else f"{name} options:\n  (none)\n")
        print("\n".join(sections), end="")
        parser.exit(0)


def _method_parser(name: str) -> _Parser:
    """The flags of method `name` alone (two methods may share a flag name)."""
    from .methods.registry import METHODS

    entry = METHODS[name]
    parser = _Parser(prog=f"noisealign generate --method {name}", add_help=False)
    entry.add_arguments(parser.add_argument_group(f"{name} options ({entry.summary})"))
    return parser


def build_parser() -> argparse.ArgumentParser:
    from .methods.registry import METHODS
    from .ui.launch import add_arguments as add_ui_arguments

    parser = _Parser(prog="noisealign", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    generate = commands.add_parser(
        "generate", help="align one sample toward a reward and write a run folder", add_help=False,
        description="Align a diffusion model's sample toward a reward at test time. Writes OUT/result.json, "
                    "image.png (aligned), baseline.png (plain sample, same seed), trace.csv and, where a "
                    "method optimizes or chooses noise, noise.pt. Each method's options follow the shared ones; "
                    "an option of another method is an error.")
    generate.add_argument("-h", "--help", action=_GenerateHelp, help="show every option of every method and exit")
    generate.add_argument("--model", default="digits",
                          help="digits (bundled, default), gmm, or a diffusers hub id / local folder "
                               "(SD 1.x/2.x, SDXL, SD-Turbo/SDXL-Turbo, SD3)")
    generate.add_argument("--prompt", default="",
                          help='text prompt; for digits a digit "0".."9" or "" (unconditional, default)')
    generate.add_argument("--negative-prompt", default="", help="negative prompt for guidance")
    generate.add_argument("--guidance", type=finite_float, default=None, help="CFG scale (default: the model's)")
    generate.add_argument("--reward", default=None,
                          help="reward spec, e.g. digit:3, jpeg, brightness, digit:3+0.5*brightness "
                               "(default: digit:3 for digits, coordinate:0 for gmm, aesthetic for diffusers models)")
    generate.add_argument("--method", default="demon", choices=list(METHODS),
                          help="; ".join(f"{name}: {entry.summary}" for name, entry in METHODS.items()))
    generate.add_argument("--budget", type=integer, default=256,
                          help="reward queries the method may spend: the knob that makes methods comparable")
    generate.add_argument("--seed", type=integer, default=0,
                          help="same seed, same result (docs/determinism.md says under which conditions); 0 .. 2^63-1")
    generate.add_argument("--grid", type=integer, default=1,
                          help="also run seeds seed+1 .. seed+GRID-1 and write grid.png (baselines above, aligned below)")
    generate.add_argument("--seed-batch", type=integer, default=None, metavar="K",
                          help="run the grid's seeds K at a time as one batch (dno, guidance, reno: as rows of "
                               "one batch; the other methods in lockstep, each network call and reward query "
                               "carrying all K seeds' rows). Default: all on a GPU; 1 on CPU, where a batch is "
                               "faster but a grid cell may then differ in the last bits from its seed run alone "
                               "(all with --kernels batch-invariant, which keeps the bits); a batch that runs "
                               "out of GPU memory is halved")
    generate.add_argument("--out", default=None, help="run folder (default: a new folder under runs/); never overwritten")
    _add_model_arguments(generate.add_argument_group("model loading options (each model takes some; "
                                                      "one it does not take is an error)"))
    generate.add_argument("--threads", type=integer, default=None,
                          help="torch CPU threads (default: NOISEALIGN_THREADS, else torch's; recorded in result.json)")
    generate.add_argument("--offline", action="store_true",
                          help="forbid every download (also NOISEALIGN_OFFLINE=1); missing weights are one error line")
    generate.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_vlm_arguments(generate.add_argument_group("vlm reward options (see docs/vlm.md)"))

    regenerate = commands.add_parser(
        "regenerate", help="rebuild a run's aligned sample from its saved noise.pt and config",
        description="Rebuild RUN_DIR's aligned sample from noise.pt and result.json (no reward is built or "
                    "contacted), write RUN_DIR/regenerated.png (or .json) and say whether it equals the saved "
                    "one bit for bit (exit 0) or not (exit 1).")
    regenerate.add_argument("run_dir", help="a run folder written by `noisealign generate`")
    regenerate.add_argument("--threads", type=integer, default=None,
                            help="torch CPU threads (default: the run's, from result.json)")

    ui = commands.add_parser(
        "ui", help="align a sample by hand: a local web page shows each Demon step's candidates, you choose",
        description="Serve a local web page where you are Demon's reward: at each step choose the candidate "
                    "images you prefer (chosen +1, others -1), undo, finish, download the run folder.")
    add_ui_arguments(ui)
    from .sweep.cli import add_parsers as add_sweep_parsers

    add_sweep_parsers(commands)
    return parser


def _add_model_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--device", default=None, help="torch device of the model, e.g. cuda (digits and diffusers "
                                                      "models; default cpu)")
    group.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                       help="diffusers models: network precision (default fp32)")
    group.add_argument("--height", type=integer, default=None, help="diffusers models: image height in pixels")
    group.add_argument("--width", type=integer, default=None, help="diffusers models: image width in pixels")
    group.add_argument("--scheduler", choices=["ddim", "euler", "karras"], default=None,
                       help="diffusers models: the plain sampler's sigma grid, as diffusers' DDIM or Euler "
                            "scheduler would space it, or Karras (default: the checkpoint's own)")
    group.add_argument("--few-step", action=argparse.BooleanOptionalAction, default=None,
                       help="diffusers models: whether it is a few-step distillation (Turbo, FLUX.1-schnell), which "
                            "sets its default steps and guidance (default: read from its configs)")
    group.add_argument("--memory-format", choices=["contiguous", "channels_last"], default=None,
                       help="diffusers models: layout of the networks' 4-D tensors; channels_last suits GPU "
                            "convolutions (default contiguous; docs/performance.md)")
    group.add_argument("--compile", choices=["off", "default", "reduce-overhead", "max-autotune", "trace"],
                       default=None,
                       help="diffusers models: torch.compile mode of the denoising network, compiled on its first "
                            "call; or trace: torch.jit.trace it once per input shape (no compile time, same "
                            "numbers, less Python overhead per call) (default off; docs/performance.md)")
    group.add_argument("--kernels", choices=["default", "batch-invariant"], default=None,
                       help="CPU kernels of this process: batch-invariant computes each row of a batch as it would "
                            "be alone, so a grid's seeds run as one batch give the bits of each seed run alone, "
                            "and --seed-batch then defaults to all seeds on CPU too; slower per call (default "
                            "torch's own; docs/determinism.md)")


def _add_vlm_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--vlm-base-url", help="OpenAI-compatible API root (env NOISEALIGN_VLM_BASE_URL)")
    group.add_argument("--vlm-model", help="the judge's model name (env NOISEALIGN_VLM_MODEL)")
    group.add_argument("--vlm-api-key-env", help="the environment variable holding the API key (never a flag)")
    group.add_argument("--vlm-scenario", help="teacher, artist, researcher, journalist, or free text")
    group.add_argument("--vlm-timeout-s", type=float, help="seconds per attempt (default 60)")
    group.add_argument("--vlm-max-retries", type=int, help="attempts after the first (default 4)")
    group.add_argument("--vlm-max-concurrency", type=int, help="requests in flight at once (default 4)")
    group.add_argument("--vlm-requests-per-minute", type=float, help="rate limit, 0 for none (default)")
    group.add_argument("--vlm-replay", help="answer from a run's vlm_log.jsonl instead of the endpoint")


def _reward_registry(args: argparse.Namespace) -> dict:
    """The reward registry with the vlm factory bound to the --vlm-* flags."""
    from functools import partial

    from .rewards.registry import REWARDS
    from .rewards.vlm import vlm_options_from_args, vlm_reward

    return {**REWARDS, "vlm": partial(vlm_reward, replay_from=args.vlm_replay, **vlm_options_from_args(args))}


def main(argv: Sequence[str] | None = None) -> int:
    from .cpu import tune_malloc

    tune_malloc()                                   # before torch allocates; NOISEALIGN_MALLOPT=0: off
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        if args.command == "generate":
            _parse_method_flags(args, rest)
        elif rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from .rewards.hub import forbid_downloads, offline

        if getattr(args, "offline", False) or offline():   # one switch for rewards and model pipelines
            forbid_downloads()
        threads = _threads(args)
        if threads is not None:
            _set_threads(threads)
        if args.command == "ui":
            from .ui.launch import main as ui_main

            return ui_main(args)
        from .sweep.cli import COMMANDS as SWEEP_COMMANDS, main as sweep_main

        if args.command in SWEEP_COMMANDS:
            return sweep_main(args)
        return _generate(args) if args.command == "generate" else _regenerate(Path(args.run_dir), threads)
    except NoiseAlignError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _parse_method_flags(args: argparse.Namespace, rest: list[str]) -> None:
    """Parse the chosen method's own flags from what the shared parser left; a flag that only
    another method takes is an error naming that method."""
    from .methods.registry import methods_taking

    parser = _method_parser(args.method)
    _, unknown = parser.parse_known_args(rest, namespace=args)
    if unknown:
        flag = unknown[0].split("=", 1)[0]
        owners = methods_taking(flag) if flag.startswith("--") else []
        if owners:
            parser.error(f"{flag} is an option of {' and '.join(owners)}, not of {args.method}; "
                         f"drop it or pass --method {owners[0]}")
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.method_config = config_from_namespace(_method_config_type(args.method), args)


def _method_config_type(name: str) -> type:
    from .methods.registry import METHODS

    return METHODS[name].config_type


def _threads(args: argparse.Namespace) -> int | None:
    """--threads, else NOISEALIGN_THREADS (not for regenerate: it takes the run's own count)."""
    import os

    from .cpu import configured_threads

    return configured_threads(getattr(args, "threads", None), {} if args.command == "regenerate" else os.environ)


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _generate(args: argparse.Namespace) -> int:
    from .align import RunFailed, RunInterrupted
    from .generate import RunRequest, execute, prepare
    from .models.registry import LOADING_OPTIONS
    from .stopping import stop_on_signals

    options = {k: getattr(args, k) for k in LOADING_OPTIONS}
    request = RunRequest(model=args.model, method=args.method, method_config=args.method_config, reward=args.reward,
                         prompt=args.prompt, negative_prompt=args.negative_prompt, guidance=args.guidance,
                         budget=args.budget, seed=args.seed, grid=args.grid, seed_batch=args.seed_batch, out=args.out,
                         model_options=options)
    run = prepare(request, _reward_registry(args))
    try:
        with stop_on_signals():
            report = execute(run, partial(_progress, args) if not args.quiet else None)
    except RunInterrupted as stop:
        if stop.report is not None:
            print(f"interrupted ({stop}); kept in {stop.report.folder}: {_kept(stop.report.record)}", file=sys.stderr)
        return stop.exit_code
    except RunFailed as failure:
        if failure.report is None:
            raise
        print(f"error: {failure} (partial results kept in {failure.report.folder}: {_kept(failure.report.record)})",
              file=sys.stderr)
        return 2
    print(_summary(report.record))
    print(f"run folder: {report.folder}")
    return 0


def _summary(record: dict) -> str:
    """The line a reader judges the gain by: the plain sampler's reward, the method's own start
    where it has one (DNO's iterate 0), the aligned reward and what it cost."""
    start = record.get("start_reward")
    start_text = "" if start is None else f"; {record['method']} start {start:.4g}"
    return (f"{record['method']} on {record['model']} toward {record['reward']}: baseline (plain sampler) "
            f"{record['baseline_reward']:.4g}{start_text} -> aligned {record['final_reward']:.4g} "
            f"({record['reward_queries']} reward queries, {record['seconds']:.1f} s)")


def _kept(record: dict) -> str:
    reward = record.get("final_reward")
    if "reward_queries" not in record:
        return "no sample of the method yet"
    kept = "the best sample so far" + ("" if reward is None else f" (reward {reward:.4g})")
    return f"{kept} after {record['reward_queries']} reward queries"


def _regenerate(run_dir: Path, threads: int | None) -> int:
    import json

    import torch

    from .budget import Ledger
    from .methods.base import Problem, RunContext
    from .methods.registry import METHODS
    from .models.registry import load_model
    from .rewards.base import NO_REWARD
    from .runs import RunFolder

    result_path, noise_path = run_dir / "result.json", run_dir / "noise.pt"
    if not result_path.exists() or not noise_path.exists():
        raise NoiseAlignError(f"{run_dir} has no result.json and noise.pt; pass a folder written by "
                              "`noisealign generate` with a method that saves its noise")
    try:
        result = json.loads(result_path.read_text())
        config = result["config"]
        method = METHODS[result["method"]].from_config(config["method"])
        model_options, seed = config["model_options"], result["seed"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise NoiseAlignError(f"{result_path} is not a result.json this version of noisealign wrote "
                              f"({type(error).__name__}: {error}); regenerate needs its method, config and seed") from None
    if not hasattr(method, "regenerate"):
        raise NoiseAlignError(f"method {result['method']!r} cannot regenerate its samples")
    if threads is None and result.get("environment", {}).get("torch_threads"):
        torch.set_num_threads(result["environment"]["torch_threads"])   # the run's, for the same bits
    model = load_model(result["model"], **model_options)
    problem = Problem(model, NO_REWARD, result["prompt"], config["negative_prompt"], config["guidance"])
    noises = torch.load(noise_path, weights_only=True)
    regenerated = method.regenerate(RunContext(problem, seed, Ledger(query_limit=0)), noises)
    with RunFolder.open(run_dir) as folder:
        path = folder.save_output(regenerated.output, "regenerated")
    saved = run_dir / f"image{path.suffix}"
    same = saved.exists() and saved.read_bytes() == path.read_bytes()
    print(f"regenerated {path}: {'identical to' if same else 'DIFFERENT from'} {saved}")
    return 0 if same else 1


def _progress(args: argparse.Namespace, seed: int):
    """An observer moving a progress bar over the seed's reward queries (off when stderr is no terminal)."""
    from .methods.registry import METHODS

    bar = tqdm(total=args.budget if METHODS[args.method].needs_budget else None, unit="query",
               desc=f"{args.method} seed {seed}", disable=None, leave=False, file=sys.stderr)

    def observer(event) -> None:
        bar.n = int(event.counts.get("queries", 0))
        bar.refresh()

    return observer


if __name__ == "__main__":
    sys.exit(main())
