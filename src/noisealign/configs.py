"""Frozen config dataclasses to and from JSON, so result.json's `config` re-runs a run."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from .errors import NoiseAlignError


def config_from_dict(config_type: type, values: dict[str, Any]) -> Any:
    """Rebuild a (possibly nested) config dataclass from its `dataclasses.asdict` form."""
    hints = typing.get_type_hints(config_type)
    names = {f.name for f in dataclasses.fields(config_type)}
    unknown = set(values) - names
    if unknown:
        raise NoiseAlignError(f"unknown {config_type.__name__} option(s) {sorted(unknown)}; "
                              f"expected some of {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        field_type = hints[name]
        if dataclasses.is_dataclass(field_type) and isinstance(value, dict):
            value = config_from_dict(field_type, value)
        kwargs[name] = value
    return config_type(**kwargs)
