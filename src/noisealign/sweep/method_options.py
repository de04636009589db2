"""A sweep file's method options are `generate`'s flags, written as TOML keys without the dashes.

`options = { K = 4, lookahead = "tweedie", lookahead-steps = 5 }` means exactly
`noisealign generate --method demon --K 4 --lookahead tweedie --lookahead-steps 5`: the same
parser (built from the method's config, `options.add_flags`) reads both, so names, types,
choices and range checks cannot drift apart. Underscores may stand for dashes.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import NoiseAlignError
from ..methods.registry import METHODS
from ..options import config_from_namespace


class _OptionParser(argparse.ArgumentParser):
    """argparse whose errors are NoiseAlignErrors (no exit, no usage text), no abbreviations."""

    def __init__(self) -> None:
        super().__init__(add_help=False, allow_abbrev=False)

    def error(self, message: str) -> None:
        raise NoiseAlignError(message)


def method_config(method: str, options: dict[str, Any], where: str) -> Any:
    """The frozen config of `method` with `options` given as in a sweep file; `where` prefixes errors."""
    entry = METHODS[method]
    parser = _OptionParser()
    entry.add_arguments(parser)
    argv = [_as_flag(key, value, where) for key, value in options.items()]
    try:
        namespace, unknown = parser.parse_known_args(argv)
        if unknown:
            name = unknown[0].split("=", 1)[0].lstrip("-")
            takes = ", ".join(flag.lstrip("-") for flag in entry.flags()) or "no option"
            raise NoiseAlignError(f"method {method} has no option {name!r} (it takes {takes})")
        return config_from_namespace(entry.config_type, namespace)
    except NoiseAlignError as error:
        raise NoiseAlignError(f"{where}: {error}") from None


def _as_flag(key: str, value: Any, where: str) -> str:
    """One TOML key = value as one command-line argument: --key=value, or --key / --no-key."""
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    if isinstance(value, (int, float, str)):
        return f"{flag}={value}"
    raise NoiseAlignError(f"{where}: option {key!r} must be a number, a string or true/false, "
                          f"got {type(value).__name__}")
