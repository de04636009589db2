"""Where reward weights come from: a local path, or the Hugging Face cache, downloading only what it lacks.

Every hub access goes through here so that a missing checkpoint always ends in one
NoiseAlignError line naming the repository, the file and the two ways to supply it.

What the cache holds is read without the network (local_files_only, with huggingface_hub
offline for the lookup so that it sends no requests of its own either). What it lacks is
downloaded only when downloads are allowed and one quick request shows that the hub answers;
otherwise the error comes at once, not after huggingface_hub's half minute of retries and
warnings. Downloads are forbidden by NOISEALIGN_OFFLINE, HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE
(1, true, yes, on; `forbid_downloads()` sets them). These and `HF_HOME` / `HF_HUB_CACHE` are
read at call time, not at import time, so a process (or a test) that sets them late is obeyed.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from ..errors import NoiseAlignError

_TRUE = {"1", "true", "yes", "on"}
OFFLINE_VARIABLES = ("NOISEALIGN_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

T = TypeVar("T")


def offline() -> bool:
    """Whether downloads are forbidden: any of OFFLINE_VARIABLES set true now."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in OFFLINE_VARIABLES)


def forbid_downloads() -> None:
    """Forbid every download in this process (the CLI's --offline): sets NOISEALIGN_OFFLINE=1
    and HF_HUB_OFFLINE=1. huggingface_hub reads HF_HUB_OFFLINE once, when it is imported, so its
    flag is set too if it is already loaded: transformers and diffusers then stay offline as well."""
    os.environ["NOISEALIGN_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def cache_dir() -> Path:
    """The hub cache huggingface_hub would use: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def first_line(error: Exception) -> str:
    """The first line of an error message, cut to fit a one-line NoiseAlignError."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:160]


def _missing(reward: str, repo_id: str, filename: str | None, why: str, local: str | None = None) -> NoiseAlignError:
    target = f"{repo_id}/{filename}" if filename else repo_id
    download = f"hf download {repo_id}" + (f" {filename}" if filename else "")
    return NoiseAlignError(
        f"reward {reward!r}: {target} is not in the Hugging Face cache {cache_dir()} {why}; download it once "
        f"with `{download}` (HF_HOME selects the cache, NOISEALIGN_OFFLINE=1 then keeps runs offline) "
        f"or pass a local copy as {local or reward + ':/path'}")


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached, or None when it answers: one HEAD request, no retries, at
    most HF_HUB_ETAG_TIMEOUT seconds (huggingface_hub's own setting, 10 by default)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as error:  # the HTTP client's own error types (DNS, refused, timeout, TLS): no hub
        return f"{constants.ENDPOINT} does not answer ({first_line(error)})"
    return None


@contextmanager
def _hub_library_offline() -> Iterator[None]:
    """huggingface_hub in offline mode for the duration of a cache lookup: even with
    local_files_only it sends a request of its own (the "agent harnesses" list) unless its
    HF_HUB_OFFLINE flag, read once at import, is set. Lookups run one at a time (model and
    rewards load in sequence), so flipping the flag for one is safe."""
    from huggingface_hub import constants

    saved, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _cache_or_hub(reward: str, repo_id: str, filename: str | None, load: Callable[[bool], T],
                  local: str | None = None) -> T:
    """load(local_files_only=True); when the cache lacks it, load(False) (a download) if downloads
    are allowed and the hub answers, else the one-line error at once."""
    from huggingface_hub.errors import EntryNotFoundError

    missing = (OSError, EntryNotFoundError)  # hub HTTP errors and transformers' "not found" are OSErrors
    try:
        with _hub_library_offline():
            return load(True)
    except missing:
        pass
    if offline():
        raise _missing(reward, repo_id, filename, "and downloads are forbidden (NOISEALIGN_OFFLINE, HF_HUB_OFFLINE "
                                                  "or TRANSFORMERS_OFFLINE)", local)
    unreachable = _hub_unreachable()
    if unreachable:
        raise _missing(reward, repo_id, filename, f"and {unreachable}", local)
    try:
        return load(False)
    except missing as error:
        raise _missing(reward, repo_id, filename, f"and could not be downloaded ({first_line(error)})",
                       local) from None


def hub_file(reward: str, repo_id: str, filename: str) -> Path:
    """One file of a hub repository, from the cache (or downloaded, see the module docstring)."""
    from huggingface_hub import hf_hub_download

    return _cache_or_hub(reward, repo_id, filename, lambda local_only: Path(
        hf_hub_download(repo_id, filename, cache_dir=cache_dir(), local_files_only=local_only)))


def check_cached_when_offline(reward: str, source: str | Path, local: str | None = None) -> None:
    """With downloads forbidden, refuse a hub id absent from the cache before any heavy import
    (transformers takes seconds to import; the answer is known from the cache folder alone).
    `local` is how the reward takes a local copy instead, when not as `reward:/path`."""
    if offline() and not Path(source).is_dir():
        if not (cache_dir() / f"models--{str(source).replace('/', '--')}").is_dir():
            raise _missing(reward, str(source), None, "and downloads are forbidden (NOISEALIGN_OFFLINE, "
                                                      "HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)", local)


def pretrained(reward: str, loader: Any, source: str | Path, local: str | None = None, **kwargs: Any) -> Any:
    """`loader.from_pretrained(source)` for a local folder or a hub id, with the one-line error
    (`local`: as in check_cached_when_offline)."""
    if not Path(source).is_dir():
        return _cache_or_hub(reward, str(source), None, lambda local_only: loader.from_pretrained(
            str(source), cache_dir=cache_dir(), local_files_only=local_only, **kwargs), local)
    try:
        return loader.from_pretrained(str(source), **kwargs)
    except OSError as error:
        raise NoiseAlignError(f"reward {reward!r}: cannot load {source} ({first_line(error)}); "
                              "the folder must hold what save_pretrained writes") from None


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
