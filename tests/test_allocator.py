"""glibc malloc tuning applied by `mosaicod serve` (mosaicod.allocator)."""

import json
import subprocess
import sys
import textwrap

import pytest

from mosaicod import allocator

glibc_only = pytest.mark.skipif(allocator._glibc() is None, reason="not a glibc platform")

# In a fresh interpreter (optionally tuned): allocate a 16 MiB block (a received gRPC message) and
# a 96 MiB one; report whether each was mmap-ed (hblks grew) or carved out of a heap arena, and
# how much of the heap stays with the process once the 16 MiB block is freed (trimmed or kept).
PROBE = textwrap.dedent("""
    import ctypes, json, sys
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
    elif sys.argv[1] == "tune-environ":  # as serve does
        allocator.tune()
    out = {}
    for name, size in (("16MiB", 16 << 20), ("96MiB", 96 << 20)):
        before = libc.mallinfo2().hblks
        p = libc.malloc(size)
        out[name + "_mapped"] = libc.mallinfo2().hblks - before
        libc.free(p)
        if name == "16MiB":
            out["heap_kept_mib"] = libc.mallinfo2().arena >> 20
    print(json.dumps(out))
""")


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout)


@glibc_only
def test_message_sized_blocks_come_from_the_heap_and_stay_for_reuse():
    default = _probe("default")
    assert default["16MiB_mapped"] == 1  # glibc's initial 128 KiB threshold: a fresh mapping per message
    tuned = _probe("tune")
    assert tuned["16MiB_mapped"] == 0  # from the heap ...
    assert tuned["heap_kept_mib"] >= 16  # ... and kept once freed (below the trim threshold): reused
    assert tuned["96MiB_mapped"] == 1  # above the fixed threshold: mapped and unmapped again


@glibc_only
def test_tune_applies_every_setting():
    assert allocator.tune({}) == {"MALLOC_MMAP_THRESHOLD_": allocator.MMAP_THRESHOLD,
                                  "MALLOC_TRIM_THRESHOLD_": allocator.TRIM_THRESHOLD,
                                  "MALLOC_ARENA_MAX": allocator.ARENA_MAX}


@glibc_only
def test_environment_settings_win():
    env = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "4"}
    assert allocator.tune(env) == {}
    assert allocator.tune({"MALLOC_ARENA_MAX": "4"}) == {"MALLOC_MMAP_THRESHOLD_": allocator.MMAP_THRESHOLD,
                                                         "MALLOC_TRIM_THRESHOLD_": allocator.TRIM_THRESHOLD}
    assert allocator.tune({"MALLOC_MMAP_THRESHOLD_": "131072"}) == {
        "MALLOC_TRIM_THRESHOLD_": allocator.TRIM_THRESHOLD, "MALLOC_ARENA_MAX": allocator.ARENA_MAX}


@glibc_only
def test_glibc_tunables_settings_win():
    env = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4:glibc.malloc.mmap_threshold=131072"}
    assert allocator.tune(env) == {"MALLOC_TRIM_THRESHOLD_": allocator.TRIM_THRESHOLD}
    assert allocator.tune({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}) == {
        "MALLOC_MMAP_THRESHOLD_": allocator.MMAP_THRESHOLD, "MALLOC_ARENA_MAX": allocator.ARENA_MAX}
    assert allocator.tune({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}) == {  # other tunables: ours apply
        "MALLOC_MMAP_THRESHOLD_": allocator.MMAP_THRESHOLD, "MALLOC_TRIM_THRESHOLD_": allocator.TRIM_THRESHOLD,
        "MALLOC_ARENA_MAX": allocator.ARENA_MAX}


@glibc_only
def test_an_environment_threshold_is_glibcs_own():
    """A threshold given in the environment is the one glibc applies (tune leaves it alone)."""
    def run(env):
        out = subprocess.run([sys.executable, "-c", PROBE, "tune-environ"], capture_output=True, text=True,
                             check=True, env={"PATH": "/usr/bin:/bin", **env})
        return json.loads(out.stdout)

    assert run({})["16MiB_mapped"] == 0
    assert run({"MALLOC_MMAP_THRESHOLD_": "131072"})["16MiB_mapped"] == 1
