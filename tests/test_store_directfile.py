"""Chunk files written around the page cache (store/directfile.py) and their use by ChunkWriter."""

import errno
import fcntl
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mosaicod.store import directfile, layout
from mosaicod.store.chunks import ChunkWriter
from mosaicod.store.objstore import ObjectStore


@pytest.fixture
def direct_path(tmp_path):
    path = str(tmp_path / "f.bin")
    f = directfile.open_direct(path, buffer_bytes=64 * 1024)
    if f is None:
        pytest.skip("the test directory's file system does not take O_DIRECT")
    f.close()
    return path


def _pieces(seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    sizes = [1, 4095, 4096, 4097, 65535, 65536, 65537, 200_000, 7, 0, 130_000, 3]
    return [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]


def test_bytes_and_positions_are_those_written(direct_path):
    pieces = _pieces(1)
    f = directfile.open_direct(direct_path, buffer_bytes=64 * 1024)
    assert fcntl.fcntl(f.fileno(), fcntl.F_GETFL) & os.O_DIRECT
    pos = 0
    for p in pieces:
        assert f.write(memoryview(p)) == len(p)
        pos += len(p)
        assert f.tell() == pos
    f.close()
    assert f.closed
    with open(direct_path, "rb") as g:
        assert g.read() == b"".join(pieces)  # the partial last block included


def test_a_refused_direct_write_falls_back_to_the_page_cache(direct_path, monkeypatch):
    real_write = os.write
    refused = []

    def write(fd, data):  # a file system that accepts O_DIRECT at open but not at write
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    pieces = _pieces(2)
    with directfile.open_direct(direct_path, buffer_bytes=64 * 1024) as f:
        for p in pieces:
            f.write(p)
    assert len(refused) == 1
    with open(direct_path, "rb") as g:
        assert g.read() == b"".join(pieces)


def test_other_write_errors_are_raised(direct_path, monkeypatch):
    def write(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", write)
    f = directfile.open_direct(direct_path, buffer_bytes=64 * 1024)
    with pytest.raises(OSError) as err:
        f.write(b"x" * 70_000)
    assert err.value.errno == errno.ENOSPC
    fd = f.fileno()
    with pytest.raises(OSError):
        f.close()  # the gathered bytes cannot be written either ...
    assert f.closed  # ... but the descriptor and the buffer are released
    with pytest.raises(OSError) as err:
        os.fstat(fd)
    assert err.value.errno == errno.EBADF


SCHEMA = pa.schema([pa.field("timestamp_ns", pa.int64(), nullable=False), pa.field("data", pa.binary())])


def _batches():
    rng = np.random.default_rng(3)
    return [pa.record_batch([pa.array(np.arange(i * 20, i * 20 + 20, dtype=np.int64)),
                             pa.array([rng.integers(0, 256, 30_000, dtype=np.uint8).tobytes() for _ in range(20)])],
                            schema=SCHEMA) for i in range(6)]


@pytest.mark.parametrize("fmt, direct", [("image", True), ("ragged", True), ("default", False)])
def test_chunk_writer_writes_large_topics_around_the_page_cache(tmp_path, direct_path, fmt, direct):
    store = ObjectStore.local(str(tmp_path / "store"))
    w = ChunkWriter(store, "tp_D", SCHEMA, fmt, max_chunk_size=1 << 30, row_group_bytes=1 << 20)
    batches = _batches()
    for b in batches:
        w.write(b)
        if w.chunk_open:
            assert isinstance(w._sink, directfile.DirectFile) == direct
    assert w.chunk_open
    chunks = w.close()
    path = store.local_path(chunks[0].data_file)
    assert chunks[0].size_bytes == os.path.getsize(path)
    assert pq.ParquetFile(path).metadata.num_row_groups >= 2
    assert pq.read_table(path).equals(pa.Table.from_batches(batches))


@pytest.mark.parametrize("fail_at", ["row group", "close"])
def test_a_chunk_file_the_disk_refuses_is_removed_by_abort(tmp_path, direct_path, monkeypatch, fail_at):
    """The disk fills up (ENOSPC) while a large topic's chunk is written: the failed upload's
    abort still removes the unindexed file (it has no footer: left behind, rebuild-catalog would
    report it), even though closing a direct file that still holds gathered bytes fails too."""
    store = ObjectStore.local(str(tmp_path / "store"))
    w = ChunkWriter(store, "tp_E", SCHEMA, "image", max_chunk_size=1 << 30, row_group_bytes=1 << 20)
    batches = _batches()
    real_write = os.write
    full = []

    def write(fd, data):
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    if fail_at == "row group":  # the disk is full when the gathered buffer is drained mid-file
        monkeypatch.setattr(directfile, "BUFFER_BYTES", 64 * 1024)
        monkeypatch.setattr("mosaicod.store.chunks.open_direct",
                            lambda path: directfile.open_direct(path, buffer_bytes=64 * 1024))
        w.write(batches[0])
        w.write(batches[1])
        assert w.chunk_open
        full.append(1)
        with pytest.raises(OSError):
            for b in batches[2:]:
                w.write(b)
    else:  # the row groups fit in the buffer; the disk is full when the file is closed
        for b in batches:
            w.write(b)
        assert w.chunk_open
        full.append(1)
        with pytest.raises(OSError):
            w.close()
    try:
        w.abort()  # the footer cannot be written either (raised), but the file is gone
    except OSError:
        assert fail_at == "row group"
    assert w.chunks == []
    assert not os.path.exists(store.local_path(layout.data_key("tp_E", 0)))
    w.abort()  # again: nothing left to do


def test_a_file_system_that_refuses_o_direct_gets_an_ordinary_cached_file(tmp_path, monkeypatch):
    """open(O_DIRECT) refused with EINVAL (some FUSE or older tmpfs): ``open_direct`` says so
    (None) and an image topic's chunk is written as an ordinary file, its pages released after
    each row group; the data is the same."""
    real_open = os.open

    def refusing_open(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    assert directfile.open_direct(str(tmp_path / "g.bin")) is None
    released = []
    real_fadvise = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: (released.append(advice),
                                                                         real_fadvise(fd, off, n, advice)))
    store = ObjectStore.local(str(tmp_path / "store"))
    w = ChunkWriter(store, "tp_F", SCHEMA, "image", max_chunk_size=1 << 30, row_group_bytes=1 << 20)
    batches = _batches()
    for b in batches:
        w.write(b)
        if w.chunk_open:
            assert isinstance(w._sink, pa.OSFile)
    chunks = w.close()
    assert released and set(released) == {os.POSIX_FADV_DONTNEED}
    path = store.local_path(chunks[0].data_file)
    assert chunks[0].size_bytes == os.path.getsize(path)
    assert pq.read_table(path).equals(pa.Table.from_batches(batches))
