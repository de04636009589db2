"""Reading prompts from a file a user has: plain text, JSON, JSON lines, CSV or TSV.

The format follows the suffix. Plain text (and any unknown suffix) is one prompt per line,
blank lines skipped. JSON is a list of strings or of objects; JSON lines has one string or
object per line; CSV and TSV have a header row. An object's or a row's prompt is its first
field named like PROMPT_FIELDS (any case), the names the published benchmark files use.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..errors import NoiseAlignError

PROMPT_FIELDS = ("prompt", "prompts", "text", "caption")


def read_prompt_file(path: Path) -> list[str]:
    """The prompts in `path`; a missing, unreadable, malformed or empty file is one error line."""
    if not path.is_file():
        raise NoiseAlignError(f"prompt file {path} does not exist; give a file with one prompt per line")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise NoiseAlignError(f"cannot read prompt file {path} ({error}); give a UTF-8 text file") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            prompts = [_prompt_of(item, path) for item in _json_list(json.loads(text), path)]
        elif suffix == ".jsonl":
            prompts = [_prompt_of(json.loads(line), path) for line in text.splitlines() if line.strip()]
        elif suffix in (".csv", ".tsv"):
            rows = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
            prompts = [_prompt_of(row, path) for row in rows]
        else:
            prompts = [line for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise NoiseAlignError(f"prompt file {path} is not valid JSON ({error.msg}, line {error.lineno})") from None
    if not prompts:
        raise NoiseAlignError(f"prompt file {path} holds no prompt")
    return prompts


def _json_list(value: Any, path: Path) -> list:
    if not isinstance(value, list):
        raise NoiseAlignError(f"prompt file {path} must hold a JSON list of prompts (strings or objects)")
    return value


def _prompt_of(item: Any, path: Path) -> str:
    """A string item itself, or an object's prompt field."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        fields = {str(key).lower(): value for key, value in item.items()}
        for name in PROMPT_FIELDS:
            if isinstance(fields.get(name), str):
                return fields[name]
    raise NoiseAlignError(f"prompt file {path}: an entry has no prompt field ({', '.join(PROMPT_FIELDS)}); "
                          f"got {str(item)[:80]!r}")
