"""CPU start-up settings of the CLI: glibc's malloc thresholds, and the torch thread count.

Malloc: thresholds that keep the sampler's buffers mapped between calls.

By default glibc serves a request above M_MMAP_THRESHOLD (128 KiB, raised dynamically up to 32
MiB by the blocks freed) from fresh mmap pages, unmaps it on free, and returns free heap above
M_TRIM_THRESHOLD to the kernel. A sampler allocates and frees activations of the same few
megabytes on every network call, so each call faults its pages in again. Pinning both
thresholds high (what MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 in the
environment do, but applied from inside the process with mallopt, whose int argument caps the
trim threshold at 2 GiB - 1) keeps them mapped and reused:
docs/performance.md has the measurements. The bits of a run do not change, only where its
memory comes from; peak RSS can grow by the memory the process would have given back.
`noisealign` calls `tune_malloc` first thing; NOISEALIGN_MALLOPT=0 turns it off.

Threads: `--threads N`, else NOISEALIGN_THREADS=N, else torch's default (OMP_NUM_THREADS or
the core count). Both settings are recorded in result.json's environment.
"""

from __future__ import annotations

import ctypes
import os
from typing import Mapping

from .errors import NoiseAlignError

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3          # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 * 2 ** 20                        # glibc's largest allowed value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 2 ** 31 - 1
"""mallopt takes a C int: the environment's 4294967296 would wrap to 0 (trim at every free); 2 GiB - 1 is the most."""
SWITCH = "NOISEALIGN_MALLOPT"
"""Set to 0 to keep glibc's defaults."""
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
THREADS = "NOISEALIGN_THREADS"
"""The torch thread count when --threads is not given."""
_applied: dict[str, int] = {}


def tune_malloc(environ: Mapping[str, str] = os.environ) -> dict[str, int]:
    """Pin glibc's mmap and trim thresholds for this process; returns what was set ({} if nothing).

    Nothing is set when NOISEALIGN_MALLOPT=0, when the user already chose thresholds through
    glibc's own environment variables (they win), or when the C library has no mallopt (not glibc).
    """
    if environ.get(SWITCH, "1") == "0" or any(name in environ for name in USER_SETTINGS):
        return {}
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return {}
    applied = {}
    for name, parameter, value in (("mmap_threshold", M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                   ("trim_threshold", M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if mallopt(parameter, value) == 1:
            applied[name] = value
    _applied.update(applied)
    return applied


def malloc_settings() -> dict[str, int]:
    """What `tune_malloc` set in this process ({}: glibc's defaults or the user's environment)."""
    return dict(_applied)


def configured_threads(flag: int | None, environ: Mapping[str, str] = os.environ) -> int | None:
    """The thread count to pin: the flag's, else NOISEALIGN_THREADS's, else None (torch's default)."""
    if flag is None and environ.get(THREADS, "").strip():
        text = environ[THREADS].strip()
        if not text.isdigit():
            raise NoiseAlignError(f"{THREADS}={text!r} is not a whole number of threads")
        flag = int(text)
    if flag is not None and flag < 1:
        raise NoiseAlignError(f"--threads must be at least 1, got {flag}")
    return flag


def _glibc_mallopt():
    """glibc's `int mallopt(int, int)`, or None on another C library."""
    try:
        libc = ctypes.CDLL(None)                        # the process's own symbols, libc's among them
        libc.gnu_get_libc_version                       # glibc only (musl and macOS lack it)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt
