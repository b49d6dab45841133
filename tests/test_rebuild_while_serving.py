"""rebuild-catalog and the processes using the catalog: a rebuild refuses to run while an instance
is alive by the registry's rule (`mosaicod ps`: heartbeat younger than 3 x the configured interval),
and a server that keeps running through a `--force` rebuild still files statistics correctly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from mosaicod import registry
from mosaicod.catalog import db as catalog_db
from mosaicod.catalog.tables import instance_registry_t
from mosaicod.maintenance.rebuild import Options, RebuildRefused, alive_instances, run
from mosaicod.store.objstore import ObjectStore


def _add(engine, kind: str, age: int, pid: int) -> int:
    now = registry.now_secs()
    with engine.begin() as c:
        return c.execute(instance_registry_t.insert().values(
            kind=kind, hostname="elsewhere", pid=pid, started_unix_tstamp_secs=now - age - 5,
            last_heartbeat_unix_tstamp_secs=now - age, one_shot=False, address=None)
            .returning(instance_registry_t.c.instance_id)).scalar_one()


def _cli(settings, interval: int) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAICOD_")}
    env.update(MOSAICOD_DB_URL=settings.db_url, MOSAICOD_LOG_LEVEL="warning",
               MOSAICOD_HEARTBEAT_INTERVAL=str(interval))
    p = subprocess.run([sys.executable, "-m", "mosaicod", "rebuild-catalog", "--no-progress", "--data-dir",
                        settings.values["data_dir"]], env=env, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout + p.stderr


def test_liveness_uses_three_heartbeat_intervals(make_settings):
    settings = make_settings()
    engine = catalog_db.connect(settings, pool_size=2)
    store = ObjectStore.from_settings(settings)
    try:
        young = _add(engine, "server", 45, 4242)  # < 3 x 60 s, > 3 x 10 s
        _add(engine, "cleanup", 3 * 60 + 20, 4343)  # > 3 x 60 s: stale, not alive
        with engine.connect() as c:
            assert [(a["kind"], a["pid"]) for a in alive_instances(c, interval=60)] == [("server", 4242)]
            assert alive_instances(c, interval=registry.DEFAULT_INTERVAL) == []  # 45 s >= 3 x 10 s
            assert alive_instances(c) == []  # default interval
        with pytest.raises(RebuildRefused, match="server pid 4242 on elsewhere") as exc:
            run(store, engine, Options(progress=False, heartbeat_interval=60))
        assert "4343" not in str(exc.value)
        # the CLI takes the interval from the settings (MOSAICOD_HEARTBEAT_INTERVAL)
        code, out = _cli(settings, 60)
        assert code == 1 and "uses this catalog" in out and "pid 4242" in out, out
        code, out = _cli(settings, 10)
        assert code == 0, out
        # without the young row nothing is alive at 60 s either: the rebuild runs
        with engine.begin() as c:
            c.execute(sa.delete(instance_registry_t).where(instance_registry_t.c.instance_id == young))
        with engine.connect() as c:
            assert alive_instances(c, interval=60) == []
        rep = run(store, engine, Options(progress=False, heartbeat_interval=60))
        assert rep.files == 0
    finally:
        engine.dispose()


def _stats_tags(engine, topic: str) -> list[tuple[str, str]]:
    """(topic's ontology tag, ontology tag of the column_t row each statistic is filed under)."""
    from mosaicod.catalog.tables import chunk_t, column_chunk_numeric_t, column_chunk_textual_t, column_t, topic_t

    out = []
    with engine.connect() as c:
        for stats in (column_chunk_numeric_t, column_chunk_textual_t):
            out += c.execute(sa.select(topic_t.c.ontology_tag, column_t.c.ontology_tag)
                             .select_from(stats.join(column_t, stats.c.column_id == column_t.c.column_id)
                                          .join(chunk_t, stats.c.chunk_id == chunk_t.c.chunk_id)
                                          .join(topic_t, chunk_t.c.topic_id == topic_t.c.topic_id))
                             .where(topic_t.c.locator_name == topic)).all()
    return out


def test_server_files_statistics_correctly_after_a_forced_rebuild(make_settings, start_server):
    """`rebuild-catalog --force` truncates column_t with RESTART IDENTITY while a server runs: the
    server must not keep using column ids it learnt before (they now name other columns)."""
    from mosaicolabs import IMU, Header, Message, QueryOntologyCatalog, String, Time, Vector3d

    from tests.conftest import connect

    settings = make_settings()
    srv = start_server(settings)
    client = connect(srv)
    engine = catalog_db.connect(settings, pool_size=2)
    try:
        with client.sequence_create("first", {}) as w:
            t = w.topic_create("events", {}, String)
            for i in range(5):
                t.push(Message(timestamp_ns=i, data=String(data=f"e{i}")))
        with client.sequence_create("second", {}) as w:
            t = w.topic_create("imu", {}, IMU)
            for i in range(5):
                t.push(Message(timestamp_ns=i, data=IMU(
                    header=Header(timestamp=Time.from_nanoseconds(i), frame_id="f", sample_counter=i),
                    acceleration=Vector3d(x=1.0, y=2.0, z=3.0), angular_velocity=Vector3d(x=0, y=0, z=0))))
        client.sequence_delete("first")
        # only "second" comes back: the IMU columns now take the ids the String columns had
        report = run(srv.runtime.store, engine, Options(progress=False, force=True))
        assert report.counts["sequence_t"] == 1
        with client.sequence_create("third", {}) as w:
            t = w.topic_create("events", {}, String)
            for i in range(5):
                t.push(Message(timestamp_ns=i, data=String(data=f"e{i}")))
        tags = _stats_tags(engine, "third/events")
        assert tags and all(topic_tag == column_tag for topic_tag, column_tag in tags), tags
        found = client.query(QueryOntologyCatalog(String.Q.data.eq("e3")))
        assert {it.sequence.name: [t.name for t in it.topics] for it in found} == {"third": ["/events"]}
    finally:
        client.close()
        engine.dispose()
