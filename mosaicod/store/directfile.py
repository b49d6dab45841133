"""A local file written around the page cache (``O_DIRECT``), for large write-once chunk files.

Writing a chunk file through the page cache costs the writer a copy of every byte into cache
pages plus the file system's per-page bookkeeping (delayed allocation, buffer heads, then the
write-back, which ``posix_fadvise(DONTNEED)`` runs on the writing thread): ``perf`` on an image
upload put a third of the server's CPU there (``ksys_write`` 23%, ``ksys_fadvise64_64`` 11%).
With ``O_DIRECT`` the device reads the bytes from our buffer: the bytes Parquet writes are
gathered in one aligned buffer and written in whole blocks; only the last partial block of the
file goes through the page cache (the descriptor drops ``O_DIRECT`` for it at ``close``).

``open_direct`` returns None where the platform or the file system does not take ``O_DIRECT``
(macOS, some FUSE or older tmpfs): the caller then writes an ordinary file.  A file system that accepts the flag but
refuses a direct write (``EINVAL``) gets the rest of the file through the page cache.

The object is a binary file for ``pyarrow.parquet.ParquetWriter`` (``write`` / ``tell`` /
``flush`` / ``close`` / ``closed``).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os

BUFFER_BYTES = 8 << 20  # gathered per direct write (a multiple of any block size)
ALIGN = 4096  # buffer address, write size and file offset alignment (>= the device's logical block)


def open_direct(path: str, buffer_bytes: int = BUFFER_BYTES) -> "DirectFile | None":
    """A new (truncated) file at ``path`` written with ``O_DIRECT``, or None if unsupported."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | flag, 0o644)
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # the file system does not take O_DIRECT
            return None
        raise
    return DirectFile(fd, buffer_bytes)


class DirectFile:
    def __init__(self, fd: int, buffer_bytes: int = BUFFER_BYTES):
        if buffer_bytes <= 0 or buffer_bytes % ALIGN:
            raise ValueError(f"buffer_bytes must be a positive multiple of {ALIGN}")
        self._fd = fd
        self._buf = mmap.mmap(-1, buffer_bytes)  # anonymous: page-aligned
        self._view = memoryview(self._buf)
        self._used = 0  # bytes gathered in the buffer
        self._written = 0  # bytes already in the file
        self._direct = True
        self.closed = False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def tell(self) -> int:
        return self._written + self._used

    def write(self, data) -> int:
        src = memoryview(data).cast("B")
        n = len(src)
        pos = 0
        while pos < n:
            take = min(n - pos, len(self._view) - self._used)
            with src[pos:pos + take] as piece:
                self._view[self._used:self._used + take] = piece
            self._used += take
            pos += take
            if self._used == len(self._view):
                self._drain(self._used)
        return n

    def flush(self) -> None:
        """Nothing to do: a partial block can only be written at ``close``."""

    def close(self) -> None:
        if self.closed:
            return
        try:
            whole = self._used - self._used % ALIGN
            if whole:
                self._drain(whole)
            if self._used:  # the file's last partial block, through the page cache
                self._set_direct(False)
                self._drain(self._used)
        finally:
            self.closed = True
            self._view.release()
            self._buf.close()
            os.close(self._fd)

    def __enter__(self) -> "DirectFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------
    def _drain(self, count: int) -> None:
        """Write the first ``count`` gathered bytes; keep the rest at the start of the buffer."""
        done = 0
        while done < count:
            try:
                with self._view[done:count] as pending:  # released even if the write fails
                    done += os.write(self._fd, pending)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self._direct:
                    raise
                self._set_direct(False)  # accepted at open, refused now: page cache from here on
        self._written += count
        rest = self._used - count
        if rest:
            self._buf.move(0, count, rest)
        self._used = rest

    def _set_direct(self, on: bool) -> None:
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        flags = flags | os.O_DIRECT if on else flags & ~os.O_DIRECT
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags)
        self._direct = on
