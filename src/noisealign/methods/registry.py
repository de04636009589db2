"""Method names to their CLI flags and builders. Adding a method: one module, one line here.

Each entry's `add_arguments(group)` declares the method's own flags; `build(args)` turns the
parsed flags into a method whose `config` is a frozen dataclass (written to result.json).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from .base import Method
from .best_of_n import BestOfN, BestOfNConfig
from .plain import Plain, PlainConfig


@dataclass(frozen=True)
class MethodEntry:
    summary: str
    add_arguments: Callable[[argparse._ArgumentGroup], None]
    build: Callable[[argparse.Namespace], Method]
    needs_budget: bool


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


METHODS: dict[str, MethodEntry] = {
    "plain": MethodEntry("sample once, no alignment (0 reward queries)",
                         _add_sampler_arguments, lambda a: Plain(_plain_config(a)), needs_budget=False),
    "best-of-n": MethodEntry("N = budget plain samples, keep the best (N queries)",
                             _no_arguments,
                             lambda a: BestOfN(BestOfNConfig(sampler=_plain_config(a))), needs_budget=True),
}
