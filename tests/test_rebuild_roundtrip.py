"""rebuild-catalog end to end: a store written by the real mosaicolabs 0.7.0 client through our
server, every read/query answer recorded, the database dropped, the catalog rebuilt from the store
alone, a new server started on the same store: every answer must be identical.  Local store via
the CLI, S3 (moto) via the library entry point.  The local test also covers --dry-run diffs,
merge repairs and idempotence on the live catalog."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.flight as flight
import pytest
import sqlalchemy as sa

from mosaicod import registry
from mosaicod.catalog import db as catalog_db
from mosaicod.maintenance.rebuild import REBUILD_LOCK_KEY, Options, RebuildRefused, run
from mosaicod.store.objstore import ObjectStore

from .conftest import connect, create_database, drop_database

QUERIES = [
    {"sequence": {"name": {"$match": "drive*"}}},
    {"sequence": {"user_metadata": {"driver.name": {"$eq": "ada"}}}},
    {"sequence": {"user_metadata": {"run": {"$geq": 2}}}},
    {"topic": {"ontology_tag": {"$eq": "IMU"}}},
    {"topic": {"user_metadata": {"vendor": {"$eq": "acme"}}}},
    {"topic": {"serialization_format": {"$eq": "default"}}},
    {"ontology": {"IMU.acceleration.x": {"$gt": 40.0}}},
    {"ontology": {"IMU.acceleration.x": {"$between": [10.0, 12.5]}}},
    {"ontology": {"IMU.timestamp_ns": {"$lt": 1_700_000_000_000_000_150}}},
    {"ontology": {"IMU.header.frame_id": {"$eq": "imu_link"}}},
    {"ontology": {"String.data": {"$match": "event-1"}}},
    {"ontology": {"String.data": {"$gt": "event-5"}}},
    {"sequence": {"name": {"$match": "drive*"}}, "ontology": {"IMU.angular_velocity.z": {"$leq": 0.5}}},
]
T0 = 1_700_000_000_000_000_000


def _push_imu(writer, n: int, offset: int = 0, frame: str = "imu_link") -> None:
    from mosaicolabs import IMU, Header, Message, Time, Vector3d

    for i in range(n):
        ts = T0 + (offset + i) * 1_000_000
        writer.push(Message(timestamp_ns=ts, data=IMU(
            header=Header(timestamp=Time.from_nanoseconds(ts), frame_id=frame, sample_counter=i),
            acceleration=Vector3d(x=float(offset + i) / 4, y=-1.0, z=9.81),
            angular_velocity=Vector3d(x=0.0, y=0.1, z=float(i % 7) / 7))))


def _push_strings(writer, n: int) -> None:
    from mosaicolabs import Message, String

    for i in range(n):
        writer.push(Message(timestamp_ns=T0 + i * 5_000_000, data=String(data=f"event-{i}")))


def _action(fc: flight.FlightClient, name: str, body: dict) -> list:
    return [json.loads(r.body.to_pybytes() or b"null") for r in fc.do_action(flight.Action(name, json.dumps(body).encode()))]


def write_store(srv) -> dict:
    """Several sequences, updates with several sessions, deleted topics/sessions/sequences, an
    unfinalized (reported) session with notifications.  Returns the names involved."""
    from mosaicolabs import IMU, SessionLevelErrorPolicy, String

    client = connect(srv)
    try:
        with client.sequence_create("drive_a", {"driver": {"name": "ada"}, "run": 1}) as w:
            _push_imu(w.topic_create("sensors/imu", {"vendor": "acme"}, IMU), 300)
            _push_strings(w.topic_create("events", {}, String), 40)
        with client.sequence_update("drive_a") as u:
            _push_imu(u.topic_create("sensors/imu_late", {"vendor": "other"}, IMU), 120, offset=1000)
        with client.sequence_update("drive_a") as u:
            _push_imu(u.topic_create("sensors/imu_third", {}, IMU), 10, offset=5000, frame="base")
        with client.sequence_create("drive_b", {"driver": {"name": "bob"}, "run": 2}) as w:
            _push_imu(w.topic_create("imu", {"vendor": "acme"}, IMU), 200, offset=50)
        with client.sequence_create("gone", {"x": 1}) as w:
            _push_imu(w.topic_create("imu", {}, IMU), 20)
        client.sequence_delete("gone")
        with pytest.raises(RuntimeError):
            with client.sequence_create("broken", {"run": 3}, on_error=SessionLevelErrorPolicy.Report) as w:
                _push_imu(w.topic_create("imu", {}, IMU), 30)
                _push_strings(w.topic_create("doomed", {}, String), 5)
                w.topic_create("never_uploaded", {}, String)
                raise RuntimeError("simulated crash of the recorder")
    finally:
        client.close()
    fc = flight.FlightClient(srv.location)
    try:
        _action(fc, "topic_delete", {"locator": "broken/doomed"})
        # a session opened on drive_b and deleted again (SDK abort path)
        sess = _action(fc, "session_create", {"locator": "drive_b"})[0]
        _action(fc, "session_delete", {"locator": sess["response"]["locator"]
                                       if "response" in sess else sess["locator"]})
    finally:
        fc.close()
    return {"sequences": ["drive_a", "drive_b", "broken", "gone", "nothing"],
            "topics": ["drive_a/sensors/imu", "drive_a/events", "drive_a/sensors/imu_late",
                       "drive_a/sensors/imu_third", "drive_b/imu", "broken/imu", "broken/doomed",
                       "broken/never_uploaded", "gone/imu"]}


def record(srv, names: dict) -> dict:
    """Every get_flight_info / do_get / query answer, as plain data."""
    out: dict = {}
    fc = flight.FlightClient(srv.location)
    try:
        out["list"] = sorted(f.descriptor.path[0].decode() if f.descriptor.path else repr(f.descriptor.command)
                             for f in fc.list_flights())
        for seq in names["sequences"]:
            out[f"info:{seq}"] = info = _info(fc, {"resource_locator": seq})
            if isinstance(info, dict):
                for i, ep in enumerate(info["endpoints"]):
                    out[f"get:{seq}:{i}"] = _get(fc, ep["ticket_raw"])
        for loc in names["topics"]:
            for window in ({}, {"timestamp_ns_start": T0 + 100_000_000}, {"timestamp_ns_start": T0 + 20_000_000,
                                                                          "timestamp_ns_end": T0 + 1_050_000_000}):
                info = _info(fc, {"resource_locator": loc, **window})
                out[f"info:{loc}:{sorted(window.items())}"] = info
                if isinstance(info, dict):
                    for i, ep in enumerate(info["endpoints"]):
                        out[f"get:{loc}:{sorted(window.items())}:{i}"] = _get(fc, ep["ticket_raw"])
        for i, q in enumerate(QUERIES):
            try:
                out[f"query:{i}"] = _action(fc, "query", q)
            except flight.FlightError as exc:
                out[f"query:{i}"] = f"error: {exc}"
    finally:
        fc.close()
    for v in out.values():
        if isinstance(v, dict):
            for ep in v.get("endpoints", []):
                ep.pop("ticket_raw", None)
    return out


def _info(fc, cmd: dict):
    try:
        info = fc.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(cmd).encode()))
    except (flight.FlightError, Exception) as exc:  # noqa: BLE001 - errors are answers too
        return f"error: {type(exc).__name__}: {exc}"
    return {"schema": info.schema.to_string(show_schema_metadata=True) if info.schema else None,
            "app_metadata": info.app_metadata.decode() if info.app_metadata else "",
            "records": info.total_records, "bytes": info.total_bytes,
            "endpoints": [{"ticket": e.ticket.ticket.decode(errors="replace"), "ticket_raw": e.ticket,
                           "app_metadata": e.app_metadata.decode() if e.app_metadata else ""}
                          for e in info.endpoints]}


def _get(fc, ticket):
    try:
        reader = fc.do_get(ticket)
        batches = [chunk.data for chunk in reader]
    except Exception as exc:  # noqa: BLE001
        return f"error: {type(exc).__name__}: {exc}"
    return {"schema": reader.schema.to_string(show_schema_metadata=True),
            "batches": [b.num_rows for b in batches],
            "rows": [b.to_pylist() for b in batches]}


def assert_meaningful(before: dict) -> None:
    """The recorded answers are real answers (a comparison of errors with errors proves nothing)."""
    assert isinstance(before["info:drive_a"], dict)
    assert sorted(i["sequence"] for i in before["query:0"][0]["response"]["items"]) == ["drive_a", "drive_b"]
    failed_reads = [k for k, v in before.items() if k.startswith("get:drive_") and isinstance(v, str)]
    assert not failed_reads, failed_reads


def _settings_for(make_settings, srv_settings, db: str):
    extra = {k: srv_settings.values[k] for k in ("store_endpoint", "store_bucket", "store_access_key",
                                                  "store_secret_key", "data_dir")}
    return make_settings(db=db, **extra)


def _cli(db_url: str, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAICOD_")}
    env.update(MOSAICOD_DB_URL=db_url, MOSAICOD_LOG_LEVEL="warning")
    p = subprocess.run([sys.executable, "-m", "mosaicod", "rebuild-catalog", *args], env=env,
                       capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout + p.stderr


def test_rebuild_roundtrip_local_with_dry_run_and_merge(make_settings, start_server, pg_admin_url, tmp_path):
    settings = make_settings()
    srv = start_server(settings)
    names = write_store(srv)
    before = record(srv, names)
    assert isinstance(before["info:drive_a"], dict) and before["query:0"]
    assert_meaningful(before)
    engine = catalog_db.connect(settings, pool_size=2)
    store = ObjectStore.from_settings(settings)
    try:
        # dry-run on the healthy, live catalog: no difference (dry-run needs no --force)
        rep = run(store, engine, Options(dry_run=True, progress=False))
        assert rep.differences == [], rep.differences
        assert "broken/never_uploaded" not in json.dumps(rep.differences)
        # damage the catalog: delete a topic's chunk, corrupt a statistic, drop a session row
        with engine.begin() as c:
            chunk = c.execute(sa.text("SELECT data_file FROM chunk_t JOIN topic_t USING (topic_id) "
                                      "WHERE topic_t.locator_name = 'drive_b/imu' ORDER BY chunk_id LIMIT 1")).scalar_one()
            c.execute(sa.text("DELETE FROM chunk_t WHERE data_file = :f"), {"f": chunk})
            c.execute(sa.text("UPDATE column_chunk_numeric_t SET max_value = 1e9 WHERE column_id = (SELECT column_id "
                              "FROM column_t WHERE column_name = 'acceleration.x' AND ontology_tag = 'IMU') AND "
                              "chunk_id = (SELECT min(chunk_id) FROM chunk_t JOIN topic_t USING (topic_id) WHERE "
                              "topic_t.locator_name = 'drive_a/sensors/imu')"))
        rep = run(store, engine, Options(dry_run=True, progress=False))
        changes = {(d["table"], d["change"]) for d in rep.differences}
        assert ("chunk_t", "missing_in_catalog") in changes
        stats_diff = [d for d in rep.differences if d["table"] == "column_chunk_numeric_t" and d["change"] == "different"]
        assert len(stats_diff) == 1 and set(stats_diff[0]["fields"]) == {"max_value"}
        assert stats_diff[0]["fields"]["max_value"]["catalog"] == 1e9
        assert all(d["key"].startswith(chunk) for d in rep.differences if d["change"] == "missing_in_catalog")
        assert {d["change"] for d in rep.differences} == {"missing_in_catalog", "different"}
        # merge restores the missing rows, reports the corrupted one as a conflict (left alone)
        rep = run(store, engine, Options(mode="merge", force=True, progress=False))
        assert [c["table"] for c in rep.conflicts] == ["column_chunk_numeric_t"]
        rep = run(store, engine, Options(dry_run=True, progress=False))
        assert len(rep.differences) == 1
        # replace on the live catalog repairs it and keeps notifications and API keys untouched
        kept = ("SELECT (SELECT count(*) FROM sequence_notification_t), (SELECT count(*) FROM topic_notification_t), "
                "(SELECT count(*) FROM api_key_t)")
        with engine.begin() as c:
            c.execute(sa.text("INSERT INTO api_key_t VALUES ('abcdefgh', '\\x00', 1, 'bench', 0, NULL, NULL)"))
            counts = tuple(c.execute(sa.text(kept)).one())
        assert counts[0] + counts[1] > 0 and counts[2] == 1
        rep = run(store, engine, Options(force=True, progress=False))
        assert rep.notifications_dropped == []
        with engine.connect() as c:
            assert tuple(c.execute(sa.text(kept)).one()) == counts
        assert run(store, engine, Options(dry_run=True, progress=False)).differences == []
        # refusal while a server heartbeats on this catalog, or while another rebuild holds the lock
        with registry.Instance(engine, "server"):
            with pytest.raises(RebuildRefused, match="uses this catalog"):
                run(store, engine, Options(progress=False))
        with engine.connect() as other:
            other.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": REBUILD_LOCK_KEY})
            with pytest.raises(RebuildRefused, match="another rebuild"):
                run(store, engine, Options(dry_run=True, progress=False))
            other.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": REBUILD_LOCK_KEY})
    finally:
        engine.dispose()
    srv.stop()

    # total loss: drop the database, rebuild through the CLI into a brand-new one
    drop_database(pg_admin_url, settings.db_url)
    new_db = create_database(pg_admin_url)
    report_path = tmp_path / "report.json"
    code, out = _cli(new_db, "--data-dir", settings.values["data_dir"], "--report-json", str(report_path))
    assert code == 0, out
    report = json.loads(report_path.read_text())
    assert report["counts"]["sequence_t"] == 3  # drive_a, drive_b, broken
    assert report["counts"]["topic_t"] == 7, out  # incl. topics of the crashed session (no rows)
    assert len(report["folders"]["pending_purge"]) >= 3  # gone (sq_ + tp_), broken/doomed
    assert "API keys" in out and "never touched" in out
    # idempotent: a second replace yields the same catalog
    code, out = _cli(new_db, "--data-dir", settings.values["data_dir"], "--dry-run", "--report-json", str(report_path))
    assert code == 0 and json.loads(report_path.read_text())["differences"] == []

    srv2 = start_server(make_settings(db=new_db, data_dir=settings.values["data_dir"]))
    after = record(srv2, names)
    assert after.keys() == before.keys()
    for k in before:
        assert after[k] == before[k], k


@pytest.mark.s3
def test_rebuild_roundtrip_s3(make_settings, start_server, pg_admin_url, s3_settings):
    settings = make_settings(**s3_settings)
    srv = start_server(settings)
    names = write_store(srv)
    before = record(srv, names)
    assert_meaningful(before)
    if os.environ.get("PEEK"):
        for k, v in before.items():
            print(k, "->", repr(v)[:160])
    srv.stop()
    drop_database(pg_admin_url, settings.db_url)
    new_db = create_database(pg_admin_url)
    settings2 = make_settings(db=new_db, **s3_settings)
    engine = catalog_db.connect(settings2, pool_size=2)
    try:
        rep = run(ObjectStore.from_settings(settings2), engine, Options(progress=False, jobs=2))
    finally:
        engine.dispose()
    assert rep.counts["topic_t"] == 7 and not [p for p in rep.problems if p["kind"] == "corrupt-file"]
    srv2 = start_server(settings2)
    after = record(srv2, names)
    for k in before:
        assert after[k] == before[k], k
    drop_database(pg_admin_url, new_db)
