"""Method names to their classes and configs. Adding a method: one module, one line here.

A method's flags come from its frozen config dataclass (`options.option` fields), so
`noisealign generate --help` lists each method's own options, result.json records the
config, and `from_config` rebuilds the method from it (for `regenerate`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from ..configs import config_from_dict
from ..options import add_flags, config_from_namespace, flags_of
from .base import Method
from .beam import Beam, BeamConfig
from .best_of_n import BestOfN, BestOfNConfig
from .demon import Demon, DemonConfig
from .dno import Dno, DnoConfig
from .fk import FeynmanKac, FkConfig
from .guidance import Guidance, GuidanceConfig
from .path_search import PathSearch, PathSearchConfig
from .plain import Plain, PlainConfig
from .reno import Reno, RenoConfig
from .svdd import Svdd, SvddConfig
from .zo_search import ZoSearch, ZoSearchConfig


@dataclass(frozen=True)
class MethodEntry:
    method: type
    config_type: type
    summary: str
    needs_budget: bool = True

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        add_flags(group, self.config_type)

    def flags(self) -> list[str]:
        return flags_of(self.config_type)

    def build(self, args: argparse.Namespace) -> Method:
        return self.method(config_from_namespace(self.config_type, args))

    def from_config(self, config: dict[str, Any]) -> Method:
        return self.method(config_from_dict(self.config_type, config))


METHODS: dict[str, MethodEntry] = {
    "plain": MethodEntry(Plain, PlainConfig, "sample once, no alignment (0 reward queries)", needs_budget=False),
    "best-of-n": MethodEntry(BestOfN, BestOfNConfig, "N = budget plain samples, keep the best (N queries)"),
    "demon": MethodEntry(Demon, DemonConfig, "sampling demons: K scored candidate noises per SDE step, "
                                             "floor(budget / K) steps on a grid fitted to the budget"),
    "dno": MethodEntry(Dno, DnoConfig, "optimize every sampler noise by gradient, zo or hybrid estimates "
                                       "(1 or q+1 queries per step)"),
    "reno": MethodEntry(Reno, RenoConfig, "optimize the initial noise of a few-step model by the reward's gradient "
                                          "(ReNO; 1 query per step)"),
    "guidance": MethodEntry(Guidance, GuidanceConfig, "add the reward's gradient at the denoised estimate to every "
                                                      "sampler step (DPS / universal guidance; steps x recurrences queries)"),
    "fk": MethodEntry(FeynmanKac, FkConfig, "Feynman-Kac steering: N SDE particles resampled by reward potentials "
                                            "(N queries per scoring step)"),
    "svdd": MethodEntry(Svdd, SvddConfig, "soft value-based decoding: keep 1 of M scored candidates per step "
                                          "(M queries per step)"),
    "beam": MethodEntry(Beam, BeamConfig, "beam search: W beams x M scored candidates, the W best kept "
                                          "(W x M queries per step)"),
    "zo-search": MethodEntry(ZoSearch, ZoSearchConfig, "zero-order search over the initial noise: N neighbours of "
                                                       "a pivot per round (N queries per round)"),
    "path-search": MethodEntry(PathSearch, PathSearchConfig, "search over paths: N paths re-noised into M branches, "
                                                             "the N best kept (N x M queries per round)"),
}


def methods_taking(flag: str) -> list[str]:
    """The methods that have `flag` among their options."""
    return [name for name, entry in METHODS.items() if flag in entry.flags()]
