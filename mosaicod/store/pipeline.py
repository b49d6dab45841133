"""Overlap receiving an upload with encoding and writing it: a writer thread behind a bounded queue.

An upload's handler thread receives batches from gRPC and decodes them; the Parquet encoding,
statistics and store writes of ``ChunkWriter`` run on this writer thread (pyarrow releases the
GIL while encoding and writing), so both cores work on one upload.  The queue holds at most
``max_bytes`` of batches (at least one): when the writer falls behind, ``write`` blocks, gRPC
stops reading and the client is slowed down, so memory stays bounded whatever the upload size.

The thread starts with the second batch: a stream of one batch (a small topic, written by the SDK
in one batch at its writer's exit) is written at ``close`` on the caller's thread, where starting a
thread and handing the batch over cost more than the overlap could save (py-spy on small
sequences: thread start 0.17 ms per upload, plus two thread wake-ups at the end of each stream).

Errors: whatever the writer thread raises (an encoding error, a store or catalog failure) is
kept; the next ``write`` (or ``close``) raises it on the handler thread, which fails the DoPut
with it, and the writer thread stops consuming.  ``abort`` stops the thread and aborts the
``ChunkWriter`` (its open file is removed).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import pyarrow as pa

_STOP = object()


class BackgroundWriter:
    """Drives ``writer`` (a ``ChunkWriter``: ``write`` / ``close`` / ``abort``) on its own thread."""

    def __init__(self, writer: Any, max_bytes: int, name: str = "upload-writer"):
        self.writer = writer
        self.max_bytes = max(1, max_bytes)
        self._items: deque = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._name = name
        self._thread: threading.Thread | None = None  # started with the second batch

    @property
    def chunks(self) -> list:
        """The chunks the writer has closed so far."""
        return self.writer.chunks

    @property
    def chunk_open(self) -> bool:
        """The writer has a chunk file with row groups but no footer yet."""
        return self.writer.chunk_open

    @property
    def queued_bytes(self) -> int:
        return self._queued

    def write(self, batch: pa.RecordBatch) -> None:
        """Queue a batch; blocks while the queue is full; raises the writer thread's error."""
        size = batch.nbytes
        with self._cond:
            if self._thread is None and self._items:  # more than one batch: overlap from now on
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            while self._error is None and self._items and self._queued + size > self.max_bytes:
                self._cond.wait()
            self._raise_pending()
            self._items.append(batch)
            self._queued += size
            self._cond.notify_all()

    def close(self) -> Any:
        """Wait for every queued batch to be written, then close the writer (on this thread);
        returns what ``writer.close()`` returns."""
        if self._thread is None:
            self._raise_pending()
            self._write_held()
        else:
            self._finish_thread()
            with self._cond:
                self._raise_pending()
        return self.writer.close()

    def abort(self) -> None:
        """Drop what is queued, stop the thread, abort the writer."""
        with self._cond:
            self._items.clear()
            self._queued = 0
            if self._error is None:
                self._error = _Aborted()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        self.writer.abort()

    # -- internals ----------------------------------------------------------------------------
    def _write_held(self) -> None:
        """No thread was started: write the held batch here (an error is kept, like the thread's)."""
        while self._items:
            item = self._items.popleft()
            try:
                self.writer.write(item)
            except BaseException as exc:
                self._error = exc
                self._items.clear()
                self._queued = 0
                raise
            self._queued -= item.nbytes

    def _finish_thread(self) -> None:
        with self._cond:
            self._items.append(_STOP)
            self._cond.notify_all()
        self._thread.join()

    def _raise_pending(self) -> None:
        if self._error is not None and not isinstance(self._error, _Aborted):
            raise self._error
        if self._error is not None:
            raise RuntimeError("the upload was aborted")

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and self._error is None:
                    self._cond.wait()
                if self._error is not None:
                    return
                item = self._items.popleft()
            if item is _STOP:
                return
            try:
                self.writer.write(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the handler thread
                with self._cond:
                    self._error = exc
                    self._items.clear()
                    self._queued = 0
                    self._cond.notify_all()
                return
            with self._cond:
                self._queued -= item.nbytes
                self._cond.notify_all()


class _Aborted(Exception):
    pass
