"""Prompt sets for sweeps: shipped ones, a user's own file, and published benchmarks read from
where the user keeps them (see sets.py and docs/sweep.md)."""

from .files import read_prompt_file
from .sets import PROMPT_SETS, PromptSet, load_prompt_set

__all__ = ["PROMPT_SETS", "PromptSet", "load_prompt_set", "read_prompt_file"]
