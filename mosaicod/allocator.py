"""glibc malloc settings for a long-running server that receives large gRPC messages.

Each DoPut message arrives as many small gRPC slices (tens of KiB each) and is copied into one
contiguous slice (the message size, 16 MiB from the SDK and the benches, up to ~50 MiB); both come
from glibc malloc, not from Arrow's memory pool.  Three settings, fixed at start:

* ``M_MMAP_THRESHOLD`` = 64 MiB, fixed.  glibc's default threshold is *dynamic*: once a large
  block is freed it rises (up to 32 MiB) and the arenas fragment, so the process grew with the
  length of an upload (peak RSS 0.9-1.7 GB on a 4 GiB upload).  The previous fixed 128 KiB kept
  RSS flat but made every message buffer a fresh mapping, and the heap was grown and trimmed back
  for every message's slices: every byte received was a page fault on fresh, zeroed pages
  (``perf`` on an image upload: 28% of the server CPU under ``exc_page_fault``; ``strace``:
  3,275 ``brk`` + 2,319 ``madvise`` per GiB; 1.0-1.5 GB faulted in per GB received).  With 64 MiB,
  message buffers come from the heap and are reused (2.5% of the CPU in page faults, ~20 ``brk``
  per GiB); only blocks above 64 MiB, which a non-main arena's 64 MiB heap could not hold anyway,
  are mapped.
* ``M_TRIM_THRESHOLD`` = 32 MiB: the top of the heap is given back only when more than 32 MiB
  (two messages) is free there, so memory freed by one message is reused by the next instead of
  being trimmed and faulted in again.  128 MiB was no faster and kept ~40 MB more.
* ``M_ARENA_MAX`` = 2: every thread that mallocs may otherwise get its own 64 MiB arena (up to 8
  per core), each keeping its freed memory.

``M_TOP_PAD`` is left at its default: the trim threshold already keeps the freed top for reuse.
Arrow's own pool (mimalloc in these wheels) holds the encoder's buffers and is not affected.

Figures (this 2-core VM, side by side, ``bench/bench_image.py`` uploads, server CPU per GB of
100 KB incompressible payload): 128 KiB threshold 1.7-2.7 s/GB, these settings 1.05-1.25 s/GB.
Memory (``bench/bench_core.py``, IMU upload): steady rate 1 GiB / 4 GiB peak RSS 406 / 420 MB,
ratio 1.03 (128 KiB: 352 / 355 MB); saturating client 525 / 493 MB (128 KiB: 440 / 535 MB);
flat with the upload length either way.  The standard ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_ARENA_MAX`` environment variables, and their
``GLIBC_TUNABLES`` names (``glibc.malloc.mmap_threshold`` etc.), still win: a setting given there is
left alone.
"""

from __future__ import annotations

import ctypes
import os

# mallopt(3) parameter numbers (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD = 64 * 1024 * 1024
TRIM_THRESHOLD = 32 * 1024 * 1024
ARENA_MAX = 2

_TUNABLES = (
    # (mallopt parameter, value, environment variable glibc reads at start, its GLIBC_TUNABLES name)
    (M_MMAP_THRESHOLD, MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold"),
    (M_TRIM_THRESHOLD, TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold"),
    (M_ARENA_MAX, ARENA_MAX, "MALLOC_ARENA_MAX", "glibc.malloc.arena_max"),
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
    tunables = {item.split("=", 1)[0] for item in env.get("GLIBC_TUNABLES", "").split(":") if "=" in item}
    applied = {}
    for param, value, env_name, tunable in _TUNABLES:
        if env_name in env or tunable in tunables:
            continue
        if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1:
            applied[env_name] = value
    return applied
