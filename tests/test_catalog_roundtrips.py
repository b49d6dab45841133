"""Catalog round trips on the write path: idle-only connection checks, session steps committed
without waiting for the WAL flush, reads without a transaction; the DoPut claim's lock."""

import time
import uuid

import pytest
import sqlalchemy as sa

from mosaicod.catalog import db
from mosaicod.catalog.repo import Catalog


@pytest.fixture
def engine(make_settings):
    eng = db.connect(make_settings())
    yield eng
    eng.dispose()


def _backend_pid(conn) -> int:
    return conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()


def test_a_connection_that_died_while_idle_is_replaced(engine, pg_admin_url):
    db.ping_when_idle(engine, idle_s=0.05)
    with engine.connect() as conn:
        pid = _backend_pid(conn)
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as a:
        a.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    admin.dispose()
    time.sleep(0.2)
    with engine.connect() as conn:  # pinged at checkout, found dead, replaced by the pool
        assert _backend_pid(conn) != pid


def test_session_steps_do_not_wait_for_the_wal_flush_and_finalization_does(engine):
    cat = Catalog(engine)
    with cat._session_step() as conn:
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "off"
    with engine.begin() as conn:  # the setting was local to that transaction
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "on"


def test_single_reads_run_outside_a_transaction(engine):
    cat = Catalog(engine)
    with cat._read() as conn:
        assert conn.execute(sa.text("SELECT now() = statement_timestamp()")).scalar_one() is True


def test_a_failing_session_step_leaves_nothing_and_the_connection_reusable(engine):
    cat = Catalog(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE step_probe (x int PRIMARY KEY)"))
    with pytest.raises(sa.exc.IntegrityError):
        with cat._session_step() as conn:
            conn.execute(sa.text("INSERT INTO step_probe VALUES (1)"))
            conn.execute(sa.text("INSERT INTO step_probe VALUES (1)"))  # duplicate: the step fails
    with pytest.raises(RuntimeError):
        with cat._session_step() as conn:
            conn.execute(sa.text("INSERT INTO step_probe VALUES (2)"))
            raise RuntimeError("a check refused the change")
    with cat._session_step() as conn:
        conn.execute(sa.text("INSERT INTO step_probe VALUES (3)"))
    with cat._read() as conn:
        assert conn.execute(sa.text("SELECT array_agg(x) FROM step_probe")).scalar_one() == [3]
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "on"


def _stats(**columns) -> "ChunkStats":
    import pyarrow as pa

    from mosaicod.store.stats import ChunkStats

    batch = pa.RecordBatch.from_pydict({"timestamp_ns": pa.array([5, 7, 9], pa.int64()), **columns})
    stats = ChunkStats(batch.schema)
    stats.update(batch)
    return stats


def _stored_stats(engine, chunk_id: int) -> dict:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT c.column_name, n.min_value, n.max_value, n.has_null, n.has_nan, NULL "
            "FROM column_chunk_numeric_t n JOIN column_t c USING (column_id) WHERE n.chunk_id = :c "
            "UNION ALL SELECT c.column_name, NULL, NULL, t.has_null, NULL, t.min_value || '..' || t.max_value "
            "FROM column_chunk_textual_t t JOIN column_t c USING (column_id) WHERE t.chunk_id = :c"),
            {"c": chunk_id}).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def _probe_topic(engine) -> int:
    from mosaicod.catalog.tables import sequence_t, session_t, topic_t

    with engine.begin() as conn:
        seq = conn.execute(sequence_t.insert().values(
            sequence_uuid=uuid.uuid4(), locator_name="s", path_in_store="sq_x",
            creation_unix_tstamp=1).returning(sequence_t.c.sequence_id)).scalar_one()
        sess = conn.execute(session_t.insert().values(
            session_uuid=uuid.uuid4(), locator_name="s:1", sequence_id=seq,
            creation_unix_tstamp=1).returning(session_t.c.session_id)).scalar_one()
        return conn.execute(topic_t.insert().values(
            topic_uuid=uuid.uuid4(), sequence_id=seq, session_id=sess, locator_name="s/t",
            serialization_format="default", ontology_tag="probe", creation_unix_tstamp=1)
            .returning(topic_t.c.topic_id)).scalar_one()


def test_a_chunk_and_its_statistics_are_indexed_in_one_statement_that_creates_missing_column_rows(engine):
    import pyarrow as pa

    from mosaicod.catalog.repo import insert_chunk_rows

    topic = _probe_topic(engine)
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    first = _stats(x=pa.array([1.5, None, float("nan")]), name=pa.array(["b", "a", None]))
    second = _stats(x=pa.array([-2.0, 3.0, 4.0]), name=pa.array(["z", "y", "x"]))
    third = _stats(x=pa.array([0.0, 1.0, 2.0]), name=pa.array(["q", "q", "q"]), y=pa.array([7, 8, 9]))
    ids = []
    for stats in (first, second, third):
        statements.clear()
        with engine.begin() as conn:
            ids.append(insert_chunk_rows(conn, topic_id=topic, ontology_tag="probe", data_file=f"f{len(ids)}",
                                         size_bytes=10, stats=stats))
        # the chunk row, its statistics and (first and third) the new column rows: one statement
        assert len(statements) == 1, statements
    for chunk_id, stats in zip(ids, (first, second, third)):
        expected = {}
        for name, cs in stats.items():
            r = cs.row()
            expected[name] = ((r["min_value"], r["max_value"], r["has_null"], r["has_nan"], None)
                              if cs.kind == "numeric" else (None, None, r["has_null"], None,
                                                            f"{r['min_value']}..{r['max_value']}"))
        assert _stored_stats(engine, chunk_id) == expected
    with engine.connect() as conn:
        chunks = conn.execute(sa.text("SELECT data_file, row_count, start_timestamp_ns, end_timestamp_ns, "
                                      "timestamp_order FROM chunk_t ORDER BY chunk_id")).all()
    assert [tuple(c) for c in chunks] == [(f"f{i}", 3, 5, 9, 2) for i in range(3)]


def test_a_column_row_created_by_a_concurrent_upload_gets_the_chunk_statistics(engine):
    """Two uploads of a new ontology tag index their first chunks at once: the one whose column
    row insert conflicts with the other's (still uncommitted) waits, then uses that row."""
    import threading

    import pyarrow as pa

    from mosaicod.catalog.repo import insert_chunk_rows

    topic = _probe_topic(engine)
    other = engine.connect()
    tx = other.begin()
    other.execute(sa.text("INSERT INTO column_t (column_name, ontology_tag) VALUES ('x', 'probe')"))
    other_pid = _backend_pid(other)
    ids, failures = [], []

    def index() -> None:
        try:
            with engine.begin() as conn:
                ids.append(insert_chunk_rows(conn, topic_id=topic, ontology_tag="probe", data_file="f0",
                                             size_bytes=10, stats=_stats(x=pa.array([1.0, 2.0, 3.0]))))
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    worker = threading.Thread(target=index)
    worker.start()
    try:
        with engine.connect() as conn:  # the insert waits for the other transaction's column row
            deadline = time.monotonic() + 10
            while not conn.execute(sa.text(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid' "
                    "AND pid <> :p"), {"p": other_pid}).scalar_one():
                assert time.monotonic() < deadline, "the insert did not wait for the other transaction"
                time.sleep(0.02)
                conn.commit()
        tx.commit()
    finally:
        other.close()
        worker.join(10)
    assert not failures, failures
    assert _stored_stats(engine, ids[0]) == {"timestamp_ns": (5.0, 9.0, False, False, None),
                                             "x": (1.0, 3.0, False, False, None)}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM column_t WHERE column_name = 'x'")).scalar_one() == 1


def test_a_session_step_whose_connection_dies_fails_as_a_catalog_outage(engine, pg_admin_url):
    cat = Catalog(engine)
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with pytest.raises(sa.exc.OperationalError):  # what the error boundary maps to UNAVAILABLE
            with cat._session_step() as conn:
                pid = _backend_pid(conn)
                with admin.connect() as a:
                    a.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                time.sleep(0.2)  # the COMMIT goes to a dead connection
    finally:
        admin.dispose()
    with cat._session_step() as conn:  # the dead connection was dropped, not handed out again
        assert _backend_pid(conn) != pid


def test_a_small_sequence_through_the_sdk_runs_few_catalog_statements(server, client):
    """Statements the server sends to the catalog for one small sequence written with the SDK
    (sequence, 3 topics with data, writer exit).  Today 25: sequence 3, session 3, topic 1 each,
    DoPut start 3 each, DoPut end 1 each (its finalizing UPDATE goes with the COMMIT, on the
    driver), finalize 4; a little room for the server's own periodic statements (owner
    keep-alive, heartbeat)."""
    from mosaicolabs import IMU, Message
    from mosaicolabs.models.data import Quaternion, Vector3d

    statements: list[str] = []
    engine = server.runtime.engine
    listener = lambda *a: statements.append(" ".join(a[2].split())[:60])  # noqa: E731
    msgs = [Message(timestamp_ns=1_000 + i, data=IMU(acceleration=Vector3d(x=i, y=0.0, z=0.0),
                                                     angular_velocity=Vector3d(x=0.0, y=0.0, z=0.0),
                                                     orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0)))
            for i in range(20)]
    with client.sequence_create("warm", {}) as sw:  # first use of the IMU columns: their rows are created
        sw.topic_create("imu", {}, IMU).push(msgs[0])
    sa.event.listen(engine, "before_cursor_execute", listener)
    try:
        with client.sequence_create("snap", {"kind": "fault"}) as sw:
            writers = [sw.topic_create(f"imu{k}", {}, IMU) for k in range(3)]
            for w in writers:
                for m in msgs:
                    w.push(m)
    finally:
        sa.event.remove(engine, "before_cursor_execute", listener)
    assert len(statements) <= 27, statements
    assert sorted(t.lstrip("/") for t in client.sequence_handler("snap").topics) == ["imu0", "imu1", "imu2"]


def test_a_journal_record_on_its_own_is_one_durable_statement_outside_a_transaction(engine):
    import psycopg

    from mosaicod.catalog.journal import Journal

    seen = []

    def after(conn, cursor, statement, parameters, context, executemany):
        if "pending_change_t" in statement:  # the driver's state right after the INSERT
            seen.append(conn.connection.driver_connection.info.transaction_status)

    sa.event.listen(engine, "after_cursor_execute", after)
    try:
        change = Journal(engine, owner_key=1).begin("probe", {"x": 1}, 5)
    finally:
        sa.event.remove(engine, "after_cursor_execute", after)
    assert seen == [psycopg.pq.TransactionStatus.IDLE]  # committed by the INSERT itself: no BEGIN, no COMMIT
    with engine.connect() as conn:  # committed, and with the server's (synchronous) commit
        assert conn.execute(sa.text("SELECT kind FROM pending_change_t WHERE change_id = :c"),
                            {"c": change}).scalar_one() == "probe"
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "on"


def _wal_fsyncs(conn) -> int:
    conn.execute(sa.text("SELECT pg_stat_force_next_flush()"))
    conn.commit()  # the backend's statistics are flushed at the end of that transaction
    return conn.execute(sa.text("SELECT coalesce(sum(fsyncs), 0) FROM pg_stat_get_backend_io(pg_backend_pid()) "
                                "WHERE object = 'wal'")).scalar_one()


def test_one_statement_session_steps_commit_outside_a_transaction_without_a_wal_flush(make_settings):
    import psycopg

    from mosaicod.catalog.journal import Journal

    settings = make_settings()
    db.connect(settings).dispose()  # the catalog tables
    one = sa.create_engine(settings.db_url, pool_size=1, max_overflow=0)  # every step on one backend
    try:
        cat, journal = Catalog(one), Journal(one, owner_key=1)
        states = []
        sa.event.listen(one, "after_cursor_execute", lambda conn, *a: states.append(
            conn.connection.driver_connection.info.transaction_status))
        with one.connect() as conn:
            before = _wal_fsyncs(conn)
        seq_change = journal.begin("sequence_create", {}, 1)  # synchronous: flushes the WAL
        sess_change = journal.begin("session_create", {}, 2)
        with one.connect() as conn:
            journaled = _wal_fsyncs(conn)
        states.clear()
        seq = cat.create_sequence(locator="s", uuid=uuid.uuid4(), user_metadata={}, path_in_store="sq_1",
                                  created_at_ns=1, change_id=seq_change)
        sess = uuid.uuid4()
        cat.create_session(sequence_id=seq, uuid=sess, locator="s:1", created_at_ns=2, change_id=sess_change)
        cat.create_topic(session_uuid=sess, locator="s/t", uuid=uuid.uuid4(), serialization_format="default",
                         ontology_tag="imu", user_metadata=None, created_at_ns=3, sequence_locator="s")
        topic = cat.topic("s/t")["topic_id"]
        cat.set_upload_folder(topic, "sq_1/tp_1", b"schema")
        assert states == [psycopg.pq.TransactionStatus.IDLE] * 5  # each statement its own transaction
        with one.connect() as conn:
            assert _wal_fsyncs(conn) == journaled  # none of the steps waited for a WAL flush
            assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "on"  # not left behind
            assert conn.execute(sa.text("SELECT count(*) FROM pending_change_t")).scalar_one() == 0  # cleared
            assert conn.execute(sa.text("SELECT path_in_store FROM topic_t WHERE topic_id = :t"),
                                {"t": topic}).scalar_one() == "sq_1/tp_1"
        assert journaled > before
    finally:
        one.dispose()


def test_a_topic_finalization_refused_at_its_last_statement_indexes_nothing(engine):
    """The finalizing UPDATE goes with the COMMIT (one round trip): if it fails, the chunk rows
    of the same step are not committed either, and the connection is not handed out again."""
    import pyarrow as pa

    from mosaicod.catalog.tables import sequence_t, session_t, topic_t

    cat = Catalog(engine)
    with engine.begin() as conn:
        seq = conn.execute(sequence_t.insert().values(
            sequence_uuid=uuid.uuid4(), locator_name="s", path_in_store="sq_x",
            creation_unix_tstamp=1).returning(sequence_t.c.sequence_id)).scalar_one()
        sess = conn.execute(session_t.insert().values(
            session_uuid=uuid.uuid4(), locator_name="s:1", sequence_id=seq,
            creation_unix_tstamp=1).returning(session_t.c.session_id)).scalar_one()
        topics = [conn.execute(topic_t.insert().values(
            topic_uuid=uuid.uuid4(), sequence_id=seq, session_id=sess, locator_name=f"s/t{k}",
            serialization_format="default", ontology_tag="probe", creation_unix_tstamp=1)
            .returning(topic_t.c.topic_id)).scalar_one() for k in range(2)]
        conn.execute(sa.text(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN IF NEW.topic_id = %d THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$" % topics[0]))
        conn.execute(sa.text("CREATE TRIGGER refuse BEFORE UPDATE ON topic_t FOR EACH ROW EXECUTE FUNCTION refuse()"))
    chunk = {"ontology_tag": "probe", "data_file": "f0", "size_bytes": 10, "stats": _stats(x=pa.array([1.0, 2.0, 3.0]))}
    with cat._read() as conn:
        pid = _backend_pid(conn)
    with pytest.raises(sa.exc.DBAPIError):
        cat.finalize_topic(topics[0], 42, chunks=[chunk])
    cat.finalize_topic(topics[1], 43, chunks=[{**chunk, "data_file": "f1"}])
    with cat._read() as conn:
        assert _backend_pid(conn) != pid  # the connection whose transaction failed was dropped
        rows = conn.execute(sa.text("SELECT t.topic_id, t.completion_unix_tstamp, t.start_index_timestamp, "
                                    "t.end_index_timestamp, count(c.chunk_id) FROM topic_t t "
                                    "LEFT JOIN chunk_t c USING (topic_id) GROUP BY t.topic_id ORDER BY t.topic_id")).all()
        assert [tuple(r) for r in rows] == [(topics[0], None, None, None, 0), (topics[1], 43, 5, 9, 1)]
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "on"


def test_of_two_claims_of_one_topic_at_once_only_one_wins(engine):
    """The second claim waits for the first one's lock on the topic, then sees its pending upload."""
    import threading

    from mosaicod import errors
    from mosaicod.catalog.journal import Journal

    cat, journal = Catalog(engine), Journal(engine, owner_key=1)
    seq = cat.create_sequence(locator="s", uuid=uuid.uuid4(), user_metadata={}, path_in_store="sq_1",
                              created_at_ns=1)
    sess, topic_uuid = uuid.uuid4(), uuid.uuid4()
    cat.create_session(sequence_id=seq, uuid=sess, locator="s:1", created_at_ns=2)
    cat.create_topic(session_uuid=sess, locator="s/t", uuid=topic_uuid, serialization_format="default",
                     ontology_tag="imu", user_metadata=None, created_at_ns=3, sequence_locator="s")
    first_holds_the_lock, results = threading.Event(), {}

    def claim(name: str, hold: float) -> None:
        def record(conn, topic) -> int:
            first_holds_the_lock.set()
            time.sleep(hold)  # the other claim arrives meanwhile
            return journal.begin("upload", {"topic_id": topic["topic_id"], "folder": name}, 1, conn)
        try:
            results[name] = cat.claim_upload("s/t", topic_uuid, record)[1]
        except errors.MosaicoError as exc:
            results[name] = (exc.kind, exc.message)

    first = threading.Thread(target=claim, args=("first", 0.5))
    first.start()
    assert first_holds_the_lock.wait(10)
    claim("second", 0)
    first.join(10)
    assert isinstance(results["first"], int)
    assert results["second"] == (errors.Kind.FAILED_PRECONDITION, "Topic `s/t` is already uploading data")
