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


METHODS: dict[str, MethodEntry] = {
    "plain": MethodEntry("sample once, no alignment (0 reward queries)", Plain, PlainConfig,
                         _plain_config, _add_sampler_arguments, needs_budget=False),
    "best-of-n": MethodEntry("N = budget plain samples, keep the best (N queries)", BestOfN, BestOfNConfig,
                             lambda a: BestOfNConfig(sampler=_plain_config(a)), _no_arguments, needs_budget=True),
}
