"""Method names to their CLI flags and builders. Adding a method: one module, one line here.

Each entry's `add_arguments(group)` declares the method's own flags and `config_from_args(args)`
turns them into the method's frozen config dataclass; `method(config)` builds it. The config is
written to result.json, and `from_config` rebuilds the method from it (for `regenerate`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from ..configs import config_from_dict
from .base import Method
from .best_of_n import BestOfN, BestOfNConfig
from .demon import DEMONS, LOOKAHEADS, Demon, DemonConfig
from .dno import Dno, DnoConfig
from .plain import Plain, PlainConfig


@dataclass(frozen=True)
class MethodEntry:
    summary: str
    method: Callable[[Any], Method]
    config_type: type
    config_from_args: Callable[[argparse.Namespace], Any]
    add_arguments: Callable[[argparse._ArgumentGroup], None]
    needs_budget: bool

    def build(self, args: argparse.Namespace) -> Method:
        return self.method(self.config_from_args(args))

    def from_config(self, config: dict[str, Any]) -> Method:
        return self.method(config_from_dict(self.config_type, config))


def _add_sampler_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--steps", type=int, default=None,
                       help="sampler grid points, for every method (default: the method's, else the model's)")
    group.add_argument("--solver", choices=["euler", "heun"], default=None,
                       help="plain / best-of-n: ODE solver (euler = DDIM; default: the model's)")
    group.add_argument("--eta", type=float, default=None,
                       help="DDIM-eta noise level: 0 samples the PF-ODE, 1 is DDPM "
                            "(default: 0 for plain / best-of-n, 1 for dno)")


def _plain_config(args: argparse.Namespace) -> PlainConfig:
    return PlainConfig(steps=args.steps, solver=args.solver, eta=args.eta or 0.0)


def _no_arguments(group: argparse._ArgumentGroup) -> None:
    """The shared sampler flags (--steps, --solver, --eta) are declared once, by plain."""


def _tau(text: str) -> float | str:
    if text == "adaptive":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'adaptive'") from None


def _add_demon_arguments(group: argparse._ArgumentGroup) -> None:
    defaults = DemonConfig()
    group.add_argument("--demon", choices=DEMONS, default=defaults.demon,
                       help="demon: weights b_k = tanh((r_k - mean r) / tau) or softmax(r / tau)")
    group.add_argument("--K", type=int, default=defaults.K,
                       help="demon: candidate noises per step, i.e. reward queries per demon step. "
                            "A budget B pays for floor(B / K) demon steps, taken from sigma_max down; "
                            "the rest of the grid (and everything below --ode-after) runs the ODE "
                            "without queries. B must be at least K. Small budgets: lower --K and --steps "
                            "until B / K steps reach --ode-after (e.g. B 64: --K 4 --steps 23 on digits)")
    group.add_argument("--beta", type=float, default=None,
                       help="demon: noise level of the reverse SDE (default: the paper's 0.1 scaled by "
                            "14.648 / sigma_max, keeping its beta * sigma_max; 0.018 for digits)")
    group.add_argument("--tau", type=_tau, default=defaults.tau,
                       help="demon: weight temperature, a number or 'adaptive' (each step's reward std)")
    group.add_argument("--lookahead", choices=LOOKAHEADS, default=defaults.lookahead,
                       help="demon: clean estimate each candidate is scored on: ODE to sigma_min (Heun), "
                            "Tweedie D(x, sigma) (one call), or the model's consistency model")
    group.add_argument("--lookahead-steps", type=int, default=defaults.lookahead_steps,
                       help="demon: Heun steps of the ODE look-ahead from sigma_max (fewer further down)")
    group.add_argument("--ode-after", type=float, default=None,
                       help="demon: sigma below which to finish with the ODE (default: the paper's 0.11 "
                            "on SD's 14.6..0.002 grid, moved to the same Karras position of the model's range)")


def _demon_config(args: argparse.Namespace) -> DemonConfig:
    steps = DemonConfig.grid_points if args.steps is None else args.steps
    return DemonConfig(demon=args.demon, K=args.K, beta=args.beta, tau=args.tau, lookahead=args.lookahead,
                       lookahead_steps=args.lookahead_steps, ode_after=args.ode_after, grid_points=steps)


def _add_dno_arguments(group: argparse._ArgumentGroup) -> None:
    d = DnoConfig()
    group.add_argument("--dno-mode", choices=["auto", "grad", "zo", "hybrid"], default=d.mode,
                       help="dno: gradient estimator; auto = grad for differentiable rewards, else hybrid")
    group.add_argument("--lr", type=float, default=d.lr, help=f"dno: Adam step size (default {d.lr})")
    group.add_argument("--iterations", type=int, default=None,
                       help="dno: Adam steps (default: as many as --budget pays)")
    group.add_argument("--gamma", type=float, default=d.gamma,
                       help=f"dno: weight of the probability regularization (default {d.gamma})")
    group.add_argument("--q", type=int, default=d.q, help=f"dno zo/hybrid: perturbations per step (default {d.q})")
    group.add_argument("--mu", type=float, default=d.mu, help=f"dno zo/hybrid: perturbation scale (default {d.mu})")
    group.add_argument("--micro-batch", type=int, default=d.micro_batch,
                       help=f"dno zo/hybrid: perturbed samples run together (default {d.micro_batch})")
    group.add_argument("--grad-clip", type=float, default=d.grad_clip,
                       help=f"dno: max gradient norm over all noise (default {d.grad_clip})")
    group.add_argument("--no-checkpointing", action="store_true",
                       help="dno: keep every denoiser's activations (faster, memory grows with --steps)")


def _dno_config(args: argparse.Namespace) -> DnoConfig:
    d = DnoConfig()
    return DnoConfig(mode=args.dno_mode, steps=args.steps or d.steps, eta=d.eta if args.eta is None else args.eta,
                     lr=args.lr, iterations=args.iterations, gamma=args.gamma, grad_clip=args.grad_clip,
                     q=args.q, mu=args.mu, checkpointing=not args.no_checkpointing, micro_batch=args.micro_batch)


METHODS: dict[str, MethodEntry] = {
    "plain": MethodEntry("sample once, no alignment (0 reward queries)", Plain, PlainConfig,
                         _plain_config, _add_sampler_arguments, needs_budget=False),
    "best-of-n": MethodEntry("N = budget plain samples, keep the best (N queries)", BestOfN, BestOfNConfig,
                             lambda a: BestOfNConfig(sampler=_plain_config(a)), _no_arguments, needs_budget=True),
    "demon": MethodEntry("sampling demons: K scored candidate noises per SDE step, floor(budget / K) steps",
                         Demon, DemonConfig, _demon_config, _add_demon_arguments, needs_budget=True),
    "dno": MethodEntry("optimize every sampler noise by gradient, zo or hybrid estimates (1 or q+1 queries "
                       "per step)", Dno, DnoConfig, _dno_config, _add_dno_arguments, needs_budget=True),
}
