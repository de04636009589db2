"""`noisealign`: a thin command line over the library; it parses, calls, and writes the run folder."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from .errors import NoiseAlignError

DEFAULT_REWARDS = {"digits": "digit:3", "gmm": "coordinate:0"}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit status 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    from .methods.registry import METHODS
    from .ui.launch import add_arguments as add_ui_arguments

    parser = _Parser(prog="noisealign", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    generate = commands.add_parser(
        "generate", help="align one sample toward a reward and write a run folder",
        description="Align a diffusion model's sample toward a reward at test time. Writes OUT/result.json, "
                    "image.png (aligned), baseline.png (plain sample, same seed), trace.csv and, where a "
                    "method optimizes or chooses noise, noise.pt.")
    generate.add_argument("--model", default="digits",
                          help="digits (bundled, default), gmm, or a diffusers hub id / local folder "
                               "(SD 1.x/2.x, SDXL, SD-Turbo/SDXL-Turbo, SD3)")
    generate.add_argument("--prompt", default="",
                          help='text prompt; for digits a digit "0".."9" or "" (unconditional, default)')
    generate.add_argument("--negative-prompt", default="", help="negative prompt for guidance")
    generate.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's)")
    generate.add_argument("--reward", default=None,
                          help="reward spec, e.g. digit:3, jpeg, brightness, digit:3+0.5*brightness "
                               "(default: digit:3 for digits, aesthetic for diffusers models)")
    generate.add_argument("--method", default="demon", choices=sorted(METHODS),
                          help="; ".join(f"{name}: {entry.summary}" for name, entry in METHODS.items()))
    generate.add_argument("--budget", type=int, default=256,
                          help="reward queries the method may spend: the knob that makes methods comparable")
    generate.add_argument("--seed", type=int, default=0, help="same seed, same result (bit for bit on CPU)")
    generate.add_argument("--grid", type=int, default=1,
                          help="also run seeds seed+1 .. seed+GRID-1 and write grid.png (baselines above, aligned below)")
    generate.add_argument("--out", default=None, help="run folder (default: a new folder under runs/); never overwritten")
    generate.add_argument("--device", default="cpu", help="torch device of the model, e.g. cuda")
    generate.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="model precision")
    generate.add_argument("--height", type=int, default=None, help="diffusers models: image height in pixels")
    generate.add_argument("--width", type=int, default=None, help="diffusers models: image width in pixels")
    generate.add_argument("--scheduler", choices=["ddim", "euler", "karras"], default=None,
                          help="diffusers models: the plain sampler's sigma grid, as diffusers' DDIM or Euler "
                               "scheduler would space it, or Karras (default: the checkpoint's own)")
    generate.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_vlm_arguments(generate.add_argument_group("vlm reward options (see docs/vlm.md)"))
    for name, entry in METHODS.items():
        entry.add_arguments(generate.add_argument_group(f"{name} options"))

    regenerate = commands.add_parser(
        "regenerate", help="rebuild a run's aligned sample from its saved noise.pt and config",
        description="Rebuild RUN_DIR's aligned sample from noise.pt and result.json, write "
                    "RUN_DIR/regenerated.png (or .json) and say whether it equals the saved one bit for bit.")
    regenerate.add_argument("run_dir", help="a run folder written by `noisealign generate`")

    ui = commands.add_parser(
        "ui", help="align a sample by hand: a local web page shows each Demon step's candidates, you choose",
        description="Serve a local web page where you are Demon's reward: at each step choose the candidate "
                    "images you prefer (chosen +1, others -1), undo, finish, download the run folder.")
    add_ui_arguments(ui)
    return parser


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
    args = build_parser().parse_args(argv)
    try:
        if args.command == "ui":
            from .ui.launch import main as ui_main

            return ui_main(args)
        return _generate(args) if args.command == "generate" else _regenerate(Path(args.run_dir))
    except NoiseAlignError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _generate(args: argparse.Namespace) -> int:
    from .align import align, baseline
    from .methods.base import Problem
    from .methods.registry import METHODS
    from .models.registry import load_model
    from .rewards.registry import parse_reward, reward_terms
    from .runs import Trace, create_run_dir, save_comparison_grid, save_noises, save_output, write_json

    entry = METHODS[args.method]
    if args.grid < 1:
        raise NoiseAlignError(f"--grid must be at least 1, got {args.grid}")
    if args.budget < 0 or (entry.needs_budget and args.budget < 1):
        raise NoiseAlignError(f"--budget must be a positive number of reward queries for {args.method}, "
                              f"got {args.budget}")
    method = entry.build(args)
    registry = _reward_registry(args)
    reward = parse_reward(args.reward, registry) if args.reward else None  # a bad spec fails before loading
    model = load_model(args.model, device=args.device, dtype=args.dtype, height=args.height, width=args.width,
                       scheduler=args.scheduler)
    reward_spec = args.reward or DEFAULT_REWARDS.get(args.model, "aesthetic")
    reward = reward or parse_reward(reward_spec, registry)
    problem = Problem(model, reward, args.prompt, args.negative_prompt, args.guidance)
    out = create_run_dir(args.out, args.method, args.seed)
    for term in reward_terms(reward):
        if hasattr(term, "attach_run_dir"):   # e.g. the VLM judge logs every request there
            term.attach_run_dir(out)
    if args.reward is None:
        print(f"note: no --reward given; aligning the {args.model} model toward {reward_spec}", file=sys.stderr)

    result = {"method": args.method, "model": args.model, "prompt": args.prompt, "reward": reward_spec,
              "seed": args.seed, "budget": args.budget, "config": _config(method, args)}
    trace = Trace()
    baselines, aligned, per_seed = [], [], []
    try:
        for seed in range(args.seed, args.seed + args.grid):
            base = baseline(problem, seed)
            if seed == args.seed:
                save_output(base.result.output, out / "baseline")
                result["baseline_reward"] = base.final_reward
            with _progress(args, entry.needs_budget, seed) as progress:
                observe = trace.record if seed == args.seed else None
                outcome = align(problem, method, seed, args.budget, _chain(observe, progress))
            baselines.append(base.result.output)
            aligned.append(outcome.result.output)
            per_seed.append({"seed": seed, "baseline_reward": base.final_reward, "final_reward": outcome.final_reward,
                             "reward_queries": outcome.ledger.reward_queries, "nfe": outcome.ledger.nfe,
                             "seconds": round(outcome.seconds, 3)})
            if seed == args.seed:
                _record_primary(result, outcome, out, save_output, save_noises)
                trace.write(out / "trace.csv")
                write_json(result, out / "result.json")
    except NoiseAlignError as error:
        result["error"] = str(error)
        trace.write(out / "trace.csv")
        write_json(result, out / "result.json")
        raise NoiseAlignError(f"{error} (partial results kept in {out})") from None

    if args.grid > 1:
        result["grid"] = per_seed
        result["grid_mean_baseline_reward"] = sum(r["baseline_reward"] for r in per_seed) / len(per_seed)
        result["grid_mean_final_reward"] = sum(r["final_reward"] for r in per_seed) / len(per_seed)
        save_comparison_grid(baselines, aligned, out / "grid.png")
        write_json(result, out / "result.json")
    print(f"{args.method} on {args.model} toward {reward_spec}: baseline reward {result['baseline_reward']:.4g} "
          f"-> aligned {result['final_reward']:.4g} ({result['reward_queries']} reward queries, "
          f"{result['seconds']:.1f} s)")
    print(f"run folder: {out}")
    return 0


def _regenerate(run_dir: Path) -> int:
    import json

    import torch

    from .budget import Ledger
    from .methods.base import Problem, RunContext
    from .methods.registry import METHODS
    from .models.registry import load_model
    from .rewards.registry import parse_reward
    from .runs import save_output

    result_path, noise_path = run_dir / "result.json", run_dir / "noise.pt"
    if not result_path.exists() or not noise_path.exists():
        raise NoiseAlignError(f"{run_dir} has no result.json and noise.pt; pass a folder written by "
                              "`noisealign generate` with a method that saves its noise")
    result = json.loads(result_path.read_text())
    config = result["config"]
    method = METHODS[result["method"]].from_config(config["method"])
    if not hasattr(method, "regenerate"):
        raise NoiseAlignError(f"method {result['method']!r} cannot regenerate its samples")
    model = load_model(result["model"], device=config["device"], dtype=config["dtype"], height=config["height"],
                       width=config["width"], scheduler=config["scheduler"])
    problem = Problem(model, parse_reward(result["reward"]), result["prompt"], config["negative_prompt"],
                      config["guidance"])
    noises = torch.load(noise_path, weights_only=True)
    regenerated = method.regenerate(RunContext(problem, result["seed"], Ledger()), noises)
    path = save_output(regenerated.output, run_dir / "regenerated")
    saved = run_dir / f"image{path.suffix}"
    same = saved.read_bytes() == path.read_bytes()
    print(f"regenerated {path}: {'identical to' if same else 'DIFFERENT from'} {saved}")
    return 0 if same else 1


def _config(method, args: argparse.Namespace) -> dict:
    return {"method": asdict(method.config), "budget": args.budget, "guidance": args.guidance,
            "negative_prompt": args.negative_prompt, "device": args.device, "dtype": args.dtype, "height": args.height, "width": args.width,
            "scheduler": args.scheduler, "grid": args.grid}


def _progress(args: argparse.Namespace, budgeted: bool, seed: int) -> tqdm:
    return tqdm(total=args.budget if budgeted else None, unit="query", desc=f"{args.method} seed {seed}",
                disable=True if args.quiet else None, leave=False, file=sys.stderr)  # None: off when not a terminal


def _chain(observe, progress: tqdm):
    """An observer that records the event (primary seed only) and moves the progress bar."""

    def observer(event) -> None:
        if observe is not None:
            observe(event)
        progress.n = int(event.counts.get("queries", 0))
        progress.refresh()

    return observer


def _record_primary(result: dict, outcome, out: Path, save_output, save_noises) -> None:
    save_output(outcome.result.output, out / "image")
    if outcome.result.noises:
        save_noises(outcome.result.noises, out / "noise.pt")
    result.update(final_reward=outcome.final_reward, method_reward=outcome.result.reward,
                  reward_queries=outcome.ledger.reward_queries, nfe=outcome.ledger.nfe,
                  network_evaluations=outcome.ledger.network_evaluations,
                  seconds=round(outcome.seconds, 3), **outcome.result.info)


if __name__ == "__main__":
    sys.exit(main())
