"""Where reward weights come from: a local path, or the Hugging Face cache (downloading when online).

Every hub access goes through here so that a missing checkpoint always ends in one
NoiseAlignError line naming the repository, the file and the two ways to supply it.
`HF_HOME`, `HF_HUB_CACHE` and `HF_HUB_OFFLINE` are read at call time, not at import time,
so a process (or a test) that sets them late is still obeyed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import NoiseAlignError

_TRUE = {"1", "true", "yes", "on"}


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as it is set now."""
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.strip().lower() in _TRUE


def cache_dir() -> Path:
    """The hub cache huggingface_hub would use: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def first_line(error: Exception) -> str:
    """The first line of an error message, cut to fit a one-line NoiseAlignError."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:160]


def _missing(reward: str, repo_id: str, filename: str | None) -> NoiseAlignError:
    target = f"{repo_id}/{filename}" if filename else repo_id
    download = f"hf download {repo_id}" + (f" {filename}" if filename else "")
    why = "and HF_HUB_OFFLINE is set" if offline() else "and could not be downloaded"
    return NoiseAlignError(
        f"reward {reward!r}: {target} is not in the Hugging Face cache {cache_dir()} {why}; download it once "
        f"with `{download}` (HF_HOME selects the cache, HF_HUB_OFFLINE=1 then keeps runs offline) "
        f"or pass a local copy as {reward}:/path")


def hub_file(reward: str, repo_id: str, filename: str) -> Path:
    """One file of a hub repository, from the cache (or downloaded when online)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir(), local_files_only=offline()))
    except (OSError, EntryNotFoundError):
        raise _missing(reward, repo_id, filename) from None


def pretrained(reward: str, loader: Any, source: str | Path, **kwargs: Any) -> Any:
    """`loader.from_pretrained(source)` for a local folder or a hub id, with the one-line error."""
    local = Path(source).is_dir()
    hub = {} if local else {"cache_dir": cache_dir(), "local_files_only": offline()}
    try:
        return loader.from_pretrained(str(source), **hub, **kwargs)
    except OSError as error:
        if local:
            raise NoiseAlignError(f"reward {reward!r}: cannot load {source} ({first_line(error)}); "
                                  "the folder must hold what save_pretrained writes") from None
        raise _missing(reward, str(source), None) from None


def local_path(reward: str, argument: str | None, variants: Sequence[str] = ()) -> Path | None:
    """The spec argument read as a local file or folder (None when no argument was given)."""
    if not argument:
        return None
    path = Path(argument).expanduser()
    if not path.exists():
        named = f"one of {', '.join(variants)} or " if variants else ""
        raise NoiseAlignError(f"reward {reward!r}: {argument!r} is no file or folder; give {named}an existing "
                              f"local path as {reward}:/path, or no argument to use the hub")
    return path


def beside(folder: Path | None, marker: str, hub_id: str) -> str | Path:
    """A companion model (backbone, tokenizer): from `folder` when it holds `marker`, else from the hub."""
    if folder is not None and (folder / marker).exists():
        return folder
    return hub_id
