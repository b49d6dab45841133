"""cleanup and store-optimizer: the real CLI as subprocesses against a running server's catalog
and store; crashes injected by SIGKILL (MOSAICOD_TEST_CRASH_AT makes the process kill itself at
a named point), then data must still be served identically and a rerun must finish the job."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from mosaicolabs import MosaicoClient

from mosaicod.catalog import cleanup_log
from mosaicod.maintenance import cleanup
from mosaicod.store import layout
from mosaicod.store.objstore import ObjectStore

from .ops_helpers import base_env, read_topic, run_cli, write_sequence

MiB = 1024 * 1024
TOPICS = {"cam": 5000, "imu": 1500, "tiny": 10}


@pytest.fixture
def srv(make_settings, start_server):
    settings = make_settings(max_chunk_size=MiB, row_group_size=64 * 1024)
    server = start_server(settings)
    write_sequence(server.port, "mseq", TOPICS, payload=1000, seed=7, batch_bytes=200_000)
    return server


def _env(server, **extra) -> dict:
    return base_env(MOSAICOD_DB_URL=server.settings.db_url, MOSAICOD_DATA_DIR=server.settings.data_dir,
                    **extra)


def _snapshot(server) -> dict:
    out = {}
    for t in TOPICS:
        out[t] = read_topic(server.location, f"mseq/{t}")
        out[t + "@window"] = read_topic(server.location, f"mseq/{t}", start=5_000, end=9_000)
    return out


def _assert_same(server, before: dict) -> None:
    after = _snapshot(server)
    for k, tab in before.items():
        assert after[k].equals(tab), k


def _topics(server) -> dict:
    with server.runtime.engine.connect() as c:
        rows = c.execute(sa.text(
            "SELECT t.locator_name, t.path_in_store, t.optimization_end_unix_tstamp, "
            "count(c.chunk_id) AS chunks, array_agg(c.size_bytes ORDER BY c.data_file) AS sizes, "
            "array_agg(c.data_file ORDER BY c.data_file) AS files "
            "FROM topic_t t LEFT JOIN chunk_t c USING (topic_id) GROUP BY t.topic_id")).mappings()
        return {r["locator_name"].rpartition("/")[2]: dict(r) for r in rows}


def _queue(server) -> list:
    with server.runtime.engine.connect() as c:
        return c.execute(sa.text("SELECT topic_id, opt_path_in_store FROM topic_optimization_t")).all()


def _folders(server) -> set[str]:
    return set(cleanup.top_level_folders(server.runtime.store))


def test_store_optimizer_crash_anywhere_then_rerun(srv):
    store: ObjectStore = srv.runtime.store
    before = _snapshot(srv)
    t0 = _topics(srv)
    assert t0["cam"]["chunks"] >= 4 and t0["imu"]["chunks"] >= 2 and t0["tiny"]["chunks"] == 1
    env = _env(srv)
    args = ["store-optimizer", "--max-chunk-size", str(2 * MiB)]

    # a crash before the catalog switch: old folder still served, untouched
    for point in ("optimizer:after_metadata", "optimizer:after_chunk", "optimizer:before_switch"):
        r = run_cli(args, dict(env, MOSAICOD_TEST_CRASH_AT=point))
        assert r.returncode == -9, (point, r.stderr[-2000:])
        assert _topics(srv) == t0, point
        assert not store.exists(layout.to_delete_key(t0["cam"]["path_in_store"]))
        _assert_same(srv, before)
    # the dead run's lease is still there, pointing at its complete but unswitched folder
    half_written = [path for _, path in _queue(srv) if path]
    assert len(half_written) == 1
    half_written = half_written[0]
    assert store.exists(layout.commit_key(half_written))

    # a crash right after the switch: new folder served, old one intact (not yet marked)
    r = run_cli(args, dict(env, MOSAICOD_TEST_CRASH_AT="optimizer:after_switch"))
    assert r.returncode == -9, r.stderr[-2000:]
    t1 = _topics(srv)
    switched = [k for k in TOPICS if t1[k]["path_in_store"] != t0[k]["path_in_store"]]
    assert len(switched) == 1
    assert store.exists(layout.metadata_key(t0[switched[0]]["path_in_store"]))
    _assert_same(srv, before)

    # the rerun takes over dead leases and finishes every topic
    r = run_cli(args, env)
    assert r.returncode == 0, r.stderr[-3000:]
    t2 = _topics(srv)
    assert _queue(srv) == []
    assert all(t2[k]["optimization_end_unix_tstamp"] is not None for k in TOPICS)
    assert t2["tiny"]["path_in_store"] == t0["tiny"]["path_in_store"]  # one small chunk: kept
    cam = t2["cam"]
    assert cam["path_in_store"] != t0["cam"]["path_in_store"]
    assert 2 <= cam["chunks"] < t0["cam"]["chunks"]
    assert all(1.0 * MiB <= s <= 3.0 * MiB for s in cam["sizes"][:-1]), cam["sizes"]
    assert all(f.startswith(cam["path_in_store"] + "/data/") for f in cam["files"])
    assert store.get_json(layout.commit_key(cam["path_in_store"]))["state"] == "optimized"
    assert store.get_bytes(layout.metadata_key(cam["path_in_store"])) == \
        store.get_bytes(layout.metadata_key(t0["cam"]["path_in_store"]))
    _assert_same(srv, before)
    # superseded folders and the dead runs' folders are marked for cleanup
    for k in ("cam", "imu"):
        marked = store.exists(layout.to_delete_key(t0[k]["path_in_store"]))
        # the run killed right after its switch never marked its source: cleanup will
        assert marked == (k != switched[0]), k
    assert store.exists(layout.to_delete_key(half_written))

    # a second pass has nothing to do
    r = run_cli(args, env)
    assert r.returncode == 0 and _topics(srv) == t2

    # cleanup with retention 0 purges every unreferenced folder; data unchanged
    r = run_cli(["cleanup", "--retention-duration", "0"], env)
    assert r.returncode == 0, r.stderr[-2000:]
    referenced = cleanup_log.referenced_folders(srv.runtime.engine)
    assert _folders(srv) == referenced
    _assert_same(srv, before)

    # ontology query through the SDK still answers after the rewrite (stats were rebuilt)
    c = MosaicoClient.connect("127.0.0.1", srv.port)
    try:
        from mosaicolabs import QueryTopic

        res = c.query(QueryTopic().with_name("cam"))
        assert res is not None and [item.sequence.name for item in res] == ["mseq"]
    finally:
        c.close()


def test_optimizer_gives_up_a_topic_deleted_mid_rewrite(srv):
    """The switch re-checks the topic under a row lock: a topic deleted meanwhile is not resurrected."""
    from mosaicod.catalog.optimization import enqueue
    from mosaicod.maintenance.optimizer import Optimizer, take_lease

    opt = Optimizer(srv.runtime.engine, srv.runtime.store, max_chunk_size=2 * MiB)
    enqueue(srv.runtime.engine)
    lease = take_lease(srv.runtime.engine)
    assert lease is not None
    # a second taker skips the leased topic (its holder is alive)
    other = take_lease(srv.runtime.engine)
    assert other is None or other.topic_id != lease.topic_id
    if other is not None:
        other.release()
    with srv.runtime.engine.connect() as c:
        topic = c.execute(sa.text("SELECT * FROM topic_t WHERE topic_id = :t"),
                          {"t": lease.topic_id}).mappings().first()
        chunks = srv.runtime.catalog.chunks_of(lease.topic_id)
    written = opt._rewrite(lease, topic, chunks)
    with srv.runtime.engine.begin() as c:
        c.execute(sa.text("DELETE FROM topic_t WHERE topic_id = :t"), {"t": lease.topic_id})
    with pytest.raises(Exception, match="deleted or changed"):
        opt._switch(lease, topic, written, sum(ch["row_count"] for ch in chunks))
    lease.release()
    with srv.runtime.engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM chunk_t WHERE topic_id = :t"),
                         {"t": lease.topic_id}).scalar_one() == 0


def test_cleanup_deferred_deletion_and_crash(srv):
    store: ObjectStore = srv.runtime.store
    env = _env(srv, MOSAICOD_HEARTBEAT_INTERVAL="1")
    write_sequence(srv.port, "gone", {"x": 20}, seed=3)
    t_before = _topics(srv)
    before = _snapshot(srv)
    gone_folders = {t_before["x"]["path_in_store"]}
    with srv.runtime.engine.connect() as c:
        gone_folders.add(c.execute(sa.text("SELECT path_in_store FROM sequence_t WHERE locator_name = 'gone'"))
                         .scalar_one())
    c = MosaicoClient.connect("127.0.0.1", srv.port)
    try:
        c.sequence_delete("gone")
    finally:
        c.close()
    for f in gone_folders:  # our server marks eagerly on delete
        assert store.exists(layout.to_delete_key(f))
    # an orphan of a crashed upload (never marked), a foreign folder, a bare object at the root
    orphan = layout.new_topic_folder()
    store.put_bytes(f"{orphan}/data/00000.parquet", b"x" * 10)
    store.put_bytes("junk/file.bin", b"y")
    store.put_bytes("README.txt", b"bare object: ignored")

    r = run_cli(["cleanup", "--retention-duration", "3600"], env)
    assert r.returncode == 0, r.stderr[-2000:]
    folders = _folders(srv)
    assert gone_folders <= folders  # still within retention
    assert store.exists(layout.to_delete_key(orphan)) and store.exists(layout.to_delete_key("junk"))
    _assert_same(srv, before)
    with srv.runtime.engine.connect() as conn:
        log_row = conn.execute(sa.text("SELECT * FROM cleanup_log_t ORDER BY cleanup_id DESC LIMIT 1")).mappings().one()
    assert log_row["end_unix_tstamp_secs"] is not None
    assert set(log_row["marked_folders"]) == {orphan, "junk"} and log_row["deleted_folders"] == []

    # crash in the middle of deleting a folder: files gone, marker kept, nothing live touched
    r = run_cli(["cleanup", "--retention-duration", "0"],
                dict(env, MOSAICOD_TEST_CRASH_AT="cleanup:before_marker_delete"))
    assert r.returncode == -9
    _assert_same(srv, before)
    time.sleep(3.2)  # heartbeat interval 1 s: the dead run's instance is stale now
    ps = run_cli(["ps", "-a"], env)
    assert "cleanup: INTERRUPTED" in ps.stdout, ps.stdout
    assert " cleanup " in ps.stdout and " stale " in ps.stdout

    r = run_cli(["cleanup", "--retention-duration", "0"], env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _folders(srv) == cleanup_log.referenced_folders(srv.runtime.engine)
    assert store.exists("README.txt")
    _assert_same(srv, before)
    ps = run_cli(["ps"], env)
    assert "cleanup: IDLE" in ps.stdout, ps.stdout


def test_cleanup_runs_are_coordinated(srv):
    """Advisory lock + log row in one transaction: of concurrent runs within the interval,
    exactly one works; a marked folder that the catalog references again is never deleted."""
    engine, store = srv.runtime.engine, srv.runtime.store
    reports = []
    barrier = threading.Barrier(4)

    def one():
        barrier.wait()
        reports.append(cleanup.run_once(engine, store, time_interval=3600, retention=0))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r.skipped for r in reports) == [False, True, True, True]

    live = _topics(srv)["cam"]["path_in_store"]
    store.put_bytes(layout.to_delete_key(live), b"")  # e.g. a catalog restored from a backup
    rep = cleanup.run_once(engine, store, time_interval=0, retention=0)
    assert live not in rep.deleted and not store.exists(layout.to_delete_key(live))
    assert read_topic(srv.location, "mseq/cam").num_rows == TOPICS["cam"]


@pytest.mark.s3
def test_cleanup_and_optimizer_on_s3(make_settings, start_server, s3_settings):
    settings = make_settings(max_chunk_size=MiB, row_group_size=64 * 1024, **s3_settings)
    server = start_server(settings)
    write_sequence(server.port, "s3seq", {"cam": 2500}, payload=1000, seed=5, batch_bytes=200_000)
    before = read_topic(server.location, "s3seq/cam")
    env = base_env(MOSAICOD_DB_URL=settings.db_url, MOSAICOD_STORE_ENDPOINT=s3_settings["store_endpoint"],
                   MOSAICOD_STORE_BUCKET=s3_settings["store_bucket"], MOSAICOD_STORE_ACCESS_KEY="testing",
                   MOSAICOD_STORE_SECRET_KEY="testing")
    r = run_cli(["store-optimizer", "--max-chunk-size", str(4 * MiB)], env)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli(["cleanup", "--retention-duration", "0"], env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert set(cleanup.top_level_folders(server.runtime.store)) == cleanup_log.referenced_folders(server.runtime.engine)
    assert read_topic(server.location, "s3seq/cam").equals(before)
