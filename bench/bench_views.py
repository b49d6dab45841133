#!/usr/bin/env python
"""Read-path cost of returning top-level string/binary columns as view types (mosaicod/views.py).

One command, this machine, no server or database:

    python bench/bench_views.py            # ~256 MiB of Arrow data per topic kind
    python bench/bench_views.py --quick    # ~32 MiB (smoke test, seconds)

For three topic kinds — IMU-like (no string/binary column: batches pass through), String-like
(short strings, many rows) and CompressedImage-like (~50 KB binary per row plus a short string) —
the topic is written with mosaicod's ChunkWriter into a local store, then read back the way DoGet
reads it (``read_topic`` with the DoGet batch size), each batch serialized as an Arrow IPC stream
message (what goes on the wire), once as stored types and once through ``view_batches``; also a
10%-window read (slices: the compaction path).  Best of 7 interleaved rounds each.  MB/s = 10^6 bytes of Arrow
data (RecordBatch.nbytes as stored) per second.  Target: views cost at most 10% of read throughput.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mosaicod.store.chunks import ChunkWriter  # noqa: E402
from mosaicod.store.reader import read_topic  # noqa: E402
from mosaicod.store.objstore import ObjectStore  # noqa: E402
from mosaicod.views import view_batches, view_schema  # noqa: E402

MiB = 1024 * 1024
TARGET_OVERHEAD = 0.10
ROUNDS = 7


def imu_batch(start: int, n: int) -> pa.RecordBatch:
    rng = np.random.default_rng(start)
    cols = {"timestamp_ns": pa.array(np.arange(start, start + n, dtype=np.int64))}
    for name in ("ax", "ay", "az", "gx", "gy", "gz", "qx", "qy", "qz", "qw"):
        cols[name] = pa.array(rng.standard_normal(n))
    return pa.record_batch(cols)


def string_batch(start: int, n: int) -> pa.RecordBatch:
    ts = np.arange(start, start + n, dtype=np.int64)
    return pa.record_batch({"timestamp_ns": pa.array(ts),
                            "data": pa.array([f"log line {t} state=ok" for t in ts.tolist()])})


def image_batch(start: int, n: int) -> pa.RecordBatch:
    rng = np.random.default_rng(start)
    payload = rng.integers(0, 256, size=50_000, dtype=np.uint8).tobytes()
    return pa.record_batch({"timestamp_ns": pa.array(np.arange(start, start + n, dtype=np.int64)),
                            "data": pa.array([payload] * n, pa.binary()),
                            "format": pa.array(["jpeg"] * n)})


KINDS = {"imu (no strings)": (imu_batch, 20_000), "string (short)": (string_batch, 20_000),
         "compressed image": (image_batch, 50)}


def write_topic(store: ObjectStore, folder: str, make, rows_per_batch: int, total_bytes: int):
    first = make(0, rows_per_batch)
    writer = ChunkWriter(store, folder, first.schema, "default", max_chunk_size=64 * MiB,
                         row_group_bytes=8 * MiB)
    written, start, batch = 0, 0, first
    while written < total_bytes:
        writer.write(batch)
        written += batch.nbytes
        start += rows_per_batch
        batch = make(start, rows_per_batch)
    chunks = writer.close()
    return first.schema, [c.data_file for c in chunks], written, start


def drain(batches, schema) -> int:
    """Serialize every batch as an IPC message (the DoGet wire work); returns bytes produced."""
    sink = pa.MockOutputStream()
    with pa.ipc.new_stream(sink, schema) as w:
        for b in batches:
            w.write_batch(b)
    return sink.size()


def best_of(n: int, *fns) -> list[tuple[float, int]]:
    """Best wall time (and result) of each function over ``n`` interleaved rounds (so that load
    from other processes hits both sides alike)."""
    best = [(float("inf"), 0)] * len(fns)
    for _ in range(n):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            out = fn()
            best[i] = min(best[i], (time.perf_counter() - t0, out))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~32 MiB per topic kind")
    args = ap.parse_args()
    size = (32 if args.quick else 256) * MiB
    tmp = Path(tempfile.mkdtemp(prefix="mosaicod-bench-views-"))
    rows_out = []
    worst = 0.0
    try:
        store = ObjectStore.local(str(tmp))
        for kind, (make, rows_per_batch) in KINDS.items():
            schema, files, nbytes, n_rows = write_topic(store, kind.split()[0], make, rows_per_batch, size)
            batch_rows = max(1, min(8192, (26 * MiB) // max(1, nbytes // n_rows)))
            vschema = view_schema(schema)
            w_lo, w_hi = n_rows // 2, n_rows // 2 + n_rows // 10
            cases = {
                "whole": (None, None, nbytes),
                "10% window": (w_lo, w_hi, nbytes * (w_hi - w_lo) // n_rows),
            }
            for case, (lo, hi, data_bytes) in cases.items():
                (t_plain, wire_plain), (t_view, wire_view) = best_of(
                    ROUNDS,
                    lambda: drain(read_topic(store, files, schema, lo, hi, batch_rows=batch_rows), schema),
                    lambda: drain(view_batches(read_topic(store, files, schema, lo, hi, batch_rows=batch_rows),
                                               schema), vschema))
                overhead = t_view / t_plain - 1
                worst = max(worst, overhead)
                rows_out.append((kind, case, data_bytes / t_plain / 1e6, data_bytes / t_view / 1e6,
                                 overhead * 100, wire_view / max(1, wire_plain)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"view types on the read path ({'--quick, ' if args.quick else ''}{size // MiB} MiB per topic kind, "
          f"best of {ROUNDS} interleaved rounds)")
    print(f"{'topic':<18} {'read':<11} {'stored MB/s':>12} {'views MB/s':>11} {'cost %':>7} {'wire ratio':>11}")
    for kind, case, plain, view, cost, ratio in rows_out:
        print(f"{kind:<18} {case:<11} {plain:>12.0f} {view:>11.0f} {cost:>7.1f} {ratio:>11.2f}")
    verdict = "PASS" if worst <= TARGET_OVERHEAD else "FAIL"
    print(f"worst cost {worst * 100:.1f}% (target <= {TARGET_OVERHEAD * 100:.0f}%): {verdict}")
    return 0 if worst <= TARGET_OVERHEAD else 1


if __name__ == "__main__":
    raise SystemExit(main())
