"""rebuild-catalog on hand-written stores: damage (corrupt/truncated Parquet, missing
metadata.json, unknown folders, interrupted uploads, --strict) and upstream-0.7-shaped stores
(heuristics, --sequence-map)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import sqlalchemy as sa

from mosaicod.catalog import db as catalog_db
from mosaicod.maintenance.rebuild import Options, run
from mosaicod.store import layout
from mosaicod.store.objstore import ObjectStore

from .upstream_store import imu_table, write_sequence_v1, write_topic_v1, write_upstream_store


def _rows(engine, sql: str, **params) -> list:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(sa.text(sql), params)]


def _cli(settings, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAICOD_")}
    env.update(MOSAICOD_DB_URL=settings.db_url, MOSAICOD_LOG_LEVEL="warning")
    p = subprocess.run([sys.executable, "-m", "mosaicod", "rebuild-catalog", "--data-dir",
                        settings.values["data_dir"], *args], env=env, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout + p.stderr


def test_damaged_store_is_reported_and_the_rest_rebuilt(make_settings, tmp_path):
    settings = make_settings()
    store = ObjectStore.from_settings(settings)
    sq, [(sess, su)] = write_sequence_v1(store, "rec")
    write_topic_v1(store, seq="rec", seq_folder=sq, session_locator=sess, session_uuid=su, name="good",
                   tables=[imu_table(40, 1_000), imu_table(30, 100_000)])
    corrupt = write_topic_v1(store, seq="rec", seq_folder=sq, session_locator=sess, session_uuid=su, name="bad",
                             tables=[imu_table(20, 5_000), imu_table(20, 50_000)])
    data = store.get_bytes(layout.data_key(corrupt, 1))
    store.put_bytes(layout.data_key(corrupt, 1), data[: len(data) // 2])  # truncated
    store.put_bytes(layout.data_key(corrupt, 0), b"PAR1garbage-not-parquetPAR1")  # corrupt
    nometa = write_topic_v1(store, seq="rec", seq_folder=sq, session_locator=sess, session_uuid=su, name="nometa",
                            tables=[imu_table(5, 0)])
    store.delete(layout.metadata_key(nometa))
    write_topic_v1(store, seq="rec", seq_folder=sq, session_locator=sess, session_uuid=su,
                   name="interrupted", tables=[imu_table(7, 0)], committed=False)
    store.put_bytes("lost+found/whatever.txt", b"x")  # unknown folder
    store.put_bytes("README", b"x")  # unknown root object
    deleted = write_topic_v1(store, seq="rec", seq_folder=sq, session_locator=sess, session_uuid=su, name="deleted",
                             tables=[imu_table(5, 0)])
    store.put_bytes(layout.to_delete_key(deleted), b"")

    code, out = _cli(settings, "--report-json", str(tmp_path / "r.json"))
    assert code == 0, out
    rep = json.loads((tmp_path / "r.json").read_text())
    kinds = {(p["kind"], p["where"]) for p in rep["problems"]}
    assert ("corrupt-file", layout.data_key(corrupt, 0)) in kinds
    assert ("corrupt-file", layout.data_key(corrupt, 1)) in kinds
    assert ("missing-metadata", nometa) in kinds
    assert ("foreign", "lost+found") in kinds and ("foreign", "README") in kinds
    assert rep["folders"]["pending_purge"] == [deleted]
    assert rep["uploading_topics"] == ["rec/interrupted"]
    engine = catalog_db.connect(settings, pool_size=1)
    try:
        topics = dict(_rows(engine, "SELECT locator_name, completion_unix_tstamp IS NOT NULL FROM topic_t"))
        assert topics == {"rec/good": True, "rec/bad": True, "rec/interrupted": False}
        chunks = _rows(engine, "SELECT t.locator_name, c.row_count, c.start_timestamp_ns, c.end_timestamp_ns "
                               "FROM chunk_t c JOIN topic_t t USING (topic_id) ORDER BY c.data_file")
        assert sorted(chunks) == sorted([("rec/good", 40, 1_000, 40_000), ("rec/good", 30, 100_000, 129_000),
                                         ("rec/interrupted", 7, 0, 6_000)])
        rng = _rows(engine, "SELECT start_index_timestamp, end_index_timestamp FROM topic_t "
                            "WHERE locator_name = 'rec/good'")
        assert rng == [(1_000, 129_000)]
        (sess_row,) = _rows(engine, "SELECT locator_name, session_uuid::text FROM session_t")
        assert sess_row == (sess, su)
    finally:
        engine.dispose()
    # --strict turns the reported problems into a failure; a clean store passes --strict
    code, out = _cli(settings, "--strict", "--dry-run")
    assert code == 1, out


def test_clean_store_passes_strict_and_rebuild_is_idempotent(make_settings):
    settings = make_settings()
    store = ObjectStore.from_settings(settings)
    sq, sessions = write_sequence_v1(store, "solo", sessions=2)
    write_topic_v1(store, seq="solo", seq_folder=sq, session_locator=sessions[0][0], session_uuid=sessions[0][1],
                   name="a/b", tables=[imu_table(10, 0)])
    write_sequence_v1(store, "empty_sequence")
    code, out = _cli(settings, "--strict")
    assert code == 0, out
    engine = catalog_db.connect(settings, pool_size=1)
    try:
        snap = _rows(engine, "SELECT * FROM sequence_t ORDER BY 1") + _rows(engine, "SELECT * FROM chunk_t ORDER BY 1")
        assert sorted(r[2] for r in _rows(engine, "SELECT * FROM sequence_t")) == ["empty_sequence", "solo"]
        assert len(_rows(engine, "SELECT * FROM session_t")) == 3
        rep = run(store, engine, Options(progress=False))  # second replace
        assert rep.counts["sequence_t"] == 2
        again = _rows(engine, "SELECT * FROM sequence_t ORDER BY 1") + _rows(engine, "SELECT * FROM chunk_t ORDER BY 1")
        assert again == snap
        rep = run(store, engine, Options(mode="merge", progress=False))  # merge on a complete catalog: no-op
        assert rep.conflicts == [] and rep.differences == []
    finally:
        engine.dispose()


def test_upstream_store_rebuilds_with_reported_heuristics(make_settings, tmp_path):
    settings = make_settings()
    store = ObjectStore.from_settings(settings)
    truth = write_upstream_store(store)
    engine = catalog_db.connect(settings, pool_size=1)
    try:
        rep = run(store, engine, Options(progress=False, executor="process", jobs=2))
        seqs = {r[0]: (r[1], r[2]) for r in _rows(engine, "SELECT locator_name, path_in_store, user_metadata "
                                                          "FROM sequence_t")}
        assert seqs["alpha"] == (truth.sequences["alpha"], {"site": "A"})
        assert seqs["beta"] == (truth.sequences["beta"], {"site": "B", "n": 2})
        assert seqs["gamma"][1] is None  # no folder could be attributed
        assigned = {h["folder"]: h["sequence"] for h in rep.heuristics if h["kind"] == "sequence-folder"}
        assert assigned == {truth.sequences["alpha"]: "alpha", truth.sequences["beta"]: "beta"}
        assert any(h["kind"] == "sequence-without-folder" and h["sequence"] == "gamma" for h in rep.heuristics)
        dup = [h for h in rep.heuristics if h["kind"] == "duplicate-topic-folders"]
        assert dup and dup[0]["chosen"] == truth.topics["alpha/imu"]
        assert sorted(o["folder"] for o in rep.folders["orphaned"]) == sorted(truth.orphaned)
        assert rep.folders["unattributed_sequences"] == [truth.sequences["?"]]
        assert rep.folders["pending_purge"] == truth.dead
        topics = {r[0]: r[1:] for r in _rows(engine, "SELECT t.locator_name, t.path_in_store, sum(c.row_count), "
                                                     "s.completion_unix_tstamp IS NOT NULL FROM topic_t t JOIN "
                                                     "chunk_t c USING (topic_id) JOIN session_t s USING (session_id) "
                                                     "GROUP BY 1, 2, 4")}
        assert {k: (v[0], v[1]) for k, v in topics.items()} == {k: (truth.topics[k], truth.rows[k]) for k in truth.topics}
        assert all(v[2] for v in topics.values())  # sessions derived as completed
        n_stats = _rows(engine, "SELECT count(*) FROM column_chunk_numeric_t")[0][0]
        assert n_stats == 5 * 4  # 5 chunks x (timestamp_ns, acceleration.x/y/z)
        # idempotent even with derived identifiers
        ids = ("SELECT q.sequence_uuid, s.session_uuid, t.topic_uuid, s.locator_name FROM topic_t t JOIN session_t s "
               "ON s.session_id = t.session_id JOIN sequence_t q ON q.sequence_id = t.sequence_id ORDER BY 1, 2, 3")
        snap = _rows(engine, ids)
        run(store, engine, Options(progress=False))
        assert snap == _rows(engine, ids)
        # --sequence-map overrides the guess: swap the two folders
        smap = {truth.sequences["alpha"]: "beta", truth.sequences["beta"]: "alpha"}
        rep = run(store, engine, Options(progress=False, sequence_map=smap))
        seqs = dict(_rows(engine, "SELECT locator_name, path_in_store FROM sequence_t"))
        assert seqs["alpha"] == truth.sequences["beta"] and seqs["beta"] == truth.sequences["alpha"]
        assert {h["rule"] for h in rep.heuristics if h["kind"] == "sequence-folder"} == {"--sequence-map"}
    finally:
        engine.dispose()
