"""API keys enforced on every RPC, driven with the real mosaicolabs 0.7.0 client (and raw pyarrow
for the RPCs the SDK wraps).  One module-scoped server with MOSAICOD_API_KEY_ENABLED=true."""

from __future__ import annotations

import itertools
import json
import time
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.flight as flight
import pytest
import sqlalchemy as sa
from mosaicolabs import MosaicoClient, Message, QuerySequence, SessionLevelErrorPolicy, Temperature

from mosaicod import apikey, auth
from mosaicod.catalog import keys
from mosaicod.catalog.tables import chunk_t, session_t, sequence_t
from mosaicod.config import load_settings
from mosaicod.permissions import Permission
from tests.conftest import create_database, drop_database, start_in_process

R, W, D = Permission.READ, Permission.WRITE, Permission.DELETE
HEADER = auth.HEADER


@pytest.fixture(scope="module")
def srv(pg_admin_url, tmp_path_factory):
    db = create_database(pg_admin_url)
    settings = load_settings({"db_url": db, "data_dir": str(tmp_path_factory.mktemp("auth") / "data"),
                              "api_key_enabled": True, "log_level": "warning",
                              "log_format": "plain"}, env={})
    server = start_in_process(settings)
    yield server
    server.stop()
    drop_database(pg_admin_url, db)


def mint(srv, perms, expires_at=None) -> str:
    key, _ = keys.create_key(srv.runtime.engine, perms, "test", expires_at)
    return key


def sdk(srv, key=None, timeout=2) -> MosaicoClient:
    return MosaicoClient.connect("127.0.0.1", srv.port, timeout=timeout, api_key=key)


def raw(srv, key=None) -> tuple[flight.FlightClient, flight.FlightCallOptions]:
    headers = [(HEADER.encode(), key.encode())] if key is not None else []
    return flight.FlightClient(f"grpc://127.0.0.1:{srv.port}"), flight.FlightCallOptions(headers=headers)


_names = itertools.count()


def write_sequence(client: MosaicoClient, rows: int = 5, **kwargs) -> str:
    name = f"seq_{next(_names)}_{int(time.time() * 1000)}"
    with client.sequence_create(name, metadata={"owner": "security-test"}, **kwargs) as sw:
        tw = sw.topic_create("sensors/temp", metadata={}, ontology_type=Temperature)
        for i in range(rows):
            tw.push(Message(timestamp_ns=1_000_000 + i, data=Temperature(value=300.0 + i)))
    return name


def read_sequence(client: MosaicoClient, name: str) -> list[float]:
    handler = client.sequence_handler(name)
    assert handler is not None
    return [msg.data.value for _topic, msg in handler.get_data_streamer()]


@pytest.fixture(scope="module")
def admin(srv):
    key = mint(srv, R | W | D)
    client = sdk(srv, key)
    yield client
    client.close()


@pytest.fixture(scope="module")
def existing(admin) -> str:
    return write_sequence(admin)


def assert_refused(exc_info, *words):
    text = str(exc_info.value)
    assert text.startswith("Unauthorized:"), text
    assert "unauthorized" in text
    for w in words:
        assert w in text, text


# --------------------------------------------------------------------------- authentication


@pytest.mark.parametrize("key", [None, "msco_wrongauthapikey123_abc12345", "not-a-key"])
def test_connect_without_usable_key_fails(srv, key):
    with pytest.raises(ConnectionError, match="failed on startup"):
        sdk(srv, key, timeout=1)


def test_connect_with_unknown_key_fails(srv):
    unknown, _, _ = apikey.generate_key()  # well-formed, never stored
    with pytest.raises(ConnectionError, match="failed on startup"):
        sdk(srv, unknown, timeout=1)


RAW_CALLS = {
    "info": lambda c, o: list(c.do_action(flight.Action("info", b"{}"), options=o)),
    "list_flights": lambda c, o: list(c.list_flights(options=o)),
    "get_flight_info": lambda c, o: c.get_flight_info(flight.FlightDescriptor.for_command(
        json.dumps({"resource_locator": "nope"})), options=o),
    "get_schema": lambda c, o: c.get_schema(flight.FlightDescriptor.for_command(
        json.dumps({"resource_locator": "nope/x"})), options=o),
    "do_get": lambda c, o: c.do_get(flight.Ticket(b"{}"), options=o).read_all(),
    "do_put": lambda c, o: _raw_put(c, o),
}


def _raw_put(c, o):
    writer, _ = c.do_put(flight.FlightDescriptor.for_command(b"{}"),
                         pa.schema([("timestamp_ns", pa.int64())]), options=o)
    writer.write_table(pa.table({"timestamp_ns": pa.array([1], pa.int64())}))
    writer.close()


@pytest.fixture(scope="module")
def unusable_keys(srv) -> dict:
    revoked = mint(srv, R | W | D)
    keys.revoke_key(srv.runtime.engine, apikey.parse_key(revoked)[1])
    expired = mint(srv, R | W | D, expires_at=datetime.now(timezone.utc) + timedelta(seconds=1))
    _wait_until_expired(srv, expired)
    return {"missing": None, "malformed": "msco_wrongauthapikey123_abc12345",
            "unknown": apikey.generate_key()[0], "revoked": revoked, "expired": expired}


@pytest.mark.parametrize("rpc", sorted(RAW_CALLS))
@pytest.mark.parametrize("case", ["missing", "malformed", "unknown", "revoked", "expired"])
def test_every_rpc_refuses_unusable_keys_before_any_work(srv, unusable_keys, rpc, case):
    key = unusable_keys[case]
    client, opts = raw(srv, key)
    # pyarrow's client loses the Flight error class of GetSchema failures (they arrive as OSError
    # with our message); every other RPC surfaces PERMISSION_DENIED as FlightUnauthorizedError
    with pytest.raises(OSError if rpc == "get_schema" else flight.FlightUnauthorizedError) as exc:
        RAW_CALLS[rpc](client, opts)
    expected = {"missing": "Missing API key", "malformed": "malformed API key",
                "unknown": "does not exist", "revoked": "revoked", "expired": "expired"}[case]
    call = {"info": "DoAction", "list_flights": "ListFlights", "get_flight_info": "GetFlightInfo",
            "get_schema": "GetSchema", "do_get": "DoGet", "do_put": "DoPut"}[rpc]
    assert_refused(exc, expected, f"{call} call refused")
    client.close()


def _wait_until_expired(srv, key):
    info = keys.key_status(srv.runtime.engine, apikey.parse_key(key)[1])
    while time.time() < info.expires_at:
        time.sleep(0.05)


def test_refused_do_put_does_no_work(srv, admin):
    """A DoPut without permission must not create anything (refused before dispatch)."""
    with srv.runtime.engine.connect() as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(sequence_t)).scalar()
    client, opts = raw(srv, mint(srv, R))
    with pytest.raises(flight.FlightUnauthorizedError) as exc:
        client.do_action(flight.Action("sequence_create", json.dumps(
            {"name": "never_created", "user_metadata": {}}).encode()), options=opts).__next__()
    assert_refused(exc, "SequenceCreate")
    with srv.runtime.engine.connect() as conn:
        after = conn.execute(sa.select(sa.func.count()).select_from(sequence_t)).scalar()
    assert after == before

    # a real DoPut with a read-only key on a topic that is ready for its upload
    admin_client, admin_opts = raw(srv, mint(srv, R | W | D))
    seq = f"refused_put_{int(time.time() * 1000)}"
    _raw_action(admin_client, admin_opts, "sequence_create", {"locator": seq, "user_metadata": {}})
    sess = _raw_action(admin_client, admin_opts, "session_create", {"locator": seq})
    tid = _raw_action(admin_client, admin_opts, "topic_create", {
        "session_uuid": sess["uuid"], "locator": f"{seq}/t", "serialization_format": "default",
        "ontology_tag": "Temperature", "user_metadata": {}})["uuid"]
    store = srv.runtime.store
    folders_before = store.list_dir()
    descriptor = flight.FlightDescriptor.for_command(json.dumps(
        {"resource_locator": f"{seq}/t", "topic_uuid": tid}).encode())
    schema = pa.schema([("timestamp_ns", pa.int64()), ("value", pa.float64())])
    with pytest.raises(flight.FlightUnauthorizedError) as exc:
        writer, _ = client.do_put(descriptor, schema, options=opts)
        writer.write_table(pa.table({"timestamp_ns": pa.array([1, 2, 3], pa.int64()),
                                     "value": pa.array([1.0, 2.0, 3.0])}))
        writer.close()
    assert_refused(exc, "does not have WRITE permissions")
    topic = srv.runtime.catalog.topic(f"{seq}/t")
    assert topic["path_in_store"] is None and topic["arrow_schema"] is None  # upload never claimed
    assert topic["completion_unix_tstamp"] is None
    with srv.runtime.engine.connect() as conn:
        chunks = conn.execute(sa.select(sa.func.count()).select_from(chunk_t)
                              .where(chunk_t.c.topic_id == topic["topic_id"])).scalar_one()
    assert chunks == 0
    assert store.list_dir() == folders_before  # no topic folder (hence no data file) was created
    assert not [k for k, _ in store.walk_files("") if k.endswith(".parquet")
                and k.split("/")[0] not in folders_before]
    # the refused stream left the topic untouched: the writer can still upload it
    writer, _ = admin_client.do_put(descriptor, schema, options=admin_opts)
    writer.write_table(pa.table({"timestamp_ns": pa.array([1, 2, 3], pa.int64()),
                                 "value": pa.array([1.0, 2.0, 3.0])}))
    writer.close()
    _raw_action(admin_client, admin_opts, "session_finalize", {"session_uuid": sess["uuid"]})
    topic = srv.runtime.catalog.topic(f"{seq}/t")
    assert topic["completion_unix_tstamp"] is not None
    assert [k for k, _ in store.walk_files(topic["path_in_store"]) if k.endswith(".parquet")]
    admin_client.close()
    client.close()


def _raw_action(client, opts, name: str, body: dict):
    results = list(client.do_action(flight.Action(name, json.dumps(body).encode()), options=opts))
    return json.loads(results[0].body.to_pybytes())["response"] if results else None


# --------------------------------------------------------------------------- permissions


COMBOS = [R, W, D, R | W, R | D, W | D, R | W | D]


@pytest.mark.parametrize("perms", COMBOS, ids=apikey.format_permissions)
def test_each_permission_combination_allows_exactly_its_operations(srv, admin, existing, perms):
    victim = write_sequence(admin)  # something this key may (or may not) delete
    client = sdk(srv, mint(srv, perms))  # connecting needs no permission (info)
    try:
        # read: GetFlightInfo + DoGet through the SDK, ListFlights, query, notification list
        if R in perms:
            assert read_sequence(client, existing) == [300.0 + i for i in range(5)]
            assert existing in client.list_sequences()
            assert client.query(QuerySequence().with_name(existing)) is not None
            assert client.list_sequence_notifications(existing) == []
        else:
            with pytest.raises(flight.FlightUnauthorizedError) as exc:
                client.sequence_handler(existing)
            assert_refused(exc, "READ")
            with pytest.raises(flight.FlightUnauthorizedError) as exc:
                client.list_sequences()
            assert_refused(exc, "READ")
            with pytest.raises(flight.FlightUnauthorizedError) as exc:
                client.query(QuerySequence().with_name(existing))
            assert_refused(exc, "Query")
            with pytest.raises(flight.FlightUnauthorizedError) as exc:
                client.list_sequence_notifications(existing)
            assert_refused(exc, "SequenceNotificationList")
        # write: sequence_create + topic_create + DoPut + session_finalize
        if W in perms:
            written = write_sequence(client)
            assert read_sequence(admin, written) == [300.0 + i for i in range(5)]
        else:
            with pytest.raises(flight.FlightUnauthorizedError) as exc:
                write_sequence(client)
            assert_refused(exc, "SequenceCreate")
        # delete
        if D in perms:
            client.sequence_delete(victim)
            assert not admin.sequence_exists(victim)
        else:
            with pytest.raises(flight.FlightUnauthorizedError) as exc:
                client.sequence_delete(victim)
            assert_refused(exc, "SequenceDelete")
            assert admin.sequence_exists(victim)
    finally:
        client.close()


@pytest.mark.parametrize("perms", COMBOS, ids=apikey.format_permissions)
def test_raw_rpcs_follow_the_permission_table(srv, existing, perms):
    """DoGet/GetSchema/DoPut (wrapped by the SDK) refused exactly when the flag is missing."""
    client, opts = raw(srv, mint(srv, perms))
    try:
        topic = json.dumps({"resource_locator": f"{existing}/sensors/temp"})
        for rpc, needed, call in [
            ("get_schema", R, lambda: client.get_schema(flight.FlightDescriptor.for_command(topic),
                                                        options=opts)),
            ("do_get", R, lambda: client.do_get(flight.Ticket(b"{}"), options=opts).read_all()),
            ("do_put", W, lambda: _raw_put(client, opts)),
        ]:
            try:
                call()
            except Exception as exc:  # noqa: BLE001
                # pyarrow turns a GetSchema refusal into a generic ArrowException/OSError
                refused = isinstance(exc, flight.FlightUnauthorizedError) or (
                    rpc == "get_schema" and "Unauthorized:" in str(exc))
                if needed in perms:
                    assert not refused, (rpc, str(exc))  # got past the check (bad ticket etc.)
                else:
                    assert refused, (rpc, str(exc))
                    assert "Unauthorized:" in str(exc) and needed.name in str(exc)
            else:
                assert needed in perms, rpc
    finally:
        client.close()


def test_delete_policy_with_write_only_key_leaves_sequence_and_open_session(srv, admin):
    client = sdk(srv, mint(srv, W))
    name = f"seq_delete_policy_{int(time.time() * 1000)}"
    try:
        with pytest.raises(Exception, match="(?i)unauthorized"):
            with client.sequence_create(name, metadata={"k": "v"},
                                        on_error=SessionLevelErrorPolicy.Delete) as sw:
                tw = sw.topic_create("sensors/temp", metadata={}, ontology_type=Temperature)
                tw.push(Message(timestamp_ns=1, data=Temperature(value=1.0)))
                raise RuntimeError("boom inside the writer")
    finally:
        client.close()
    with srv.runtime.engine.connect() as conn:
        seq = conn.execute(sa.select(sequence_t).where(sequence_t.c.locator_name == name)).first()
        assert seq is not None, "the sequence must survive a refused delete"
        sessions = conn.execute(sa.select(session_t).where(
            session_t.c.sequence_id == seq.sequence_id)).all()
    assert len(sessions) == 1
    assert sessions[0].completion_unix_tstamp is None  # unfinalized
    assert admin.sequence_exists(name)


# --------------------------------------------------------------------------- revocation / expiry


def test_revoked_key_stops_working_at_once(srv, existing):
    key = mint(srv, R | W | D)
    client = sdk(srv, key)
    try:
        assert client.sequence_handler(existing) is not None
        client.clear_sequence_handlers_cache()
        keys.revoke_key(srv.runtime.engine, apikey.parse_key(key)[1])
        with pytest.raises(flight.FlightUnauthorizedError) as exc:
            client.sequence_handler(existing)
        assert_refused(exc, "revoked")
    finally:
        client.close()
    with pytest.raises(ConnectionError):
        sdk(srv, key, timeout=1)


def test_expired_key_stops_working_at_once(srv, existing):
    key = mint(srv, R, expires_at=datetime.now(timezone.utc) + timedelta(seconds=2))
    client = sdk(srv, key)
    try:
        assert client.sequence_handler(existing) is not None
        client.clear_sequence_handlers_cache()
        _wait_until_expired(srv, key)
        with pytest.raises(flight.FlightUnauthorizedError) as exc:
            client.sequence_handler(existing)
        assert_refused(exc, "expired")
    finally:
        client.close()
