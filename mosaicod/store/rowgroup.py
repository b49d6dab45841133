"""Reading one row group of a local chunk file: its bytes read with ``pread`` into a buffer the
read reuses, then decoded from memory.

Why not a memory-mapped file: a mapped page past the end of a file truncated while it is mapped
(a bad copy, a full disk on another instance, an operator's mistake), or a page the disk cannot
read, makes the kernel send SIGBUS, and that kills the whole server instead of failing one read.
``pread`` reports the same conditions as a short read or an ``OSError``, which fail only the read
that met them (``DamagedFile``).  The cost is one copy from the page cache into a buffer that stays
faulted in across the row groups of a read (no fresh zeroed pages per column chunk, which is what
made plain buffered reads slow); see ``bench/bench_core.py``'s read rows.

The buffer is reused only when nothing can still read it: the reader of the previous row group is
gone, and every slice handed to Parquet (a ``memoryview``) can be released, i.e. no Arrow buffer
still points into it; otherwise the next row group goes to a new buffer.

When a read ends, its buffer is kept for the next read (at most ``IDLE_BUFFERS`` of them, each at
most ``IDLE_BUFFER_MAX`` bytes, per process): a fresh buffer is faulted in and zeroed by the kernel
on first touch, which after an upload had trimmed the heap cost ~6% of the server's CPU in a
put-then-get loop (``perf``: ``clear_page_erms`` under ``preadv``).
"""

from __future__ import annotations

import os
import threading
import weakref

import numpy as np
import pyarrow.parquet as pq


class DamagedFile(Exception):
    """A chunk file cannot be read as its footer describes (truncated, unreadable, not Parquet).
    ``reason``: a few words for the client (no path); ``str()``: the detail for the server log."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def byte_ranges(footer: pq.FileMetaData, row_group: int, columns: list[str] | None) -> list[tuple[int, int]]:
    """The (offset, length) byte ranges of a row group's column chunks (those of ``columns``, by
    top-level name; all when None), adjacent ones joined, in file order."""
    g = footer.row_group(row_group)
    spans = []
    for i in range(g.num_columns):
        c = g.column(i)
        if columns is not None and c.path_in_schema.split(".", 1)[0] not in columns:
            continue
        start = c.data_page_offset
        if c.has_dictionary_page and c.dictionary_page_offset is not None and 0 < c.dictionary_page_offset < start:
            start = c.dictionary_page_offset
        spans.append((start, start + c.total_compressed_size))
    spans.sort()
    joined: list[list[int]] = []
    for lo, hi in spans:
        if joined and lo <= joined[-1][1]:
            joined[-1][1] = max(joined[-1][1], hi)
        else:
            joined.append([lo, hi])
    return [(lo, hi - lo) for lo, hi in joined]


IDLE_BUFFERS = 2  # buffers kept between reads (a read in progress holds its own)
IDLE_BUFFER_MAX = 128 << 20  # a larger one (a foreign file's huge row group) is not kept


class _IdleBuffers:
    """Row-group buffers of ended reads, kept for the next reads of this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[np.ndarray] = []

    def take(self, n: int) -> np.ndarray | None:
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) >= n:
                    return self._free.pop(i)
        return None

    def give(self, buf: np.ndarray) -> None:
        if len(buf) > IDLE_BUFFER_MAX:
            return
        with self._lock:
            self._free.append(buf)
            if len(self._free) > IDLE_BUFFERS:  # drop the smallest (by position: arrays do not compare)
                del self._free[min(range(len(self._free)), key=lambda i: len(self._free[i]))]


_IDLE = _IdleBuffers()


class RowGroupBuffer:
    """The buffer one read loads its row groups into (one at a time), reused from one row group
    to the next while nothing refers to it any more; ``close()`` hands it on to the next read."""

    def __init__(self) -> None:
        self._buf: np.ndarray | None = None
        self._lent: list[memoryview] = []
        self._user: weakref.ref | None = None  # the file loaded last (it may still ask for bytes)

    def _unused(self) -> bool:
        """Nothing can read the buffer any more (the slices lent so far are released)."""
        unused = self._user is None or self._user() is None
        for view in self._lent:
            try:
                view.release()
            except BufferError:  # an Arrow buffer still points into it: leave that memory alone
                unused = False
        self._lent = []
        return unused

    def _take(self, n: int) -> memoryview:
        reusable = self._buf is not None and self._unused() and len(self._buf) >= n
        if not reusable:
            # an idle one, or a new one: uninitialised (pread fills it), a quarter larger (the
            # next row groups, of about the same size, fit)
            self._buf = _IDLE.take(n)
            if self._buf is None:
                self._buf = np.empty(max(n + n // 4, 1), dtype=np.uint8)
        return memoryview(self._buf)[:n]

    def close(self) -> None:
        """The read ended: the buffer goes to the next read, unless something still refers to it."""
        if self._buf is not None and self._unused():
            _IDLE.give(self._buf)
        self._buf, self._user = None, None

    def lend(self, view: memoryview) -> memoryview:
        self._lent.append(view)
        return view

    def load(self, path: str, footer: pq.FileMetaData, row_group: int, columns: list[str] | None
             ) -> "LoadedRowGroup":
        """The row group's column chunks read into the buffer, as a file Parquet can read from.
        Raises DamagedFile when the file is shorter than the footer says or cannot be read."""
        ranges = byte_ranges(footer, row_group, columns)
        total = sum(n for _, n in ranges)
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            end = max((off + n for off, n in ranges), default=0)
            if end > size:
                raise DamagedFile("truncated", f"{path}: {size} bytes, row group {row_group} ends at byte {end}")
            view = self._take(total)
            placed = []
            at = 0
            for off, n in ranges:
                _pread_fully(fd, view[at:at + n], off, path)
                placed.append((off, n, at))
                at += n
            view.release()
        except OSError as exc:
            raise DamagedFile(f"unreadable: {exc.strerror or exc}", f"{path}: row group {row_group}: {exc}") from None
        finally:
            os.close(fd)
        assert self._buf is not None
        loaded = LoadedRowGroup(self, self._buf, path, size, placed)
        self._user = weakref.ref(loaded)
        return loaded


def _pread_fully(fd: int, into: memoryview, offset: int, path: str) -> None:
    got = 0
    try:
        while got < len(into):
            n = os.preadv(fd, [into[got:]], offset + got)
            if n == 0:  # end of file: truncated since fstat
                raise DamagedFile("truncated", f"{path}: truncated while read: bytes up to {offset + len(into)} "
                                               f"asked for, the file ends at byte {offset + got}")
            got += n
    finally:
        into.release()


class LoadedRowGroup:
    """A read-only file (the protocol ``pyarrow.PythonFile`` wraps) whose bytes inside the loaded
    ranges come from the buffer without a copy; any other range (Parquet never asks for one when
    reading the row group with the footer given) is read from the file."""

    closed = False
    mode = "rb"

    def __init__(self, owner: RowGroupBuffer, buf: np.ndarray, path: str, size: int,
                 placed: list[tuple[int, int, int]]):
        self._owner, self._buf, self._path, self._size, self._placed = owner, buf, path, size, placed
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else self._pos + pos if whence == 1 else self._size + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def size(self) -> int:
        return self._size

    def read(self, n: int = -1):
        pos = self._pos
        n = self._size - pos if n is None or n < 0 else min(n, max(0, self._size - pos))
        self._pos = pos + n
        for off, length, at in self._placed:
            if off <= pos and pos + n <= off + length:
                return self._owner.lend(memoryview(self._buf)[at + pos - off:at + pos - off + n])
        try:
            with open(self._path, "rb") as f:  # outside the row group: plain read
                data = os.pread(f.fileno(), n, pos)
        except OSError as exc:
            raise DamagedFile(f"unreadable: {exc.strerror or exc}", f"{self._path}: {exc}") from None
        if len(data) < n:
            raise DamagedFile("truncated", f"{self._path}: bytes up to {pos + n} asked for, "
                                           f"the file ends at byte {pos + len(data)}")
        return data

    def close(self) -> None:
        self.closed = True
