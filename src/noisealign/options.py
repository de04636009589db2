"""Method options: declared once, as fields of a method's frozen config, turned into CLI flags.

A config field made with `option(default, help)` becomes the flag `--field-name` (or the
`flag` given), typed from the field's annotation: int, float (finite only), str, bool
(`--x` / `--no-x`), an optional number (`None`: the method decides), or a number-or-word
field with its own `parse`. Options several methods share (`--steps`, `--eta`, `--solver`)
are declared in SHARED, so every method that takes them has the same flag and help.

Two methods may use the same flag name: the CLI parses the chosen method's flags alone
(`method_parser`), and a flag only another method takes is an error naming that method.
Range checks live in each config's `__post_init__`, so the Python API is checked too.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any, Callable

from .errors import NoiseAlignError

SHARED = {
    "steps": "sampler grid points",
    "eta": "DDIM-eta noise level of the sampler: 0 samples the PF-ODE, 1 is DDPM",
    "solver": "ODE solver of the sampler: euler (= DDIM) or heun",
}
"""The help of options several methods share; `shared(name, default)` declares one."""


def option(default: Any, help: str, *, flag: str | None = None, choices: tuple[str, ...] | None = None,
           parse: Callable[[str], Any] | None = None, metavar: str | None = None) -> Any:
    """A config field that is also a command-line flag."""
    metadata = {"help": help, "flag": flag, "choices": choices, "parse": parse, "metavar": metavar}
    return dataclasses.field(default=default, metadata=metadata)


def shared(name: str, default: Any, note: str = "", **kwargs: Any) -> Any:
    """A config field for one of the SHARED options, with this method's default (and a note on it)."""
    return option(default, SHARED[name] + note, **kwargs)


def finite_float(text: str) -> float:
    """argparse type: a finite float (nan and inf are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def number_or(word: str) -> Callable[[str], float | str]:
    """argparse type: a finite number, or the one `word` (e.g. tau: a number or 'adaptive')."""
    def parse(text: str) -> float | str:
        if text == word:
            return text
        try:
            return finite_float(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"{text!r} is neither a finite number nor {word!r}") from None
    return parse


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def flag_fields(config_type: type) -> list[dataclasses.Field]:
    """The fields of a config that are flags (those declared with `option`)."""
    return [f for f in dataclasses.fields(config_type) if "help" in f.metadata]


def nested_configs(config_type: type) -> dict[str, type]:
    """Fields holding a config of their own (e.g. Best-of-N's sampler), whose flags are this one's too."""
    hints = typing.get_type_hints(config_type)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_type) if dataclasses.is_dataclass(hints[f.name])}


def add_flags(group: argparse._ArgumentGroup, config_type: type, prefix: str = "") -> None:
    """One flag per option of `config_type`; given flags land in the namespace under the field's
    name, absent ones not at all (argparse.SUPPRESS), so the dataclass keeps its defaults."""
    for nested in nested_configs(config_type).values():
        add_flags(group, nested, prefix)
    hints = typing.get_type_hints(config_type)
    for field in flag_fields(config_type):
        meta, kind = field.metadata, _base_type(hints[field.name])
        default = "" if field.default is None else f" (default {field.default})"
        help_text = f"{prefix}{meta['help']}{default}".replace("%", "%%")
        common = {"dest": field.name, "default": argparse.SUPPRESS, "help": help_text}
        if kind is bool:
            group.add_argument(flag_name(field), action=argparse.BooleanOptionalAction, **common)
            continue
        parse = meta["parse"] or {int: integer, float: finite_float, str: str}[kind]
        metavar = meta["metavar"] or (None if meta["choices"] else field.name.upper())
        group.add_argument(flag_name(field), type=parse, choices=meta["choices"], metavar=metavar, **common)


def _base_type(annotation: Any) -> type:
    """int for `int` and `int | None`; str for a union with str (a word or a number: parsed by `parse`)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return str if str in members else members[0]
    return annotation


def config_from_namespace(config_type: type, args: argparse.Namespace) -> Any:
    """The config with the flags given in `args` and the dataclass's defaults for the rest."""
    given = {f.name: getattr(args, f.name) for f in flag_fields(config_type) if hasattr(args, f.name)}
    given.update({name: config_from_namespace(nested, args) for name, nested in nested_configs(config_type).items()})
    return config_type(**given)


def flags_of(config_type: type) -> list[str]:
    """Every flag `add_flags` declares for `config_type`."""
    nested = [flag for sub in nested_configs(config_type).values() for flag in flags_of(sub)]
    return nested + [flag_name(f) for f in flag_fields(config_type)]


def check(problems: list[tuple[bool, str]], what: str) -> None:
    """Raise one NoiseAlignError for the first (bad, message) pair whose `bad` holds."""
    for bad, message in problems:
        if bad:
            raise NoiseAlignError(f"bad {what} option {message}")


def is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
