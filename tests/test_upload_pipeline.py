"""The pipelined upload writer (store/pipeline.py): same data as a direct write, bounded memory,
errors of the writer thread surfaced to the caller, and through the server to the client with
nothing half-indexed."""

import json
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from mosaicod.store.chunks import ChunkWriter
from mosaicod.store.reader import read_topic
from mosaicod.store.objstore import ObjectStore
from mosaicod.store.pipeline import BackgroundWriter

SCHEMA = pa.schema([pa.field("timestamp_ns", pa.int64(), nullable=False), pa.field("v", pa.float64())])


def batch(start: int, n: int = 1000) -> pa.RecordBatch:
    ts = np.arange(start, start + n, dtype=np.int64)
    return pa.record_batch([pa.array(ts), pa.array(ts * 0.5)], schema=SCHEMA)


@pytest.fixture
def store(tmp_path):
    return ObjectStore.local(str(tmp_path / "store"))


def test_background_writer_writes_what_a_direct_writer_writes(store):
    parts = [batch(i * 1000) for i in range(30)][::-1]  # out of order across row groups
    direct = ChunkWriter(store, "tp_D", SCHEMA, "default", max_chunk_size=50_000, row_group_bytes=20_000)
    piped = BackgroundWriter(ChunkWriter(store, "tp_P", SCHEMA, "default", max_chunk_size=50_000,
                                         row_group_bytes=20_000), max_bytes=40_000)
    for b in parts:
        direct.write(b)
        piped.write(b)
    a, b = direct.close(), piped.close()
    assert len(a) == len(b) > 1
    read = lambda chunks: pa.Table.from_batches(list(read_topic(store, [c.data_file for c in chunks], SCHEMA)))  # noqa: E731
    assert read(a).equals(read(b))
    assert [c.stats.row_count for c in a] == [c.stats.row_count for c in b]


class SlowWriter:
    """A ChunkWriter stand-in that takes its time and records how much was queued meanwhile."""

    def __init__(self, delay: float):
        self.delay, self.written, self.closed, self.aborted = delay, [], False, False

    def write(self, b):
        time.sleep(self.delay)
        self.written.append(b.num_rows)

    def close(self):
        self.closed = True
        return self.written

    def abort(self):
        self.aborted = True


class ThreadRecorder(SlowWriter):
    def __init__(self):
        super().__init__(0)
        self.threads = []

    def write(self, b):
        self.threads.append(threading.current_thread())
        super().write(b)


def test_a_stream_of_one_batch_is_written_at_close_without_a_writer_thread():
    w = ThreadRecorder()
    bw = BackgroundWriter(w, max_bytes=10 ** 9, name="upload-probe")
    before = threading.active_count()
    bw.write(batch(0))
    assert threading.active_count() == before and w.written == []  # held, nothing started
    assert bw.close() == [1000] and w.closed
    assert w.threads == [threading.current_thread()]


def test_the_writer_thread_starts_with_the_second_batch():
    w = ThreadRecorder()
    bw = BackgroundWriter(w, max_bytes=10 ** 9, name="upload-probe")
    for i in range(3):
        bw.write(batch(i * 1000))
    assert bw.close() == [1000] * 3
    assert len(set(w.threads)) == 1 and w.threads[0] is not threading.current_thread()
    assert w.threads[0].name == "upload-probe"


def test_a_held_batch_that_fails_at_close_fails_every_later_close():
    fw = FailingWriter(0, OSError("disk full"))
    bw = BackgroundWriter(fw, max_bytes=10 ** 9)
    bw.write(batch(0))
    for _ in range(2):  # as with the thread: the error is kept, the writer never closed
        with pytest.raises(OSError, match="disk full"):
            bw.close()
    assert not fw.closed
    bw.abort()
    assert fw.aborted


def test_queue_is_bounded_and_write_blocks_while_full():
    one = batch(0).nbytes
    slow = SlowWriter(0.05)
    bw = BackgroundWriter(slow, max_bytes=3 * one)
    peak = 0
    t0 = time.monotonic()
    for i in range(12):
        bw.write(batch(i * 1000))
        peak = max(peak, bw.queued_bytes)
    blocked_for = time.monotonic() - t0
    assert peak <= 3 * one
    assert blocked_for >= 0.05 * (12 - 4)  # the producer waited for the slow writer
    assert bw.close() == [1000] * 12 and slow.closed


def test_a_batch_larger_than_the_bound_still_goes_through():
    bw = BackgroundWriter(SlowWriter(0), max_bytes=1)
    for i in range(3):
        bw.write(batch(i * 1000))
    assert bw.close() == [1000] * 3


class FailingWriter(SlowWriter):
    def __init__(self, fail_at: int, exc: BaseException):
        super().__init__(0.0)
        self.fail_at, self.exc = fail_at, exc

    def write(self, b):
        if len(self.written) == self.fail_at:
            raise self.exc
        super().write(b)


def test_writer_thread_error_surfaces_on_the_next_write_and_stops_consuming():
    fw = FailingWriter(2, OSError("disk full"))
    bw = BackgroundWriter(fw, max_bytes=10 ** 9)
    with pytest.raises(OSError, match="disk full"):
        for i in range(50):
            bw.write(batch(i * 1000))
            time.sleep(0.01)
    assert fw.written == [1000, 1000]
    bw.abort()
    assert fw.aborted and not fw.closed


def test_writer_thread_error_surfaces_at_close():
    fw = FailingWriter(0, ValueError("cannot encode"))
    bw = BackgroundWriter(fw, max_bytes=10 ** 9)
    bw.write(batch(0))
    with pytest.raises(ValueError, match="cannot encode"):
        bw.close()
    assert not fw.closed


def test_a_producer_blocked_on_a_full_queue_is_woken_by_the_error():
    class Stuck(SlowWriter):
        def __init__(self):
            super().__init__(0)
            self.go = threading.Event()

        def write(self, b):
            self.go.wait(5)
            raise RuntimeError("store unreachable")

    w = Stuck()
    bw = BackgroundWriter(w, max_bytes=1)
    threading.Timer(0.3, w.go.set).start()
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="store unreachable"):
        for i in range(5):  # the queue fills up while the writer hangs: the producer blocks
            bw.write(batch(i * 1000))
    assert time.monotonic() - t0 >= 0.25  # ... until the writer fails, then gets its error


def test_abort_stops_the_thread_and_aborts_the_writer():
    slow = SlowWriter(0.02)
    bw = BackgroundWriter(slow, max_bytes=10 ** 9)
    for i in range(20):
        bw.write(batch(i * 1000))
    bw.abort()
    assert slow.aborted and len(slow.written) < 20
    assert not bw._thread.is_alive()


# -- through the server: a store failure in the writer thread ---------------------------------

def _action(client, name, body):
    res = list(client.do_action(flight.Action(name, json.dumps(body).encode())))
    return json.loads(res[0].body.to_pybytes())["response"] if res else None


def test_store_failure_in_the_writer_thread_fails_the_upload_with_nothing_half_indexed(make_settings, start_server):
    settings = make_settings(row_group_size=64 * 1024, max_chunk_size=1 << 20)
    srv = start_server(settings)
    client = flight.FlightClient(srv.location)
    _action(client, "sequence_create", {"locator": "pipe_fail", "user_metadata": {}})
    session = _action(client, "session_create", {"locator": "pipe_fail"})["uuid"]
    tuuid = _action(client, "topic_create", {"session_uuid": session, "locator": "pipe_fail/imu",
                                            "serialization_format": "default", "ontology_tag": "imu",
                                            "user_metadata": {}})["uuid"]
    cmd = json.dumps({"resource_locator": "pipe_fail/imu", "topic_uuid": tuuid}).encode()
    writer, _ = client.do_put(flight.FlightDescriptor.for_command(cmd), SCHEMA)
    writer.write_batch(batch(0, 4000))
    store_root = Path(srv.runtime.store.root)
    folder = None
    for _ in range(100):  # the server has claimed the topic once its folder is known
        folder = srv.runtime.catalog.topic("pipe_fail/imu")["path_in_store"]
        if folder:
            break
        time.sleep(0.05)
    # the second chunk file cannot be created (a directory is in the way)
    (store_root / folder / "data" / "00001.parquet").mkdir(parents=True)
    with pytest.raises(flight.FlightError) as err:
        for i in range(1, 400):
            writer.write_batch(batch(i * 4000, 4000))
        writer.done_writing()
        writer.close()
    assert "Traceback" not in str(err.value)
    # the topic is not finalized; the one chunk indexed is a complete file
    topic = srv.runtime.catalog.topic("pipe_fail/imu")
    assert topic["completion_unix_tstamp"] is None
    with srv.runtime.engine.connect() as conn:
        files = list(conn.execute(sa.text("SELECT data_file FROM chunk_t WHERE topic_id = :t"),
                                  {"t": topic["topic_id"]}).scalars())
    assert [Path(f).name for f in files] == ["00000.parquet"]
    assert pq.ParquetFile(store_root / files[0]).metadata.num_rows > 0  # complete: footer readable
    client.close()
