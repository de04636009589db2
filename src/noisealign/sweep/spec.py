"""The sweep file (TOML): read, overridden by flags, checked, resolved. Nothing is loaded or written.

    seeds = [0, 1]                      # or { start = 0, count = 8 }
    optimize = ["digit:3"]              # rewards each method is aligned toward (a cell each)
    evaluate = ["digit:8", "jpeg"]      # held out: scored on every output and baseline

    [model]                             # `generate`'s model flags without the dashes
    name = "digits"

    [prompts]
    set = "digits"                      # or list = ["", "8"]; take = N keeps the first N

    [[methods]]
    label = "demon"                     # unique; default: the method's name
    method = "demon"
    budgets = [32, 64]
    options = { K = 4, lookahead-steps = 5 }   # `generate --method demon` flags

Every mistake is one NoiseAlignError line naming the file, the place and the fix. The
resolved spec (`SweepSpec.to_dict`: prompts listed, method configs complete) is what a sweep
folder stores and what a resumed sweep must match.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..configs import config_from_dict
from ..errors import NoiseAlignError
from ..generate import SEED_LIMIT, RunRequest
from ..methods.registry import METHODS
from ..models.registry import LOADING_OPTIONS, check_model
from ..prompts import load_prompt_set
from ..rewards.registry import REWARDS, parse_reward
from .method_options import method_config

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SPEC_VERSION = 1
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
TOP_KEYS = ("seeds", "optimize", "evaluate", "model", "prompts", "methods")
MODEL_KEYS = ("name", "guidance", "negative-prompt", *LOADING_OPTIONS)
MODEL_TYPES = {"height": int, "width": int}
"""The loading options that are numbers (the others are words)."""
METHOD_KEYS = ("label", "method", "budgets", "options")


@dataclass(frozen=True)
class MethodSpec:
    """One row of the comparison: a method with its options, at each of its budgets."""

    label: str
    method: str
    budgets: tuple[int, ...]
    config: Any


@dataclass(frozen=True)
class SweepSpec:
    """Everything a sweep runs, resolved: the model, the prompts, the seeds, the rewards, the methods."""

    model: str
    model_options: dict[str, Any]
    guidance: float | None
    negative_prompt: str
    prompt_set: str
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    optimize: tuple[str, ...]
    evaluate: tuple[str, ...]
    methods: tuple[MethodSpec, ...]

    @property
    def reward_specs(self) -> list[str]:
        """Every reward a worker loads: the optimized ones and the held-out ones, once each."""
        return list(dict.fromkeys(self.optimize + self.evaluate))

    def method(self, label: str) -> MethodSpec:
        return next(m for m in self.methods if m.label == label)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form a sweep folder stores (sweep.json) and Ray workers receive."""
        return {"version": SPEC_VERSION, "model": self.model, "model_options": dict(self.model_options),
                "guidance": self.guidance, "negative_prompt": self.negative_prompt, "prompt_set": self.prompt_set,
                "prompts": list(self.prompts), "seeds": list(self.seeds), "optimize": list(self.optimize),
                "evaluate": list(self.evaluate),
                "methods": [{"label": m.label, "method": m.method, "budgets": list(m.budgets),
                             "config": dataclasses.asdict(m.config)} for m in self.methods]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SweepSpec":
        methods = tuple(MethodSpec(m["label"], m["method"], tuple(m["budgets"]),
                                   config_from_dict(METHODS[m["method"]].config_type, m["config"]))
                        for m in data["methods"])
        return cls(data["model"], data["model_options"], data["guidance"], data["negative_prompt"],
                   data["prompt_set"], tuple(data["prompts"]), tuple(data["seeds"]), tuple(data["optimize"]),
                   tuple(data["evaluate"]), methods)


def load_spec(path: Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """The sweep in the TOML file at `path`, with command-line `overrides` applied, checked."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NoiseAlignError(f"sweep file {path} does not exist; pass a TOML file (see examples/digits.toml)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise NoiseAlignError(f"cannot read sweep file {path} ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise NoiseAlignError(f"{path} is not valid TOML ({error})") from None
    apply_overrides(data, overrides or {})
    try:
        return resolve(data)
    except NoiseAlignError as error:
        raise NoiseAlignError(f"{path}: {error}") from None


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Replace parts of the file's content by the flags given (None: not given)."""
    given = {key: value for key, value in overrides.items() if value is not None}
    model = data.setdefault("model", {})
    if isinstance(model, dict):   # anything else: resolve() names the problem
        model.update({key: given[flag] for flag, key in (("model", "name"), ("device", "device"), ("kernels", "kernels"))
                      if flag in given})
    if "prompts" in given:
        data["prompts"] = {"set": given["prompts"]}
    prompts = data.setdefault("prompts", {})
    if "take" in given and isinstance(prompts, dict):
        prompts["take"] = given["take"]
    for key in ("seeds", "optimize", "evaluate"):
        if key in given:
            data[key] = given[key]
    methods = data.get("methods")
    if isinstance(methods, list) and all(isinstance(m, dict) for m in methods):
        if "methods" in given:
            unknown = set(given["methods"]) - {m.get("label", m.get("method")) for m in methods}
            if unknown:
                raise NoiseAlignError(f"--methods: no method labelled {', '.join(sorted(unknown))} in the sweep file")
            data["methods"] = methods = [m for m in methods if m.get("label", m.get("method")) in given["methods"]]
        if "budgets" in given:
            for m in methods:
                if m.get("method") != "plain":
                    m["budgets"] = given["budgets"]


def resolve(data: dict[str, Any]) -> SweepSpec:
    """Check the file's content (after overrides) and resolve it into a SweepSpec."""
    _only(data, TOP_KEYS, "the file")
    model = _table(data, "model", required=True)
    _only(model, MODEL_KEYS, "[model]", normalize=True)
    model = {key.replace("_", "-"): value for key, value in model.items()}
    name = _typed(model, "name", str, "[model]", required=True)
    check_model(name)
    guidance = _typed(model, "guidance", float, "[model]")
    options = {key: _typed(model, key, MODEL_TYPES.get(key, str), "[model]") for key in LOADING_OPTIONS}
    options = {key: value for key, value in options.items() if value is not None}
    negative = _typed(model, "negative-prompt", str, "[model]") or ""
    prompt_set, prompts = _prompts(_table(data, "prompts", required=True))
    seeds = _seeds(data.get("seeds"))
    optimize = _rewards(data, "optimize", required=True)
    evaluate = _rewards(data, "evaluate", required=False)
    methods = _methods(data.get("methods"))
    for method in methods:   # generate's own checks: budgets, seeds, guidance, model options
        for budget in method.budgets:
            RunRequest(model=name, method=method.method, method_config=method.config, reward=optimize[0],
                       prompt=prompts[0], negative_prompt=negative, guidance=guidance,
                       budget=budget, seed=seeds[0], model_options=options)
    return SweepSpec(name, options, guidance, negative, prompt_set, prompts, seeds, optimize,
                     evaluate, methods)


def _only(table: dict[str, Any], allowed: tuple[str, ...], where: str, normalize: bool = False) -> None:
    for key in table:
        if (key.replace("_", "-") if normalize else key) not in allowed:
            raise NoiseAlignError(f"unknown key {key!r} in {where}; expected {', '.join(allowed)}")


def _table(data: dict[str, Any], key: str, required: bool) -> dict[str, Any]:
    value = data.get(key)
    if value is None and required:
        raise NoiseAlignError(f"missing [{key}] table")
    if value is not None and not isinstance(value, dict):
        raise NoiseAlignError(f"{key} must be a table ([{key}]), got {type(value).__name__}")
    return value or {}


def _typed(table: dict[str, Any], key: str, kind: type, where: str, required: bool = False) -> Any:
    """table[key], which must be of `kind` (an int passes for a float, a bool never for a number)."""
    value = table.get(key)
    if value is None:
        if required:
            raise NoiseAlignError(f"missing {key!r} in {where}")
        return None
    accepted = (int, float) if kind is float else kind
    if isinstance(value, bool) or not isinstance(value, accepted):
        raise NoiseAlignError(f"{where} {key} must be a {kind.__name__}, got {value!r}")
    return float(value) if kind is float else value


def _prompts(table: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """(the set's name, its prompts): `set` names a prompt set, `list` gives them; `take` keeps the first N."""
    _only(table, ("set", "list", "take"), "[prompts]")
    if ("set" in table) == ("list" in table):
        raise NoiseAlignError("[prompts] needs either set = \"NAME\" (digits, animals, file:PATH, ...) or "
                              "list = [\"...\"], not both")
    if "set" in table:
        name = _typed(table, "set", str, "[prompts]")
        prompts = load_prompt_set(name)
    else:
        name, prompts = "list", table["list"]
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise NoiseAlignError("[prompts] list must be a non-empty list of strings")
    take = _typed(table, "take", int, "[prompts]")
    if take is not None:
        if take < 1:
            raise NoiseAlignError(f"[prompts] take must be at least 1, got {take}")
        prompts = prompts[:take]
    return name, tuple(prompts)


def _seeds(value: Any) -> tuple[int, ...]:
    if isinstance(value, dict):
        _only(value, ("start", "count"), "seeds")
        start = _typed(value, "start", int, "seeds", required=True)
        count = _typed(value, "count", int, "seeds", required=True)
        if count < 1:
            raise NoiseAlignError(f"seeds count must be at least 1, got {count}")
        value = list(range(start, start + count))
    if not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in value):
        raise NoiseAlignError("seeds must be a non-empty list of whole numbers or { start = S, count = N }")
    if len(set(value)) != len(value):
        raise NoiseAlignError("seeds lists a seed twice")
    bad = next((s for s in value if not 0 <= s < SEED_LIMIT), None)
    if bad is not None:
        raise NoiseAlignError(f"seed {bad} is outside [0, 2^63)")
    return tuple(value)


def _rewards(data: dict[str, Any], key: str, required: bool) -> tuple[str, ...]:
    """Reward specs, checked for their grammar and names (the rewards themselves load in the workers)."""
    value = data.get(key, [])
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or (required and not value):
        raise NoiseAlignError(f"{key} must be a {'non-empty ' if required else ''}list of reward specs "
                              "such as [\"digit:3\", \"jpeg\"]")
    if len(set(value)) != len(value):
        raise NoiseAlignError(f"{key} lists a reward twice")
    stubs = {name: _StubReward for name in REWARDS}
    for spec in value:
        parse_reward(spec, stubs)
    return tuple(value)


class _StubReward:
    """Stands for a reward while a spec's grammar is checked, so no weights load in the driver."""

    differentiable = True

    def __init__(self, argument: str | None):
        self.name = argument or ""


def _methods(value: Any) -> tuple[MethodSpec, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        raise NoiseAlignError("the file needs at least one [[methods]] table (method = \"demon\", budgets = [...])")
    methods = [_method(table, f"[[methods]] {index + 1}") for index, table in enumerate(value)]
    labels = [m.label for m in methods]
    twice = next((label for label in labels if labels.count(label) > 1), None)
    if twice:
        raise NoiseAlignError(f"two [[methods]] are labelled {twice!r}; give each a unique label")
    return tuple(methods)


def _method(table: dict[str, Any], where: str) -> MethodSpec:
    _only(table, METHOD_KEYS, where)
    method = _typed(table, "method", str, where, required=True)
    if method not in METHODS:
        raise NoiseAlignError(f"{where}: unknown method {method!r}; choose from {', '.join(METHODS)}")
    label = _typed(table, "label", str, where) or method
    if not LABEL.fullmatch(label):
        raise NoiseAlignError(f"{where}: label {label!r} must be letters, digits and _ . + - (it names folders)")
    where = f"{where} ({label})"
    budgets = table.get("budgets", [0] if method == "plain" else None)
    if (not isinstance(budgets, list) or not budgets
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in budgets)):
        raise NoiseAlignError(f"{where}: budgets must be a non-empty list of whole numbers of reward queries")
    if len(set(budgets)) != len(budgets):
        raise NoiseAlignError(f"{where}: budgets lists a budget twice")
    options = table.get("options", {})
    if not isinstance(options, dict):
        raise NoiseAlignError(f"{where}: options must be a table of {method}'s flags, e.g. options = {{ K = 4 }}")
    return MethodSpec(label, method, tuple(budgets), method_config(method, options, where))
