"""The `noisealign ui` command: its flags, and starting (or resuming) a session and its server."""

from __future__ import annotations

import argparse
import sys
import webbrowser
from dataclasses import replace
from pathlib import Path

from ..errors import NoiseAlignError
from ..methods.demon import DEMONS, LOOKAHEADS, DemonConfig
from ..options import finite_float, integer
from ..runs import check_out
from .server import UIServer, exposure_warning
from .session import CHOICES_FILE, HumanSession, RunSpec, read_choices

RUN_DEFAULTS = {
    "model": "digits", "prompt": "", "negative_prompt": "", "guidance": None, "seed": 0,
    "K": 8, "steps": 16, "beta": None, "demon": DemonConfig.demon, "lookahead": DemonConfig.lookahead,
    "lookahead_steps": DemonConfig.lookahead_steps, "out": None, "device": None, "dtype": None,
    "height": None, "width": None, "scheduler": None, "reference": None, "reference_model": None,
}
"""Options of a new run (beta None: `DemonConfig.beta_for`, the paper's beta moved to the
model's range). With --resume they come from the run's choices.json instead, so the parser
leaves them None and a given one is an error."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = RUN_DEFAULTS
    run = parser.add_argument_group("the run (with --resume, these come from RUN_DIR/choices.json)")
    run.add_argument("--model", help=f"{d['model']} (bundled, default), or any image model `generate` takes")
    run.add_argument("--prompt", help='text prompt; for digits a digit "0".."9" or "" (unconditional, default)')
    run.add_argument("--negative-prompt", help="negative prompt for guidance")
    run.add_argument("--guidance", type=finite_float, help="CFG scale (default: the model's)")
    run.add_argument("--K", type=integer, help=f"candidates shown per step (default {d['K']})")
    run.add_argument("--steps", type=integer,
                     help=f"Karras grid points (default {d['steps']}); the upper ~70%% of them are your choices, "
                          "the rest runs the ODE")
    run.add_argument("--beta", type=finite_float,
                     help="noise level of the reverse SDE (default: the paper's 0.1 at Stable Diffusion's sigma_max "
                          "14.6, scaled to the model's: 0.1 x 14.6 / sigma_max, 0.018 for digits)")
    run.add_argument("--demon", choices=DEMONS, help=f"weights from your +1/-1 (default {d['demon']})")
    run.add_argument("--lookahead", choices=LOOKAHEADS,
                     help="what each candidate image shows: its ODE solution (ode, default), D(x, sigma) "
                          "(tweedie, one call, blurrier) or the model's few-step estimate (consistency)")
    run.add_argument("--lookahead-steps", type=integer,
                     help=f"steps of the ODE look-ahead (default {d['lookahead_steps']})")
    run.add_argument("--seed", type=integer, help="same seed and same choices, same image (default 0; 0 .. 2^63-1)")
    run.add_argument("--out", help="run folder (default: a new folder under runs/); never overwritten")
    run.add_argument("--device", help="torch device of the model, e.g. cuda (default cpu)")
    run.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="diffusers models: precision (default fp32)")
    run.add_argument("--height", type=integer, help="diffusers models: image height in pixels")
    run.add_argument("--width", type=integer, help="diffusers models: image width in pixels")
    run.add_argument("--scheduler", choices=["ddim", "euler", "karras"],
                     help="diffusers models: the baseline's grid (Demon always steps on a Karras grid)")
    run.add_argument("--reference", metavar="IMAGE",
                     help="a reference image: the page shows the DINOv2 similarity of the current sample to it, "
                          "and trace.csv records it per step (docs/ui.md)")
    run.add_argument("--reference-model", metavar="MODEL",
                     help="with --reference: the Dinov2Model, a hub id or local folder (default facebook/dinov2-base)")
    serve = parser.add_argument_group("the server")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; anything else is exposed)")
    serve.add_argument("--port", type=integer, default=0, help="port (default 0: a free one, printed with the URL)")
    serve.add_argument("--no-browser", action="store_true", help="print the URL, do not open a browser")
    serve.add_argument("--resume", metavar="RUN_DIR",
                       help=f"continue a run of `noisealign ui` from RUN_DIR/{CHOICES_FILE} (its choices are replayed)")
    serve.add_argument("--finish", action="store_true",
                       help="with --resume: replay the choices, finish the run (ODE to the end) and exit, no server")


def main(args: argparse.Namespace) -> int:
    """Start or resume the session, serve it until Ctrl-C, say where the run folder is."""
    if not 0 <= args.port <= 65535:
        raise NoiseAlignError(f"--port {args.port} is not a port; give 1..65535, or 0 for a free one")
    if args.finish and not args.resume:
        raise NoiseAlignError("--finish finishes a saved run; give it with --resume RUN_DIR")
    session = _resume(args) if args.resume else _start(args)
    try:
        return _serve(session, args)
    finally:
        session.close()


def _serve(session: HumanSession, args: argparse.Namespace) -> int:
    if args.finish:
        if not session.finished:
            session.finish()
        print(f"finished after {len(session.choices)} chosen steps: {session.run_dir}", flush=True)
        return 0
    try:
        server = UIServer(session, args.host, args.port)
    except OSError as error:
        raise NoiseAlignError(f"cannot listen on {args.host}:{args.port} ({error.strerror or error}); "
                              "choose another --port, or 0 for a free one") from None
    warning = exposure_warning(args.host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    print(f"noisealign ui: open {server.url}", flush=True)
    print(f"run folder: {session.run_dir} (Ctrl-C stops the server; the run folder is kept)", flush=True)
    if not args.no_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    if session.finished:
        print(f"finished: {session.run_dir}", flush=True)
    else:
        print(f"stopped after {len(session.choices)} chosen steps; continue with "
              f"`noisealign ui --resume {session.run_dir}`", flush=True)
    return 0


def _start(args: argparse.Namespace) -> HumanSession:
    from ..methods.base import Problem
    from ..rewards.human import HumanChoice

    v = {name: default if getattr(args, name) is None else getattr(args, name)
         for name, default in RUN_DEFAULTS.items()}
    if not 0 <= v["seed"] < 2 ** 63:
        raise NoiseAlignError(f"--seed must lie in [0, 2^63), got {v['seed']}")
    check_out(v["out"])
    if v["reference_model"] is not None and v["reference"] is None:
        raise NoiseAlignError("--reference-model chooses the model of --reference; give --reference IMAGE too")
    reference = None if v["reference"] is None else _absolute(v["reference"])
    reference_model = v["reference_model"]
    if reference_model is not None and Path(reference_model).expanduser().is_dir():
        reference_model = _absolute(reference_model)     # a local folder, found again from any directory
    config = DemonConfig(demon=v["demon"], K=v["K"], beta=v["beta"], lookahead=v["lookahead"],
                         lookahead_steps=v["lookahead_steps"], grid_points=v["steps"])  # bad options fail here
    spec = RunSpec(v["model"], device=v["device"], dtype=v["dtype"], height=v["height"], width=v["width"],
                   scheduler=v["scheduler"], reference=reference, reference_model=reference_model)
    model = spec.load_model()
    if v["beta"] is None:
        config = replace(config, beta=config.beta_for(model))  # saved resolved, so a resume needs no model
    problem = Problem(model, HumanChoice(), v["prompt"], v["negative_prompt"], v["guidance"])
    return HumanSession.start(problem, config, v["seed"], v["out"], spec)


def _absolute(path: str) -> str:
    """A path as saved in choices.json: absolute, so that --resume finds it from any directory."""
    return str(Path(path).expanduser().resolve())


def _resume(args: argparse.Namespace) -> HumanSession:
    given = [f"--{name.replace('_', '-')}" for name in RUN_DEFAULTS if getattr(args, name) is not None]
    if given:
        raise NoiseAlignError(f"--resume takes the run's options from {CHOICES_FILE}; drop {', '.join(given)}")
    saved = len(read_choices(args.resume)["choices"])
    print(f"replaying the {saved} choices saved in {args.resume} ...", file=sys.stderr, flush=True)
    session = HumanSession.resume(args.resume)
    if session.replay_diverged_at is not None:
        print(f"WARNING: replaying {args.resume} gave a different state from step {session.replay_diverged_at} on "
              "(another torch version or device?); the images you see now differ from the ones chosen",
              file=sys.stderr, flush=True)
    return session
