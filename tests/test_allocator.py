"""glibc malloc tuning applied by `mosaicod serve` (mosaicod.allocator)."""

import subprocess
import sys
import textwrap

import pytest

from mosaicod import allocator

glibc_only = pytest.mark.skipif(allocator._glibc() is None, reason="not a glibc platform")

# In a fresh interpreter: free a 24 MiB block (with glibc's dynamic threshold this raises the mmap
# threshold to 24 MiB), then allocate 8 MiB and report whether it was mmap-ed (hblks grew) or
# carved out of the heap.
PROBE = textwrap.dedent("""
    import ctypes, sys
    from mosaicod import allocator

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    if sys.argv[1] == "tune":
        allocator.tune({})
    libc.free(libc.malloc(24 << 20))
    before = libc.mallinfo2().hblks
    p = libc.malloc(8 << 20)
    mapped = libc.mallinfo2().hblks - before
    libc.free(p)
    print(mapped)
""")


def _mapped(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"})
    return int(out.stdout.strip())


@glibc_only
def test_tune_fixes_the_mmap_threshold():
    assert _mapped("default") == 0  # glibc's dynamic threshold: the big block comes from the heap
    assert _mapped("tune") == 1     # fixed threshold: mapped, and unmapped again on free


@glibc_only
def test_tune_applies_both_settings():
    assert allocator.tune({}) == {"MALLOC_MMAP_THRESHOLD_": allocator.MMAP_THRESHOLD,
                                  "MALLOC_ARENA_MAX": allocator.ARENA_MAX}


@glibc_only
def test_environment_settings_win():
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "4"}
    assert allocator.tune(env) == {}
    assert allocator.tune({"MALLOC_ARENA_MAX": "4"}).keys() <= {"MALLOC_MMAP_THRESHOLD_"}
    assert allocator.tune({"MALLOC_ARENA_MAX": "4"}) == {"MALLOC_MMAP_THRESHOLD_": allocator.MMAP_THRESHOLD}
    assert allocator.tune({"MALLOC_MMAP_THRESHOLD_": "65536"}) == {"MALLOC_ARENA_MAX": allocator.ARENA_MAX}
