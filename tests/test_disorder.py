"""Data in any arrival order: exact answers (full, windowed, sequence-merged reads), sortedness
checked when a chunk is indexed (writer and rebuild-catalog), foreign chunks with unsorted row
groups, reads that stop when asked, and rows refused up front (null timestamps)."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from mosaicod import errors
from mosaicod.maintenance.decode import decode_file
from mosaicod.maintenance.rebuild import Options, run
from mosaicod.store import layout
from mosaicod.store.chunks import ChunkWriter
from mosaicod.store.reader import read_topic
from mosaicod.store import rowgroup
from mosaicod.store.rowgroup import RowGroupBuffer, byte_ranges
from mosaicod.store.objstore import ObjectStore
from mosaicod.store.stats import Order

from .test_core_bad_input import act, new_topic

SCHEMA = pa.schema([pa.field("timestamp_ns", pa.int64(), nullable=False), pa.field("v", pa.float64()),
                    pa.field("tag", pa.string())])
SMALL = {"max_chunk_size": 1 << 20, "row_group_size": 64 * 1024}  # several chunks and row groups roll


def rows(ts, seed: int = 0) -> pa.RecordBatch:
    """One row per timestamp; ``v`` tells rows with equal timestamps apart."""
    ts = np.asarray(ts, dtype=np.int64)
    v = np.random.default_rng(seed).random(len(ts)) + seed  # incompressible: files roll sooner
    return pa.record_batch([pa.array(ts), pa.array(v), pa.array([f"t{t % 7}" for t in ts])], schema=SCHEMA)


def expected(batches, start=None, end=None) -> tuple[list, list]:
    """Timestamps in order, and the (ts, v) pairs as a sorted list (order among equal timestamps is free)."""
    t = pa.Table.from_batches(batches, schema=SCHEMA)
    ts, v = t.column("timestamp_ns").to_numpy(), t.column("v").to_numpy()
    keep = np.ones(len(ts), bool)
    if start is not None:
        keep &= ts >= start
    if end is not None:
        keep &= ts < end
    return sorted(ts[keep].tolist()), sorted(zip(ts[keep].tolist(), v[keep].tolist()))


def got(table: pa.Table) -> tuple[list, list]:
    ts, v = table.column("timestamp_ns").to_pylist(), table.column("v").to_pylist()
    return ts, sorted(zip(ts, v))


def orders(kind: str, n_batches: int = 40, per: int = 1500, seed: int = 3) -> list[pa.RecordBatch]:
    """Batches of a 1 kHz-ish recording delivered in the given order."""
    rng = np.random.default_rng(seed)
    base = [np.arange(i * per, (i + 1) * per, dtype=np.int64) * 10 for i in range(n_batches)]
    if kind == "ordered":
        parts = base
    elif kind == "reversed":
        parts = [b[::-1] for b in base[::-1]]
    elif kind == "shuffled":  # whole batches out of order, rows inside some batches too
        parts = [b if i % 3 else rng.permutation(b) for i, b in enumerate(base)]
        parts = [parts[i] for i in rng.permutation(len(parts))]
    elif kind == "jitter":  # clock jitter: every timestamp moved by up to +-30 ticks
        parts = [b + rng.integers(-300, 300, len(b)) for b in base]
    elif kind == "duplicates":  # three producers sending the same stamps, interleaved
        parts = [b // 30 * 30 for b in base for _ in range(3)]
        parts = [parts[i] for i in rng.permutation(len(parts))]
    else:
        raise AssertionError(kind)
    return [rows(p, seed=i) for i, p in enumerate(parts)]


KINDS = ["ordered", "reversed", "shuffled", "jitter", "duplicates"]


# -- store level ------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    return ObjectStore.local(str(tmp_path / "store"))


def write_chunks(store, batches, folder="tp_T", **kw):
    w = ChunkWriter(store, folder, SCHEMA, "default", max_chunk_size=kw.get("max_chunk_size", 256 * 1024),
                    row_group_bytes=kw.get("row_group_bytes", 64 * 1024))
    for b in batches:
        w.write(b)
    return w.close()


def foreign_file(store, key: str, ts: list[int], row_group_rows: int, table: pa.Table | None = None) -> None:
    """A Parquet file as another writer makes it: rows in arrival order, nothing sorted."""
    sink = pa.BufferOutputStream()
    pq.write_table(table if table is not None else pa.Table.from_batches([rows(ts)]), sink,
                   row_group_size=row_group_rows)
    store.put_bytes(key, sink.getvalue().to_pybytes())


def test_foreign_row_group_out_of_order_gives_exact_windows(store):
    """The reported case: a row group holding [50, 10, 40, 20, 30] read with [10, 35)."""
    foreign_file(store, "tp_F/data/00000.parquet", [50, 10, 40, 20, 30], row_group_rows=5)
    res = decode_file(store, "tp_F/data/00000.parquet", 0)
    assert res.ts_order == Order.UNSORTED and res.error is None
    for files in (["tp_F/data/00000.parquet"], [("tp_F/data/00000.parquet", res.ts_order)]):
        win = pa.Table.from_batches(list(read_topic(store, files, SCHEMA, 10, 35)), schema=SCHEMA)
        assert win.column("timestamp_ns").to_pylist() == [10, 20, 30]
        full = pa.Table.from_batches(list(read_topic(store, files, SCHEMA)), schema=SCHEMA)
        assert full.column("timestamp_ns").to_pylist() == [10, 20, 30, 40, 50]


def test_a_file_indexed_as_sorted_that_is_not_fails_cleanly(store):
    """Sortedness is never trusted blindly: a lie (file replaced after indexing) is an error, not a
    hang or a wrong answer."""
    foreign_file(store, "tp_F/data/00000.parquet", [5, 1, 4, 2, 3] * 100, row_group_rows=100)
    foreign_file(store, "tp_F/data/00001.parquet", list(range(500)), row_group_rows=100)
    files = [("tp_F/data/00000.parquet", Order.FILE), ("tp_F/data/00001.parquet", Order.FILE)]
    for window in ((None, None), (2, 4), (0, 1000)):
        with pytest.raises(errors.MosaicoError, match="not in timestamp order") as info:
            list(read_topic(store, files, SCHEMA, *window))
        assert info.value.kind is errors.Kind.INTERNAL


@pytest.mark.parametrize("kind", KINDS)
def test_writer_records_order_and_reads_are_exact(store, kind):
    batches = orders(kind)
    chunks = write_chunks(store, batches)
    assert len(chunks) > 2
    for c in chunks:
        assert c.stats.ts_order == (Order.FILE if kind == "ordered" else c.stats.ts_order)
        assert c.stats.ts_order >= Order.ROW_GROUPS  # the writer sorts every row group
        assert decode_file(store, c.data_file, c.size_bytes).ts_order == c.stats.ts_order
    all_ts = np.sort(pa.Table.from_batches(batches).column("timestamp_ns").to_numpy())
    lo, hi = int(all_ts[0]), int(all_ts[-1])
    mid = int(all_ts[len(all_ts) // 2])
    windows = [(None, None), (lo, hi), (lo, hi + 1), (lo + 1, lo + 2), (mid, mid + 1), (mid, mid + 777),
               (hi, hi + 1), (None, mid), (mid, None), (hi + 1, None), (None, lo)]
    for as_indexed in (True, False):
        files = [(c.data_file, c.stats.ts_order) if as_indexed else c.data_file for c in chunks]
        for start, end in windows:
            out = list(read_topic(store, files, SCHEMA, start, end, batch_rows=1000))
            assert all(0 < b.num_rows <= 1000 for b in out)
            table = pa.Table.from_batches(out, schema=SCHEMA)
            assert got(table) == expected(batches, start, end), (kind, start, end)


def test_should_stop_ends_a_read(store):
    chunks = write_chunks(store, orders("shuffled"))
    files = [(c.data_file, c.stats.ts_order) for c in chunks]
    calls = []

    def stop_after_three() -> bool:
        calls.append(1)
        return len(calls) > 3

    it = read_topic(store, files, SCHEMA, batch_rows=100, should_stop=stop_after_three)
    with pytest.raises(errors.MosaicoError, match="cancelled") as info:
        list(it)
    assert info.value.kind is errors.Kind.CANCELLED


def _mapped(paths: set[str]) -> int:
    """How many memory mappings of these files the process holds."""
    with open("/proc/self/maps") as f:
        return sum(line.rstrip("\n").split(maxsplit=5)[-1] in paths for line in f if line.count(" ") >= 5)


@pytest.mark.parametrize("window", [(None, None), (3000, 240000)])
def test_streamed_reads_map_nothing_and_reuse_one_buffer(store, window, monkeypatch):
    """An in-order read of a local store reads each row group with pread into one buffer that it
    reuses from row group to row group (never a memory map: a file truncated under a mapping
    would kill the server with SIGBUS); answers stay exact, also for a projection."""
    batches = orders("ordered")
    chunks = write_chunks(store, batches)
    files = [(c.data_file, c.stats.ts_order) for c in chunks]
    paths = {store.local_path(c.data_file) for c in chunks}
    assert len(chunks) > 2 and sum(pq.ParquetFile(p).num_row_groups for p in paths) > len(chunks)
    monkeypatch.setattr(rowgroup, "_IDLE", rowgroup._IdleBuffers())  # no buffer left by another test
    buffers = {}
    real_load = RowGroupBuffer.load

    def load(self, *args):
        loaded = real_load(self, *args)
        buffers[id(self._buf)] = self._buf  # kept alive: ids stay distinct
        return loaded

    monkeypatch.setattr(RowGroupBuffer, "load", load)
    seen = []
    out = []
    for batch in read_topic(store, files, SCHEMA, *window, batch_rows=1000):
        seen.append(_mapped(paths))
        out.append(batch)
    assert got(pa.Table.from_batches(out, schema=SCHEMA)) == expected(batches, *window)
    assert max(seen) == 0 and len(buffers) == 1
    # the next read (a projection) gets the buffer of the read that ended
    ts = pa.Table.from_batches(read_topic(store, files, SCHEMA, *window, columns=["tag"], batch_rows=1000))
    assert ts.column_names == ["timestamp_ns", "tag"]
    assert ts.column("timestamp_ns").to_pylist() == expected(batches, *window)[0]
    assert len(buffers) == 1


def test_reused_buffer_is_never_overwritten_while_referenced(tmp_path, monkeypatch):
    """A row group's buffer is reused (by the next row group, or by the next read once its read
    ended) only once nothing points into it any more."""
    monkeypatch.setattr(rowgroup, "_IDLE", rowgroup._IdleBuffers())
    path = str(tmp_path / "f.parquet")
    pq.write_table(pa.Table.from_batches([rows(range(1000))]), path, row_group_size=250, compression="none")
    footer = pq.ParquetFile(path).metadata
    content = open(path, "rb").read()
    buf = RowGroupBuffer()
    first = buf.load(path, footer, 0, None)
    at = byte_ranges(footer, 0, None)[0][0]
    first.seek(at)
    view = first.read(64)
    assert isinstance(view, memoryview)  # no copy
    held = pa.py_buffer(view)  # what Parquet does with it: an Arrow buffer pointing into the loaded bytes
    del first, view
    buf.load(path, footer, 1, None)
    assert held.to_pybytes() == content[at:at + 64]  # untouched: the second row group went to a new buffer
    del held
    old = buf._buf
    buf.load(path, footer, 2, None)
    assert buf._buf is old  # nothing held: reused
    buf.close()  # the read ended: its buffer waits for the next read
    nxt = RowGroupBuffer()
    loaded = nxt.load(path, footer, 3, None)
    assert nxt._buf is old
    loaded.seek(byte_ranges(footer, 3, None)[0][0])
    held = pa.py_buffer(loaded.read(64))
    del loaded
    nxt.close()  # a read ending while something still points into its buffer: not handed on
    assert rowgroup._IDLE.take(1) is None
    del held


def test_idle_buffers_keep_the_largest_few():
    idle = rowgroup._IdleBuffers()
    sizes = [300, 100, 200, rowgroup.IDLE_BUFFER_MAX + 1]
    for n in sizes:
        idle.give(np.empty(n, np.uint8))
    assert idle.take(250) is not None and len(idle.take(1)) == 200 and idle.take(1) is None


def _truncate(path: str, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


@pytest.mark.parametrize("damage", ["footer", "half", "missing"])
def test_a_damaged_chunk_file_fails_the_read_cleanly(store, damage):
    """A chunk file cut inside its footer, cut in half or gone: DATA_LOSS with a message that says
    what is wrong and what to do (no path)."""
    chunks = write_chunks(store, orders("ordered"))
    files = [(c.data_file, c.stats.ts_order) for c in chunks]
    path = store.local_path(chunks[1].data_file)
    if damage == "missing":
        os.remove(path)
    else:
        size = os.path.getsize(path)
        _truncate(path, size // 2 if damage == "half" else size - 8 - pq.ParquetFile(path).metadata.serialized_size // 2)
    with pytest.raises(errors.MosaicoError) as info:
        list(read_topic(store, files, SCHEMA))
    assert info.value.kind is errors.Kind.DATA_LOSS
    reason = {"missing": "missing"}.get(damage, "not a valid Parquet file")
    assert f"a data file of this topic is damaged ({reason})" in info.value.message
    assert "restore the file from a backup" in info.value.message and "tp_" not in info.value.message


def test_a_chunk_file_truncated_during_a_read_fails_that_read(store):
    """The footers were read when the read started; a file truncated afterwards is found short when
    its row group is loaded: DATA_LOSS (truncated), never a crash or a wrong answer."""
    chunks = write_chunks(store, orders("ordered"))
    files = [(c.data_file, c.stats.ts_order) for c in chunks]
    it = read_topic(store, files, SCHEMA, batch_rows=1000)
    next(it)
    path = store.local_path(chunks[-1].data_file)
    _truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(errors.MosaicoError) as info:
        list(it)
    assert info.value.kind is errors.Kind.DATA_LOSS
    assert "a data file of this topic is damaged (truncated)" in info.value.message


def test_rebuild_refuses_a_foreign_file_with_null_timestamps(store):
    t = pa.table({"timestamp_ns": pa.array([1, None, 3], pa.int64()), "v": [1.0, 2.0, 3.0]})
    sink = pa.BufferOutputStream()
    pq.write_table(t, sink)
    store.put_bytes("tp_N/data/00000.parquet", sink.getvalue().to_pybytes())
    res = decode_file(store, "tp_N/data/00000.parquet", 0)
    assert res.error_kind == "null-timestamps" and "1 rows have a null timestamp_ns" in res.error


# -- through the server -----------------------------------------------------------------------------

@pytest.fixture
def small_server(make_settings, start_server):
    return start_server(make_settings(**SMALL))


@pytest.fixture
def rc(small_server):
    c = flight.FlightClient(small_server.location)
    yield c
    c.close()


def put_batches(c, locator: str, topic_uuid: str, batches) -> None:
    desc = flight.FlightDescriptor.for_command(json.dumps({"resource_locator": locator,
                                                           "topic_uuid": topic_uuid}).encode())
    writer, _ = c.do_put(desc, SCHEMA)
    for b in batches:
        writer.write_batch(b)
    writer.close()


OPTS = flight.FlightCallOptions(timeout=60)


def read_window(c, locator: str, start=None, end=None) -> pa.Table:
    cmd = {"resource_locator": locator}
    if start is not None:
        cmd["timestamp_ns_start"] = start
    if end is not None:
        cmd["timestamp_ns_end"] = end
    info = c.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(cmd).encode()), OPTS)
    return c.do_get(info.endpoints[0].ticket, OPTS).read_all()


def chunk_orders(srv, locator: str) -> list:
    with srv.runtime.engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT c.timestamp_order FROM chunk_t c JOIN topic_t t USING (topic_id) "
            "WHERE t.locator_name = :l ORDER BY c.chunk_id"), {"l": locator}).scalars().all()


@pytest.mark.timeout(300)
def test_any_arrival_order_exact_answers_over_flight(rc, small_server):
    uploaded = {}
    for kind in ("reversed", "shuffled", "duplicates"):
        sess, tid = new_topic(rc, kind, "t")
        batches = orders(kind, n_batches=40, per=4000)
        put_batches(rc, f"{kind}/t", tid, batches)
        act(rc, "session_finalize", {"session_uuid": sess})
        uploaded[kind] = batches
        assert len(chunk_orders(small_server, f"{kind}/t")) > 1
    for kind, batches in uploaded.items():
        all_ts = np.sort(pa.Table.from_batches(batches).column("timestamp_ns").to_numpy())
        lo, hi, mid = int(all_ts[0]), int(all_ts[-1]), int(all_ts[len(all_ts) // 3])
        for start, end in [(None, None), (lo, hi), (mid, mid + 1), (mid, mid + 5000), (hi, None), (None, lo + 1)]:
            assert got(read_window(rc, f"{kind}/t", start, end)) == expected(batches, start, end), (kind, start, end)


def add_foreign_chunk(store, folder: str, ts: list[int], row_group_rows: int, table: pa.Table | None = None) -> str:
    """Drop an upstream-style data file (unsorted row groups) into a finalized topic, listed in its
    _COMMIT.json as if it had always been there."""
    commit = store.get_json(layout.commit_key(folder))
    index = len(commit["files"])
    key = layout.data_key(folder, index)
    foreign_file(store, key, ts, row_group_rows, table)
    commit["files"].append({"name": layout.data_file_name(index), "size_bytes": store.size(key),
                            "row_count": len(ts), "arrow_size_bytes": rows(ts).nbytes})
    commit["row_count"] += len(ts)
    store.put_json(layout.commit_key(folder), commit)
    return key


@pytest.mark.timeout(300)
def test_foreign_unsorted_chunk_after_rebuild_reads_exactly(rc, small_server):
    """The probe of the report: a chunk with unsorted row groups added to a finalized topic, then
    rebuild-catalog.  Every read answers, exactly (it hung or missed rows before)."""
    sess, tid = new_topic(rc, "probe", "t")
    ours = [rows(np.arange(i * 1000, (i + 1) * 1000) * 10) for i in range(20)]
    put_batches(rc, "probe/t", tid, ours)
    act(rc, "session_finalize", {"session_uuid": sess})
    srv = small_server
    with srv.runtime.engine.connect() as conn:
        folder = conn.execute(sa.text("SELECT path_in_store FROM topic_t WHERE locator_name = 'probe/t'")).scalar_one()
    rng = np.random.default_rng(7)
    foreign_ts = rng.integers(0, 200_000, 6000).tolist()  # spans our whole range, with duplicates
    add_foreign_chunk(srv.runtime.store, folder, foreign_ts, row_group_rows=700)
    rep = run(srv.runtime.store, srv.runtime.engine, Options(progress=False, heartbeat_interval=60))
    assert not [p for p in rep.problems if p["kind"] in ("corrupt-file", "null-timestamps")], rep.problems
    assert Order.UNSORTED in chunk_orders(srv, "probe/t")
    everything = ours + [rows(foreign_ts)]
    for start, end in [(None, None), (10, 35), (0, 200_000), (50_000, 50_001), (123_450, 150_000),
                       (199_990, None), (None, 1)]:
        assert got(read_window(rc, "probe/t", start, end)) == expected(everything, start, end), (start, end)
    # a dry run afterwards finds the catalog and the store in agreement (order recorded both ways)
    dry = run(srv.runtime.store, srv.runtime.engine, Options(progress=False, dry_run=True, heartbeat_interval=60))
    assert dry.differences == []


@pytest.mark.timeout(120)
def test_server_stops_a_read_when_the_client_cancels_and_on_shutdown(make_settings, start_server):
    srv = start_server(make_settings(**SMALL, max_batch_size=64))
    c = flight.FlightClient(srv.location)
    for kind in ("ordered", "shuffled"):
        sess, tid = new_topic(c, kind, "t")
        put_batches(c, f"{kind}/t", tid, orders(kind, n_batches=40, per=2000))
        act(c, "session_finalize", {"session_uuid": sess})
    steps = []
    service = srv.flight.service
    real_read = service.read

    def spy_read(ticket, should_stop=None):
        def watched():
            steps.append(1)
            return should_stop()
        return real_read(ticket, watched)

    service.read = spy_read

    def ticket(kind):
        cmd = json.dumps({"resource_locator": f"{kind}/t"}).encode()
        return c.get_flight_info(flight.FlightDescriptor.for_command(cmd)).endpoints[0].ticket

    for kind, first_batch in (("ordered", True), ("shuffled", False)):
        steps.clear()
        c.do_get(ticket(kind)).read_all()
        full = len(steps)
        steps.clear()
        reader = c.do_get(ticket(kind))
        if first_batch:
            reader.read_chunk()
        else:
            time.sleep(0.05)  # cancelled while the server still sorts the topic's row groups
        reader.cancel()
        time.sleep(1)
        seen = len(steps)
        time.sleep(1)
        assert len(steps) == seen < full / 2, f"{kind}: the server kept reading after the client cancelled"
    # shutdown while a client holds an open read it does not consume: the server still stops
    reader = c.do_get(ticket("ordered"))
    reader.read_chunk()
    done = threading.Event()
    threading.Thread(target=lambda: (srv.flight.shutdown(), done.set()), daemon=True).start()
    assert done.wait(30), "shutdown waited for a read that never ends"
    c.close()


def test_null_timestamps_are_refused_and_nothing_stored(rc, small_server):
    """A batch with null timestamps is refused with INVALID_ARGUMENT and none of its rows is stored:
    first batch of a stream, or after good batches (those are kept, as for any broken upload)."""
    nullable = SCHEMA.remove(0).insert(0, pa.field("timestamp_ns", pa.int64(), nullable=True))
    bad = pa.record_batch([pa.array([1, None, 3], pa.int64()), pa.array([1.0, 2.0, 3.0]),
                           pa.array(["a", "b", "c"])], schema=nullable)
    good = pa.record_batch(rows(np.arange(100, 200)).columns, schema=nullable)
    for name, before in (("first", []), ("later", [good])):
        sess, tid = new_topic(rc, name, "t")
        desc = flight.FlightDescriptor.for_command(json.dumps({"resource_locator": f"{name}/t",
                                                               "topic_uuid": tid}).encode())
        writer, _ = rc.do_put(desc, nullable)
        with pytest.raises(pa.ArrowInvalid, match="null `timestamp_ns`"):
            for b in before:
                writer.write_batch(b)
            writer.write_batch(bad)
            writer.close()
        with small_server.runtime.engine.connect() as conn:
            n = conn.execute(sa.text("SELECT coalesce(sum(c.row_count), 0) FROM chunk_t c JOIN topic_t t "
                                     "USING (topic_id) WHERE t.locator_name = :l"), {"l": f"{name}/t"}).scalar_one()
            folder = conn.execute(sa.text("SELECT path_in_store FROM topic_t WHERE locator_name = :l"),
                                  {"l": f"{name}/t"}).scalar()
        assert n == sum(b.num_rows for b in before)
        if not before and folder:
            assert not [k for k, _ in small_server.runtime.store.walk_files(folder) if k.endswith(".parquet")]
        if before:
            assert read_window(rc, f"{name}/t").column("timestamp_ns").to_pylist() == list(range(100, 200))


@pytest.mark.timeout(300)
def test_sdk_reads_of_shuffled_topics_topic_and_sequence_level(make_settings, start_server):
    """Through the official client: image frames pushed out of order (several 3.6 MB batches, so
    several chunks), an IMU topic pushed in reverse with duplicate stamps; topic windows and the
    sequence-level merged streamer return exactly the rows in [start, end), in time order."""
    from mosaicolabs import IMU, Image, Message, Vector3d

    from .conftest import connect

    srv = start_server(make_settings(**SMALL, max_grpc_decode_message_size=4 << 20))
    rng = np.random.default_rng(11)
    frames = rng.permutation(80)
    imu_ts = [5_000 + (i // 2) * 37 for i in range(1200)][::-1]  # pairs of equal stamps, reversed
    sdk = connect(srv)
    try:
        with sdk.sequence_create("shuffle", {}) as w:
            cam = w.topic_create("/cam", {}, Image)
            imu = w.topic_create("/imu", {}, IMU)
            for k, i in enumerate(frames):
                cam.push(Message(timestamp_ns=int(i) * 500, data=Image(
                    data=bytes([int(i) % 256]) + rng.bytes(256 * 256 * 3 - 1), format="raw", width=256, height=256,
                    stride=256 * 3, encoding="rgb8", is_bigendian=False)))
                for t in imu_ts[k * 15:(k + 1) * 15]:
                    imu.push(Message(timestamp_ns=t, data=IMU(acceleration=Vector3d(x=float(t), y=0.0, z=0.0),
                                                              angular_velocity=Vector3d(x=0.0, y=0.0, z=0.0))))
        assert len(chunk_orders(srv, "shuffle/cam")) > 2
        stamps = {"/cam": sorted(int(i) * 500 for i in frames), "/imu": sorted(imu_ts)}
        for start, end in [(None, None), (0, 500), (9_500, 20_000), (20_001, 30_000), (39_500, None)]:
            for topic, all_ts in stamps.items():
                msgs = list(sdk.topic_handler("shuffle", topic).get_data_streamer(start, end))
                assert [m.timestamp_ns for m in msgs] == [
                    t for t in all_ts if (start is None or t >= start) and (end is None or t < end)]
                if topic == "/cam":  # each frame kept its own pixels
                    assert all(m.get_data(Image).data[:1] == bytes([m.timestamp_ns // 500 % 256]) for m in msgs)
            merged = [(m.timestamp_ns, t) for t, m in sdk.sequence_handler("shuffle").get_data_streamer(
                start_timestamp_ns=start, end_timestamp_ns=end)]
            want = sorted((t, name) for name, ts in stamps.items() for t in ts
                          if (start is None or t >= start) and (end is None or t < end))
            assert [t for t, _ in merged] == [t for t, _ in want] and sorted(merged) == want, (start, end)
    finally:
        sdk.close()


@pytest.mark.parametrize("fan_in", [2, 3])
def test_bounded_fan_in_merges_through_spill_files(store, tmp_path, monkeypatch, fan_in):
    """More overlapping runs than the fan-in: groups are merged into temporary files first; never
    more than ``fan_in`` runs are read at once, answers stay exact, temporary files are removed
    (also when the reader is dropped half-way)."""
    from mosaicod.store import reader as reader_mod

    spill_root = tmp_path / "spill"
    spill_root.mkdir()
    monkeypatch.setattr(reader_mod.tempfile, "tempdir", str(spill_root))
    opened: list = []
    real_open = reader_mod._Reader.open

    def counting_open(self, run):
        cursor = real_open(self, run)
        opened.append(cursor)
        assert sum(not c.done for c in opened) <= fan_in, "more runs read at once than the fan-in"
        return cursor

    monkeypatch.setattr(reader_mod._Reader, "open", counting_open)
    for kind in ("shuffled", "duplicates"):
        batches = orders(kind, n_batches=30, per=1000)
        chunks = write_chunks(store, batches, folder=f"tp_{kind}", row_group_bytes=32 * 1024)
        files = [(c.data_file, c.stats.ts_order) for c in chunks]
        assert sum(pq.ParquetFile(store.local_path(c.data_file)).num_row_groups for c in chunks) > 4 * fan_in
        all_ts = np.sort(pa.Table.from_batches(batches).column("timestamp_ns").to_numpy())
        mid = int(all_ts[len(all_ts) // 2])
        for start, end in [(None, None), (mid, mid + 3000), (mid, None), (int(all_ts[-1]), None)]:
            opened.clear()
            out = list(read_topic(store, files, SCHEMA, start, end, batch_rows=700, fan_in=fan_in))
            assert got(pa.Table.from_batches(out, schema=SCHEMA)) == expected(batches, start, end), (kind, start, end)
            if start is None:  # every row group overlaps: merged into spill files, read back
                assert len(opened) > 2 * len(files)
            assert list(spill_root.iterdir()) == []
        it = read_topic(store, files, SCHEMA, batch_rows=700, fan_in=fan_in)
        next(it)
        spills = list(spill_root.iterdir())
        assert spills != []  # spilled before the first batch
        # named with the owning pid, so serve's start can tell a killed server's folders
        assert all(p.name.startswith(f"mosaicod-merge-{os.getpid()}-") for p in spills), spills
        assert reader_mod.remove_stale_spill_dirs(starting=False) == 0  # never a live reader's
        assert list(spill_root.iterdir()) == spills
        it.close()
        assert list(spill_root.iterdir()) == []


@pytest.mark.timeout(300)
def test_rebuild_refuses_a_foreign_chunk_with_null_timestamps_and_clusterize_works(rc, small_server):
    """A foreign chunk whose timestamp_ns holds nulls is reported by rebuild-catalog and not indexed
    (it was indexed before, and topic_filter_clusterize then failed on the topic)."""
    sess, tid = new_topic(rc, "holes", "t")
    ours = [rows(np.arange(i * 500, (i + 1) * 500) * 10) for i in range(4)]
    put_batches(rc, "holes/t", tid, ours)
    act(rc, "session_finalize", {"session_uuid": sess})
    srv = small_server
    with srv.runtime.engine.connect() as conn:
        folder = conn.execute(sa.text("SELECT path_in_store FROM topic_t WHERE locator_name = 'holes/t'")).scalar_one()
    holes = pa.table({"timestamp_ns": pa.array([5, None, 7], pa.int64()), "v": [1.0, 2.0, 3.0],
                      "tag": ["a", "b", "c"]})
    key = add_foreign_chunk(srv.runtime.store, folder, [5, 0, 7], 3, table=holes)
    rep = run(srv.runtime.store, srv.runtime.engine, Options(progress=False, heartbeat_interval=60))
    assert [(p["kind"], p["where"]) for p in rep.problems if p["kind"] == "null-timestamps"] == [("null-timestamps", key)]
    with srv.runtime.engine.connect() as conn:
        indexed = conn.execute(sa.text("SELECT data_file FROM chunk_t")).scalars().all()
    assert key not in indexed and len(indexed) >= 1
    assert got(read_window(rc, "holes/t")) == expected(ours)
    body = {"locator": "holes/t", "clustering_dt_ns": 10, "ontology": {"Floating64.v": {"$geq": 0}}}
    out = [json.loads(r.body.to_pybytes())["response"] for r in rc.do_action(
        flight.Action("topic_filter_clusterize", json.dumps(body).encode()), OPTS)]
    assert [o["ts"] for o in out] == [{"start_ns": 0, "end_ns": 19_990}]
