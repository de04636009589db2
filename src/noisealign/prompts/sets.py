"""Named prompt sets: the two we ship, the user's own file, and the benchmarks we can only read.

A set is named `name` or `name:argument` (`hpsv2:photo`, `file:my_prompts.txt`,
`parti:/data/PartiPrompts.tsv`). Shipped: `digits` ("0".."9") and `animals` (our own list of
common animal names, in the spirit of the animal prompts of DDPO's aesthetic protocol). The
published benchmarks (HPSv2's, DrawBench, PartiPrompts, GenEval) are not copied into the
package: they are read from where a user has them (a path, the `hpsv2` package's folder, or the
Hugging Face cache), and a set that is not there is one error line saying how to get it.
docs/sweep.md states each set's source and licence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

from ..errors import NoiseAlignError
from ..rewards.hub import cache_dir
from .files import read_prompt_file

PROMPT_FILE_SUFFIXES = (".txt", ".json", ".jsonl", ".csv", ".tsv")
HPSV2_STYLES = ("anime", "concept-art", "paintings", "photo")


@dataclass(frozen=True)
class PromptSet:
    """How to load one named set, and where it comes from (for the error line and the docs)."""

    name: str
    summary: str
    source: str
    shipped: bool
    load: Callable[[str | None], list[str]]


def load_prompt_set(spec: str) -> list[str]:
    """The prompts of `name[:argument]`, in the set's own order."""
    name, _, argument = spec.partition(":")
    if name not in PROMPT_SETS:
        raise NoiseAlignError(f"unknown prompt set {name!r}; choose from {', '.join(PROMPT_SETS)} "
                              "(file:PATH for your own, one prompt per line)")
    return PROMPT_SETS[name].load(argument or None)


def _shipped(filename: str) -> Callable[[str | None], list[str]]:
    def load(argument: str | None) -> list[str]:
        if argument:
            raise NoiseAlignError(f"prompt set {Path(filename).stem!r} takes no argument, got {argument!r}")
        return (resources.files(__package__) / filename).read_text(encoding="utf-8").splitlines()
    return load


def _user_file(argument: str | None) -> list[str]:
    if not argument:
        raise NoiseAlignError("prompt set 'file' needs a path: file:/path/prompts.txt (one prompt per line)")
    return read_prompt_file(Path(argument).expanduser())


def _hpsv2(argument: str | None) -> list[str]:
    """HPSv2's benchmark: 4 styles of prompts, each a JSON list; `all` is the four in order."""
    style = argument or "all"
    if style != "all" and style not in HPSV2_STYLES:
        raise NoiseAlignError(f"prompt set hpsv2 has styles {', '.join(HPSV2_STYLES)} or all, got {style!r}")
    how = ("run `python -c \"import hpsv2; hpsv2.benchmark_prompts('all')\"` once (the hpsv2 package fetches "
           "them into HPS_ROOT, default ~/.cache/hpsv2) or `hf download zhwang/HPDv2 --repo-type dataset "
           "--include 'benchmark/*.json'`")
    prompts = []
    for each in HPSV2_STYLES if style == "all" else (style,):
        found = _first_existing([_hps_root() / "datasets" / "benchmark" / f"{each}.json",
                                 *_hub_snapshot_files("zhwang/HPDv2", f"benchmark/{each}.json")])
        if found is None:
            raise NoiseAlignError(f"prompt set hpsv2: {each}.json is neither in {_hps_root()} nor in the Hugging "
                                  f"Face cache {cache_dir()}; {how}")
        prompts += read_prompt_file(found)
    return prompts


def _benchmark(name: str, hub_repos: Sequence[str], how: str,
               inside_folder: str | None = None) -> Callable[[str | None], list[str]]:
    """A benchmark read from `name:PATH` (a file, or a folder holding `inside_folder`), else from
    the first prompt file in a cached snapshot of one of `hub_repos`."""
    def load(argument: str | None) -> list[str]:
        if argument:
            path = Path(argument).expanduser()
            if path.is_dir() and inside_folder:
                path = path / inside_folder
            return read_prompt_file(path)
        found = _first_existing(path for repo in hub_repos for path in _hub_snapshot_files(repo))
        if found is None:
            searched = f" and is not in the Hugging Face cache {cache_dir()}" if hub_repos else ""
            raise NoiseAlignError(f"prompt set {name!r} is not shipped with noisealign{searched}; {how}")
        return read_prompt_file(found)
    return load


def _hps_root() -> Path:
    """Where the hpsv2 package keeps its data (its HPS_ROOT, default ~/.cache/hpsv2)."""
    return Path(os.environ.get("HPS_ROOT") or "~/.cache/hpsv2").expanduser()


def _hub_snapshot_files(repo: str, filename: str | None = None) -> list[Path]:
    """Files of cached snapshots of dataset `repo`: `filename` exactly, or every prompt file."""
    snapshots = cache_dir() / f"datasets--{repo.replace('/', '--')}" / "snapshots"
    if not snapshots.is_dir():
        return []
    if filename is not None:
        return sorted(snapshots.glob(f"*/{filename}"))
    return sorted(p for p in snapshots.glob("*/**/*") if p.suffix.lower() in PROMPT_FILE_SUFFIXES)


def _first_existing(paths) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


PROMPT_SETS: dict[str, PromptSet] = {s.name: s for s in [
    PromptSet("digits", 'the digits "0".."9", the prompts of the bundled digits model',
              "noisealign", True, _shipped("digits.txt")),
    PromptSet("animals", "58 common animal names, our own list (DDPO's aesthetic protocol used such a list)",
              "noisealign", True, _shipped("animals.txt")),
    PromptSet("file", "your own prompts: file:PATH, one per line (or .json, .jsonl, .csv, .tsv)",
              "yours", True, _user_file),
    PromptSet("hpsv2", "HPSv2's benchmark prompts (anime, concept-art, paintings, photo; 800 each), hpsv2[:style]",
              "HPSv2 (tgxs002/HPSv2), dataset zhwang/HPDv2", False, _hpsv2),
    PromptSet("drawbench", "DrawBench's 200 prompts (Imagen), drawbench[:PATH of its CSV]",
              "Imagen (Saharia et al. 2022)", False,
              _benchmark("drawbench", ["sayakpaul/drawbench"],
                         "export the DrawBench sheet linked from the Imagen paper as CSV and pass drawbench:/path.csv, "
                         "or `hf download sayakpaul/drawbench --repo-type dataset`")),
    PromptSet("parti", "PartiPrompts (P2), over 1600 prompts, parti[:PATH of PartiPrompts.tsv]",
              "google-research/parti", False,
              _benchmark("parti", ["nateraw/parti-prompts"],
                         "pass parti:/path/PartiPrompts.tsv from the google-research/parti repository, "
                         "or `hf download nateraw/parti-prompts --repo-type dataset`")),
    PromptSet("geneval", "GenEval's 553 prompts, geneval:PATH of its evaluation_metadata.jsonl (or its checkout)",
              "djghosh13/geneval", False,
              _benchmark("geneval", [], "clone the djghosh13/geneval repository and pass geneval:/path/to/geneval "
                                        "(its prompts/evaluation_metadata.jsonl)",
                         inside_folder="prompts/evaluation_metadata.jsonl")),
]}
