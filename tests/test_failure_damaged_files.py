"""Damaged chunk files on a running server: a file truncated on disk (before a read, inside its
footer, or while a read streams it).  The read that meets it fails alone, with a clear error
(status INTERNAL, a message saying what is wrong and what to do, no path); the server stays up and
serves the other topics.  The server runs in its own process: when reads decoded memory-mapped
files, a file truncated under a read made the kernel kill it (SIGBUS)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest

from .ops_helpers import base_env, read_topic, start_serve, write_sequence
from .test_core_bad_input import act

MiB = 1 << 20
SCHEMA = pa.schema([pa.field("timestamp_ns", pa.int64(), nullable=False), pa.field("v", pa.float64())])


@pytest.fixture
def serve(tmp_path, db_url):
    """`mosaicod serve` in a subprocess: 64 MiB chunks of 1 MiB row groups (many row groups per
    file, each streamed as several DoGet batches)."""
    env = base_env(MOSAICOD_DB_URL=db_url, MOSAICOD_MAX_CHUNK_SIZE=str(64 * MiB),
                   MOSAICOD_ROW_GROUP_SIZE=str(MiB), MOSAICOD_LOG_LEVEL="warning")
    srv = start_serve(["--data-dir", str(tmp_path / "data")], env, tmp_path / "serve.log")
    srv.root = tmp_path / "data"
    yield srv
    srv.stop()


def topic_files(srv, locator: str) -> list[Path]:
    """The chunk files of a topic, found through the topic documents of the store."""
    for doc in srv.root.rglob("tp_*/metadata.json"):
        if json.loads(doc.read_text())["properties"]["resource_locator"] == locator:
            return sorted(doc.parent.glob("data/*.parquet"))
    raise AssertionError(f"no store folder for {locator}: {list(srv.root.rglob('tp_*/metadata.json'))}")


def upload(srv, seq: str, rows: int) -> None:
    """A finalized numeric topic `<seq>/t` of ``rows`` rows (random doubles: files roll by size)."""
    c = flight.FlightClient(srv.location)
    try:
        act(c, "sequence_create", {"locator": seq, "user_metadata": {}})
        sess = act(c, "session_create", {"locator": seq})["uuid"]
        tid = act(c, "topic_create", {"session_uuid": sess, "locator": f"{seq}/t", "serialization_format": "default",
                                      "ontology_tag": "F", "user_metadata": {}})["uuid"]
        desc = flight.FlightDescriptor.for_command(json.dumps({"resource_locator": f"{seq}/t", "topic_uuid": tid}).encode())
        w = c.do_put(desc, SCHEMA)[0]
        rng = np.random.default_rng(7)
        for lo in range(0, rows, 100_000):
            n = min(100_000, rows - lo)
            w.write_batch(pa.record_batch([pa.array(np.arange(lo, lo + n, dtype=np.int64)),
                                           pa.array(rng.random(n))], schema=SCHEMA))
        w.close()
        act(c, "session_finalize", {"session_uuid": sess})
    finally:
        c.close()


def assert_damaged(exc: BaseException) -> None:
    text = str(exc)
    assert "a data file of this topic is damaged (" in text, text
    assert "restore the file from a backup" in text and "rebuild-catalog" in text, text
    assert "tp_" not in text and ".parquet" not in text and "Traceback" not in text, text


def ticket(c: flight.FlightClient, locator: str) -> flight.Ticket:
    info = c.get_flight_info(flight.FlightDescriptor.for_command(json.dumps({"resource_locator": locator}).encode()))
    return info.endpoints[0].ticket


def assert_serving(srv, locator: str, rows: int) -> None:
    assert srv.proc.poll() is None, srv.log()[-3000:]
    assert read_topic(srv.location, locator).column("timestamp_ns").to_pylist() == list(range(rows))


@pytest.mark.parametrize("cut", ["half", "footer"])
def test_truncated_chunk_fails_only_that_read(serve, cut):
    """A chunk file cut in half (its footer gone) or cut inside its footer: reading the topic
    fails cleanly through a raw Flight client and through the SDK, every time; the server goes
    on serving the other topic."""
    srv = serve
    upload(srv, "good", 50_000)
    write_sequence(srv.port, "bad", {"log": 20_000}, payload=200)  # an SDK topic (String)
    victim = topic_files(srv, "bad/log")[0]
    size = victim.stat().st_size
    footer = pq.ParquetFile(victim).metadata.serialized_size
    with open(victim, "r+b") as f:
        f.truncate(size // 2 if cut == "half" else size - 8 - footer // 2)

    c = flight.FlightClient(srv.location)
    try:
        for _ in range(2):
            with pytest.raises(flight.FlightInternalError) as info:
                c.do_get(ticket(c, "bad/log")).read_all()
            assert_damaged(info.value)
    finally:
        c.close()

    from mosaicolabs import MosaicoClient

    client = MosaicoClient.connect("127.0.0.1", srv.port)
    try:
        with pytest.raises(Exception) as info:
            streamer = client.topic_handler("bad", "log").get_data_streamer()
            for _ in streamer:
                pass
        assert_damaged(info.value)
    finally:
        client.close()
    assert_serving(srv, "good/t", 50_000)


def test_chunk_truncated_while_a_read_streams_it(serve):
    """The read has started (the client holds its first batch; the server is in the middle of a
    row group, held back by flow control) when the file is truncated to nothing: the read ends
    with the clean error at the latest when it gets to the next row group, and the server stays
    up."""
    srv = serve
    upload(srv, "good", 50_000)
    # 48 MB of Arrow data: one chunk file of ~30 row groups, far more than the stream's flow-control
    # window holds
    rows = 3_000_000
    upload(srv, "bad", rows)
    victim, = topic_files(srv, "bad/t")
    assert pq.ParquetFile(victim).metadata.num_row_groups >= 20

    c = flight.FlightClient(srv.location)
    try:
        reader = c.do_get(ticket(c, "bad/t"))
        got = reader.read_chunk().data.num_rows
        time.sleep(0.5)  # the server fills the stream's window and waits
        with open(victim, "r+b") as f:
            f.truncate(0)
        with pytest.raises(flight.FlightInternalError) as info:
            while True:
                got += reader.read_chunk().data.num_rows
        assert_damaged(info.value)
        assert "(truncated)" in str(info.value)
        assert 0 < got < rows
    finally:
        c.close()
    assert_serving(srv, "good/t", 50_000)
