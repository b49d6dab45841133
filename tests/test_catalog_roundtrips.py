"""Catalog round trips on the write path: idle-only connection checks, session steps committed
without waiting for the WAL flush, reads without a transaction; the DoPut claim's lock."""

import contextlib
import time
import uuid
from typing import Iterator

import pytest
import sqlalchemy as sa

from mosaicod.catalog import db
from mosaicod.catalog.repo import _ASYNC_COMMIT_LOCAL, Catalog


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


@contextlib.contextmanager
def _async_transaction(cat: Catalog) -> Iterator[sa.Connection]:
    """A transaction straight on the driver (``Catalog._transaction``) whose commit does not wait
    for the WAL flush, as a session step or a finalization's."""
    with cat._transaction([(_ASYNC_COMMIT_LOCAL, None)]) as tx:
        yield tx.conn


def test_a_transaction_that_does_not_wait_for_the_wal_flush_leaves_the_setting_behind(engine):
    cat = Catalog(engine)
    with _async_transaction(cat) as conn:
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "off"
    with engine.begin() as conn:  # the setting was local to that transaction
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "on"


def test_single_reads_run_outside_a_transaction(engine):
    cat = Catalog(engine)
    with cat._read() as conn:
        assert conn.execute(sa.text("SELECT now() = statement_timestamp()")).scalar_one() is True


def test_a_failing_driver_transaction_leaves_nothing_and_the_connection_reusable(engine):
    cat = Catalog(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE step_probe (x int PRIMARY KEY)"))
    with pytest.raises(sa.exc.IntegrityError):
        with _async_transaction(cat) as conn:
            conn.execute(sa.text("INSERT INTO step_probe VALUES (1)"))
            conn.execute(sa.text("INSERT INTO step_probe VALUES (1)"))  # duplicate: the step fails
    with pytest.raises(RuntimeError):
        with _async_transaction(cat) as conn:
            conn.execute(sa.text("INSERT INTO step_probe VALUES (2)"))
            raise RuntimeError("a check refused the change")
    with _async_transaction(cat) as conn:
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


def _probe_topics(engine, count: int = 1) -> list[int]:
    """A sequence, a session and ``count`` topics of tag ``probe`` (ids), inserted directly."""
    from mosaicod.catalog.tables import sequence_t, session_t, topic_t

    with engine.begin() as conn:
        seq = conn.execute(sequence_t.insert().values(
            sequence_uuid=uuid.uuid4(), locator_name="s", path_in_store="sq_x",
            creation_unix_tstamp=1).returning(sequence_t.c.sequence_id)).scalar_one()
        sess = conn.execute(session_t.insert().values(
            session_uuid=uuid.uuid4(), locator_name="s:1", sequence_id=seq,
            creation_unix_tstamp=1).returning(session_t.c.session_id)).scalar_one()
        return [conn.execute(topic_t.insert().values(
            topic_uuid=uuid.uuid4(), sequence_id=seq, session_id=sess,
            locator_name="s/t" if count == 1 else f"s/t{k}",
            serialization_format="default", ontology_tag="probe", creation_unix_tstamp=1)
            .returning(topic_t.c.topic_id)).scalar_one() for k in range(count)]


def _probe_topic(engine) -> int:
    return _probe_topics(engine)[0]


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


def test_a_driver_transaction_whose_connection_dies_fails_as_a_catalog_outage(engine, pg_admin_url):
    cat = Catalog(engine)
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with pytest.raises(sa.exc.OperationalError):  # what the error boundary maps to UNAVAILABLE
            with _async_transaction(cat) as conn:
                pid = _backend_pid(conn)
                with admin.connect() as a:
                    a.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                time.sleep(0.2)  # the COMMIT goes to a dead connection
    finally:
        admin.dispose()
    with _async_transaction(cat) as conn:  # the dead connection was dropped, not handed out again
        assert _backend_pid(conn) != pid


def test_a_small_sequence_through_the_sdk_runs_few_catalog_statements(server, client):
    """Statements the server sends to the catalog for one small sequence written with the SDK
    (sequence, 3 topics with data, writer exit).  Today 17: sequence 2, session 2, topic 1 each,
    DoPut start 3 each, DoPut end none (pipelined straight to the driver), finalize 1 (its
    pending change; the rest goes straight to the driver, counted by
    ``test_the_session_actions_take_few_catalog_round_trips``); a little room for the server's
    own periodic statements (owner keep-alive, heartbeat)."""
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
    assert len(statements) <= 19, statements
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

    cat = Catalog(engine)
    topics = _probe_topics(engine, 2)
    with engine.begin() as conn:
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


def test_the_session_actions_take_few_catalog_round_trips(make_settings, tmp_path):
    """Round trips to the catalog (libpq's ReadyForQuery messages, on every pooled connection)
    per action of a small sequence: sequence_create 2 (the pending change, which checks the name,
    and the row), session_create 2 (the pending change, which looks the sequence up, and the
    row), topic_create 1, session_finalize 3 (BEGIN with the locks, the pending change, the
    updates with the COMMIT)."""
    import psycopg
    import pyarrow as pa

    from mosaicod.runtime import Runtime
    from mosaicod.service import Service

    runtime = Runtime.open(make_settings())
    svc = Service(runtime.settings, runtime.catalog, runtime.store, runtime.journal)
    schema = pa.schema([("timestamp_ns", pa.int64()), ("x", pa.float64())])
    batch = pa.record_batch([pa.array([1, 2], pa.int64()), pa.array([0.5, 1.5])], schema=schema)
    trace = tmp_path / "libpq.trace"
    traced = open(trace, "w")
    counted: dict[str, int] = {}

    def checkout(dbapi_conn, record, proxy):  # noqa: ANN001 - SQLAlchemy event signature
        dbapi_conn.pgconn.trace(traced.fileno())
        dbapi_conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)

    def checkin(dbapi_conn, record):  # noqa: ANN001
        if dbapi_conn is not None and not dbapi_conn.closed:
            dbapi_conn.pgconn.untrace()

    def count(name, fn, *args):
        traced.flush()
        start = trace.read_text().count("ReadyForQuery")
        result = fn(*args)
        traced.flush()
        counted[name] = counted.get(name, 0) + trace.read_text().count("ReadyForQuery") - start
        return result

    try:
        sa.event.listen(runtime.engine, "checkout", checkout)
        sa.event.listen(runtime.engine, "checkin", checkin)
        for i in range(7):  # past psycopg's preparation of repeated statements (its 5th use)
            counted.clear()
            count("sequence_create", svc.sequence_create, {"locator": f"seq{i}", "user_metadata": {}})
            sess = count("session_create", svc.session_create, {"locator": f"seq{i}"})
            for k in range(2):
                topic = count("topic_create", svc.topic_create, {
                    "session_uuid": sess["uuid"], "locator": f"seq{i}/t{k}", "serialization_format": "default",
                    "ontology_tag": "probe", "user_metadata": {}})
                upload = svc.begin_upload(f"seq{i}/t{k}", uuid.UUID(topic["uuid"]), schema)
                upload.write(batch)
                upload.finish()
            count("session_finalize", svc.session_finalize, {"session_uuid": sess["uuid"]})
    finally:
        sa.event.remove(runtime.engine, "checkout", checkout)
        sa.event.remove(runtime.engine, "checkin", checkin)
        traced.close()
        runtime.close()
    assert counted == {"sequence_create": 2, "session_create": 2, "topic_create": 2, "session_finalize": 3}


def test_a_refused_create_records_nothing_and_writes_nothing(make_settings):
    """The name check of sequence_create and the sequence lookup of session_create run in the
    statement that records the pending change: a refused create leaves no pending change and no
    document in the store, with the same error as before."""
    from mosaicod import errors
    from mosaicod.runtime import Runtime
    from mosaicod.service import Service

    runtime = Runtime.open(make_settings())
    svc = Service(runtime.settings, runtime.catalog, runtime.store, runtime.journal)
    try:
        svc.sequence_create({"locator": "taken", "user_metadata": {}})
        stored = sorted(runtime.store.walk_files(""))
        with pytest.raises(errors.MosaicoError) as dup:
            svc.sequence_create({"locator": "taken", "user_metadata": {"x": 1}})
        assert (dup.value.kind, str(dup.value)) == (errors.Kind.ALREADY_EXISTS, "Sequence `taken` already exists")
        with pytest.raises(errors.MosaicoError) as missing:
            svc.session_create({"locator": "nowhere"})
        assert missing.value.kind is errors.Kind.NOT_FOUND and "Sequence `nowhere`" in str(missing.value)
        assert sorted(runtime.store.walk_files("")) == stored
        sess = svc.session_create({"locator": "taken"})
        with runtime.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM pending_change_t")).scalar_one() == 0
            folder = conn.execute(sa.text("SELECT path_in_store FROM sequence_t WHERE locator_name = 'taken'")).scalar_one()
        doc = runtime.store.get_json(f"{folder}/sessions/{sess['locator'].rpartition(':')[2]}.json")
        assert (doc["locator"], doc["uuid"]) == (sess["locator"], sess["uuid"])  # under the sequence folder
    finally:
        runtime.close()


def test_session_finalize_waits_for_the_wal_flush_only_for_its_pending_change(make_settings):
    """The pending finalization is committed durably (flushing the session's earlier steps with
    it); the finalizing commit, recovered from the store if lost, does not wait for the flush."""
    from mosaicod.catalog.journal import Journal
    from mosaicod.catalog.tables import sequence_t, session_t, topic_t

    settings = make_settings()
    db.connect(settings).dispose()  # the catalog tables
    two = sa.create_engine(settings.db_url, pool_size=2, max_overflow=0)  # the step and its pending change
    try:
        cat, journal = Catalog(two), Journal(two, owner_key=1)
        sess_uuid = uuid.uuid4()
        with two.begin() as conn:
            seq = conn.execute(sequence_t.insert().values(
                sequence_uuid=uuid.uuid4(), locator_name="s", path_in_store="sq_x",
                creation_unix_tstamp=1).returning(sequence_t.c.sequence_id)).scalar_one()
            sess = conn.execute(session_t.insert().values(
                session_uuid=sess_uuid, locator_name="s:1", sequence_id=seq,
                creation_unix_tstamp=1).returning(session_t.c.session_id)).scalar_one()
            conn.execute(topic_t.insert().values(
                topic_uuid=uuid.uuid4(), sequence_id=seq, session_id=sess, locator_name="s/t",
                serialization_format="default", ontology_tag="probe", creation_unix_tstamp=1,
                path_in_store="tp_x", completion_unix_tstamp=2))
        with two.connect() as a, two.connect() as b:
            pids = [_backend_pid(a), _backend_pid(b)]

        def fsyncs() -> int:
            with two.connect() as a, two.connect() as b:
                for conn in (a, b):
                    conn.execute(sa.text("SELECT pg_stat_force_next_flush()"))
                    conn.commit()
                return a.execute(sa.text(
                    "SELECT coalesce(sum(fsyncs), 0) FROM unnest(CAST(:p AS int[])) AS p(pid), "
                    "pg_stat_get_backend_io(p.pid) WHERE object = 'wal'"), {"p": pids}).scalar_one()

        before = fsyncs()
        cat.finalize_session(sess_uuid, 10, lambda s: journal.begin("session_finalize", {"locator": "s:1"}, 9))
        assert fsyncs() - before <= 1  # the pending change's commit only
        with two.connect() as conn:
            assert conn.execute(sa.text("SELECT completion_unix_tstamp FROM session_t")).scalar_one() == 10
            assert conn.execute(sa.text("SELECT count(*) FROM pending_change_t")).scalar_one() == 0
            assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "on"  # not left behind
    finally:
        two.dispose()
