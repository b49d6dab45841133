#!/usr/bin/env python
"""Image / large-binary topic ingest: server CPU per GB and bytes on disk.

One command, this machine:

    python bench/bench_image.py            # 1 GiB of JPEG-like payloads + 256 MiB of raw images
    python bench/bench_image.py --quick    # 256 MiB + 64 MiB (smoke test)

Starts the real ``mosaicod serve`` (embedded PostgreSQL, local store, free loopback port) and
uploads through a raw ``pyarrow.flight`` client speaking the mosaicod protocol, as the SDK does
(one DoPut per topic, ~16 MiB batches, ``serialization_format = "image"``):

* ``CompressedImage`` rows whose ``data`` are 100 KB of random bytes (JPEG-like: incompressible);
  figure: user+system CPU seconds of the server process from DoPut open to ``session_finalize``
  returned, per GB (10^9 bytes) of payload, best of ``--reps``.  Target: <= 0.5x the same figure
  of the server as it was before issue 14 (``--baseline`` git revision, extracted with
  ``git archive`` and run side by side: uploads alternate between the two servers);
* information: the same CPU figure for the encode + store-write part alone, in the bench's own
  process (256 MiB, the previous rules against ``ChunkWriter``'s, alternating, best of 5): what
  the format rules change, without the transport (gRPC receive and message reassembly), which
  they do not touch;
* ``Image`` rows with raw ``bgr8`` 640x480 frames (a smooth scene with sensor noise:
  compressible); figure: bytes of the topic's Parquet files.  Target: no larger than what the
  baseline server writes for the same rows.

Run it on an otherwise idle machine; CPU seconds are robust to other load, wall time is not.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_core import GiB, MiB, Mosaicod, cpu  # noqa: E402

TS0 = 1_700_000_000_000_000_000
BASELINE_REV = "c5ebffd"  # main before issue 14: zstd level 5 on every image column, page-cache writes


def _header(n: int, start: int) -> pa.StructArray:
    secs = pa.array(np.full(n, 1_700_000_000, dtype=np.int32))
    nanos = pa.array(np.arange(start, start + n, dtype=np.uint32))
    ts = pa.StructArray.from_arrays([secs, nanos], fields=[pa.field("seconds", pa.int32(), nullable=False),
                                                           pa.field("nanoseconds", pa.uint32(), nullable=False)])
    return pa.StructArray.from_arrays(
        [ts, pa.array(["camera"] * n), pa.array(np.arange(start, start + n, dtype=np.uint64))],
        names=["timestamp", "frame_id", "sample_counter"])


def sdk_schema(kind: str) -> pa.Schema:
    from mosaicolabs import CompressedImage, Image
    from mosaicolabs.models.core.message import Message

    return Message._get_schema(CompressedImage if kind == "compressed" else Image)


class Images:
    """Deterministic batches of ~``batch_bytes`` of image rows; payloads cycle over templates."""

    def __init__(self, kind: str, total_bytes: int, batch_bytes: int = 16 * MiB, seed: int = 5):
        self.kind = kind
        self.schema = sdk_schema(kind)
        rng = np.random.default_rng(seed)
        if kind == "compressed":
            self.item = 100_000
            make = lambda: rng.integers(0, 256, self.item, dtype=np.uint8).tobytes()  # noqa: E731
        else:
            h, w = 480, 640
            self.item = h * w * 3
            yy, xx = np.mgrid[0:h, 0:w]

            def make():
                phase = rng.uniform(0, 6.28)
                scene = np.stack([(128 + 100 * np.sin(xx / 60 + phase + c) * np.cos(yy / 45)) for c in range(3)], -1)
                noise = rng.normal(0, 0.7, scene.shape)
                return np.clip(scene + noise, 0, 255).astype(np.uint8).tobytes()
        self.per_batch = max(1, batch_bytes // self.item)
        self.n_batches = max(1, total_bytes // (self.per_batch * self.item))
        self._payloads = [make() for _ in range(min(4 * self.per_batch, 64))]

    @property
    def payload_bytes(self) -> int:
        return self.n_batches * self.per_batch * self.item

    def batches(self):
        n = self.per_batch
        for i in range(self.n_batches):
            start = i * n
            ts = pa.array(TS0 + (start + np.arange(n, dtype=np.int64)) * 33_000_000)
            data = pa.array([self._payloads[(start + k) % len(self._payloads)] for k in range(n)], pa.binary())
            if self.kind == "compressed":
                cols = [ts, _header(n, start), data, pa.array(["jpeg"] * n)]
            else:
                cols = [ts, _header(n, start), data, pa.array(["raw"] * n), pa.array([640] * n, pa.int32()),
                        pa.array([480] * n, pa.int32()), pa.array([640 * 3] * n, pa.int32()),
                        pa.array(["bgr8"] * n), pa.array([False] * n)]
            yield pa.RecordBatch.from_arrays(cols, schema=self.schema)


def upload(srv: Mosaicod, seq: str, data: Images) -> tuple[float, float]:
    """(wall seconds, server CPU seconds) from DoPut open to session_finalize returned."""
    import json

    topic = f"{seq}/camera"
    tag = "compressed_image" if data.kind == "compressed" else "image"
    srv.action("sequence_create", {"locator": seq, "user_metadata": {}})
    session = srv.action("session_create", {"locator": seq})["uuid"]
    tuuid = srv.action("topic_create", {"session_uuid": session, "locator": topic, "serialization_format": "image",
                                        "ontology_tag": tag, "user_metadata": {}})["uuid"]
    cmd = json.dumps({"resource_locator": topic, "topic_uuid": tuuid}).encode()
    c0, t0 = cpu(srv.ps), time.perf_counter()
    w, _ = srv.client.do_put(flight.FlightDescriptor.for_command(cmd), data.schema)
    for b in data.batches():
        w.write_batch(b)
    w.done_writing()
    w.close()
    srv.action("session_finalize", {"session_uuid": session})
    return time.perf_counter() - t0, cpu(srv.ps) - c0


def topic_files(srv: Mosaicod) -> list[Path]:
    store = srv.data_dir / "store"
    return sorted(p for p in store.rglob("*.parquet"))


def write_path_cpu(data: Images, workdir: Path, reps: int = 5) -> dict[str, list[float]]:
    """CPU s/GB of the encode + store-write part alone, in this process: the pre-issue-14 rules
    (zstd level 5 on every image column, page-cache writes) against ChunkWriter's current ones
    (store/formats.py + page-cache release), same 32 MiB row groups, alternating."""
    import resource

    from mosaicod.store.chunks import ChunkWriter
    from mosaicod.store.objstore import ObjectStore

    def cpu_now() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    batches = list(data.batches())
    others = [f.name for f in data.schema if f.name != "timestamp_ns"]
    before = {"version": "2.6", "data_page_version": "2.0", "write_page_index": True, "store_schema": True,
              "compression": {**{n: "zstd" for n in others}, "timestamp_ns": "none"},
              "compression_level": {n: 5 for n in others}, "use_dictionary": False,
              "write_statistics": ["timestamp_ns"]}
    store = ObjectStore.local(str(workdir / "inproc"))
    out: dict[str, list[float]] = {"before": [], "ours": []}
    gb = data.payload_bytes / 1e9
    for r in range(reps):
        c0 = cpu_now()
        path = workdir / "inproc" / "before.parquet"
        with pa.OSFile(str(path), "wb") as sink, pq.ParquetWriter(sink, data.schema, **before) as w:
            buf, size = [], 0
            for b in batches:
                buf.append(b)
                size += b.nbytes
                if size >= 32 * MiB:
                    t = pa.Table.from_batches(buf)
                    w.write_table(t, row_group_size=t.num_rows)
                    buf, size = [], 0
            if buf:
                t = pa.Table.from_batches(buf)
                w.write_table(t, row_group_size=t.num_rows)
        out["before"].append((cpu_now() - c0) / gb)
        path.unlink()
        c0 = cpu_now()
        cw = ChunkWriter(store, f"tp_{r}", data.schema, "image", max_chunk_size=256 * MiB, row_group_bytes=32 * MiB)
        for b in batches:
            cw.write(b)
        cw.close()
        out["ours"].append((cpu_now() - c0) / gb)
        store.delete_tree(f"tp_{r}")
    return out


def checkout(rev: str, into: Path) -> Path:
    """The ``mosaicod`` package of git revision ``rev`` of this repository and its ``migrations``
    (which the package finds next to itself), extracted under ``into``."""
    repo = HERE.parent
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "mosaicod", "migrations"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--reps", type=int, default=4, help="uploads of the binary topic per server (best is reported)")
    ap.add_argument("--baseline", default=BASELINE_REV,
                    help=f"git revision whose server is the reference (default: {BASELINE_REV}, before issue 14)")
    ap.add_argument("--tmp-dir", help="where temp data goes (default: system temp dir)")
    args = ap.parse_args(argv)
    total = 256 * MiB if args.quick else 1 * GiB
    raw_total = 64 * MiB if args.quick else 256 * MiB
    started = time.monotonic()
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    workdir = Path(tempfile.mkdtemp(prefix="mosaicod-bench-image-", dir=args.tmp_dir))
    jpeg, raw = Images("compressed", total), Images("raw", raw_total)
    servers = {}
    runs: dict[str, list[tuple[float, float]]] = {"before": [], "ours": []}
    try:
        servers["before"] = Mosaicod(workdir, "before", code_dir=checkout(args.baseline, workdir / "baseline"))
        servers["ours"] = Mosaicod(workdir, "ours")
        for r in range(args.reps):  # alternating: both see the same machine conditions
            for name, srv in servers.items():
                wall, secs = upload(srv, f"img_{r}", jpeg)
                runs[name].append((secs / (jpeg.payload_bytes / 1e9), wall))
                print(f"  rep {r + 1} {name:6}: {wall:.2f}s wall, {secs:.2f} server CPU s ({runs[name][-1][0]:.2f} s/GB)",
                      flush=True)
                srv.delete_sequence(f"img_{r}")
                srv.purge_deleted()
        upload(servers["ours"], "raw_0", raw)
        ours_size = sum(p.stat().st_size for p in topic_files(servers["ours"]))
        upload(servers["before"], "raw_0", raw)
        before_size = sum(p.stat().st_size for p in topic_files(servers["before"]))
        for srv in servers.values():
            srv.close()
        servers = {}
        inproc = write_path_cpu(Images("compressed", 256 * MiB), workdir)
    finally:
        for srv in servers.values():
            srv.close()
        shutil.rmtree(workdir, ignore_errors=True)

    best = {k: min(c for c, _w in v) for k, v in runs.items()}
    ratio = best["ours"] / best["before"]
    size_ratio = ours_size / before_size
    rows = [
        ("binary ingest, server CPU s/GB (before)", f"{best['before']:.2f}", "1.00x", ""),
        ("binary ingest, server CPU s/GB", f"{best['ours']:.2f}", f"{ratio:.2f}x",
         f"<= 0.50x {'OK' if ratio <= 0.5 else 'MISS'}"),
        ("encode + store write only (before)", f"{min(inproc['before']):.2f}", "1.00x", "(info, in-process)"),
        ("encode + store write only", f"{min(inproc['ours']):.2f}",
         f"{min(inproc['ours']) / min(inproc['before']):.2f}x", "(info, in-process)"),
        ("raw images, bytes on disk (before)", f"{before_size / 1e6:.1f} MB", "1.000x", ""),
        ("raw images, bytes on disk", f"{ours_size / 1e6:.1f} MB", f"{size_ratio:.3f}x",
         f"<= 1.00x {'OK' if ours_size <= before_size else 'MISS'}"),
    ]
    print()
    print(f"image ingest benchmark{' (--quick)' if args.quick else ''} - {time.strftime('%Y-%m-%d %H:%M')}, "
          f"took {time.monotonic() - started:.0f}s; before = {args.baseline}")
    print(f"{jpeg.payload_bytes / GiB:.2f} GiB of 100 KB random payloads (CompressedImage) x{args.reps} per server, "
          f"alternating; {raw.payload_bytes / MiB:.0f} MiB of raw 640x480 bgr8 frames (Image)")
    print(f"{'row':42} {'value':>10} {'vs before':>10}  target")
    print("-" * 80)
    for label, value, vs, verdict in rows:
        print(f"{label:42} {value:>10} {vs:>10}  {verdict}")
    for name, vs in runs.items():
        print(f"all runs {name} (s/GB, wall s): " + "; ".join(f"{c:.2f} {w:.1f}" for c, w in vs))
    for name, vs in inproc.items():
        print(f"in-process encode + store write, {name} (s/GB): " + " ".join(f"{c:.2f}" for c in vs))
    print(f"load average at start: {load0}; at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
