"""noisealign.cpu: glibc's malloc thresholds pinned at start-up, behind a switch. Each case runs in
a fresh interpreter, so the allocator's state is the start-up one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from noisealign.cpu import MMAP_THRESHOLD, TRIM_THRESHOLD, _glibc_mallopt

SRC = str(Path(__file__).resolve().parents[1] / "src")

pytestmark = pytest.mark.skipif(_glibc_mallopt() is None, reason="needs glibc's mallopt")

# Where a fresh process puts a 20 MiB malloc and whether free gives it back: with glibc's
# defaults above the 128 KiB mmap threshold it is mmapped (the heap does not grow); pinned, it
# comes from the heap and stays there after free (the trim threshold is 2 GiB).
PROBE = """
import ctypes, json, sys
from noisealign.cpu import tune_malloc
applied = tune_malloc()
libc = ctypes.CDLL("libc.so.6")
libc.sbrk.restype, libc.malloc.restype = ctypes.c_void_p, ctypes.c_void_p
libc.malloc.argtypes, libc.free.argtypes, libc.sbrk.argtypes = [ctypes.c_size_t], [ctypes.c_void_p], [ctypes.c_ssize_t]
start = libc.sbrk(0)
block = libc.malloc(20 * 2 ** 20)
grown = libc.sbrk(0) - start
libc.free(block)
kept = libc.sbrk(0) - start
print(json.dumps({"applied": applied, "heap_grew": grown >= 20 * 2 ** 20, "heap_kept": kept >= 20 * 2 ** 20}))
"""


def probe(**environ: str) -> dict:
    env = {key: value for key, value in os.environ.items()
           if key not in ("NOISEALIGN_MALLOPT", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    env.update(environ, PYTHONPATH=SRC)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_pinned_thresholds_keep_a_large_block_on_the_heap_after_free():
    result = probe()
    assert result == {"applied": {"mmap_threshold": MMAP_THRESHOLD, "trim_threshold": TRIM_THRESHOLD},
                      "heap_grew": True, "heap_kept": True}


def test_the_switch_keeps_glibcs_defaults():
    assert probe(NOISEALIGN_MALLOPT="0") == {"applied": {}, "heap_grew": False, "heap_kept": False}


def test_thresholds_the_user_set_in_the_environment_win():
    result = probe(MALLOC_MMAP_THRESHOLD_="65536")
    assert result == {"applied": {}, "heap_grew": False, "heap_kept": False}


def test_the_trim_threshold_fits_mallopts_int():
    """mallopt's value is a C int: the environment's 4294967296 would wrap to 0 and trim at every free."""
    assert TRIM_THRESHOLD < 2 ** 31
