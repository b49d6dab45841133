"""glibc malloc settings for a long-running server that receives large gRPC messages.

Each DoPut message arrives as many small gRPC slices and is copied into one contiguous slice
(up to ~50 MiB); both come from glibc malloc, not from Arrow's memory pool.  With glibc's
defaults two things make the process grow with the length of an upload instead of staying flat:

* the mmap threshold is *dynamic*: once a large block is freed the threshold rises (up to
  32 MiB), so later message buffers are carved out of the heap arenas instead of being mapped and
  unmapped, and the arenas fragment;
* every thread that mallocs may get its own 64 MiB arena (up to 8 per core), each keeping its
  freed memory.

Measured with a saturating client on a 4 GiB upload: peak RSS drifted to 0.9-1.7 GB with the
defaults; with a fixed 128 KiB threshold and two arenas it stays within 360-670 MB, like a 1 GiB
upload (bench/CORE_RESULTS.md).  The standard ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_ARENA_MAX``
environment variables still win: a setting given there is left alone.
"""

from __future__ import annotations

import ctypes
import os

# mallopt(3) parameter numbers (glibc malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD = 128 * 1024
ARENA_MAX = 2

_TUNABLES = (
    # (mallopt parameter, value, environment variable glibc reads at start)
    (M_MMAP_THRESHOLD, MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_"),
    (M_ARENA_MAX, ARENA_MAX, "MALLOC_ARENA_MAX"),
)


def _glibc():
    """The process's glibc, or None (musl, macOS, Windows: nothing to tune)."""
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process
        libc.gnu_get_libc_version  # only glibc has it
        return libc
    except (OSError, AttributeError, TypeError):
        return None


def tune(environ: dict[str, str] | None = None) -> dict[str, int]:
    """Apply the settings not already chosen through the environment; returns what was applied.

    Call it early, before the server's threads start allocating: arenas that already exist keep
    existing (the limit applies to new ones)."""
    env = os.environ if environ is None else environ
    libc = _glibc()
    if libc is None:
        return {}
    applied = {}
    for param, value, env_name in _TUNABLES:
        if env_name in env:
            continue
        if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1:
            applied[env_name] = value
    return applied
