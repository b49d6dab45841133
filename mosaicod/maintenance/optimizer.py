"""Store optimizer (docs/operations.md#store-optimizer): compact topics made of many small chunks.

One pass:
1. Enqueue every finalized, not yet optimized topic in ``topic_optimization_t``.
2. Take a lease on one queued topic: ``FOR UPDATE SKIP LOCKED`` picks a row, a session-level
   advisory lock ``(OPTIMIZER_LEASE_CLASS, topic_id)`` held on a dedicated connection for the whole
   rewrite proves the lease holder is alive, and ``start_unix_tstamp`` / ``opt_path_in_store =
   tp_<new ULID>`` are committed before the first write into the new folder (so cleanup never
   touches a rewrite in progress).  A lease whose holder died (its advisory lock is free) is taken
   over at once by the next pass; its half-written folder becomes unreferenced garbage.
3. Rewrite into the new folder: copy ``metadata.json`` and ``schema.arrow``, stream the topic in
   timestamp order through the ingest ChunkWriter (same per-format Parquet settings and column
   statistics) rolling files at ``max_chunk_size``, then write ``_COMMIT.json`` (state
   ``optimized``).
4. ONE transaction switches the catalog: topic row locked and checked (still the same folder),
   ``path_in_store`` = new folder, old ``chunk_t`` rows deleted (stats cascade), new rows + stats
   inserted, ``optimization_end_unix_tstamp`` set, queue row deleted.
5. ``TO_DELETE`` is written into the old folder (cleanup purges it after the retention).

A crash before step 4 commits leaves the catalog pointing at the old, untouched folder; a crash
after it leaves the new folder complete and referenced.  Topics already made of one chunk
no larger than the target, whose rows were found sorted when it was indexed, are only flagged as
optimized.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pyarrow as pa
from sqlalchemy.engine import Engine

from .. import errors, logs, metrics
from ..catalog import optimization
from ..catalog.optimization import Lease
from ..catalog.repo import Catalog
from ..store import layout
from ..store.chunks import ChunkInfo, ChunkWriter, commit_doc_for
from ..store.objstore import ObjectStore
from ..store.reader import read_topic
from ..store.stats import Order
from .faults import crash_point

log = logs.get(__name__)

SCAN_FRACTION = 0.10  # one scan batch ~ 10 % of a target file (upstream)


@dataclass
class OptimizerReport:
    rewritten: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[list[str]] = field(default_factory=list)


def now_ns() -> int:
    return time.time_ns()


def take_lease(engine: Engine) -> Lease | None:
    """Lease a queued topic, its rewrite going to a fresh ``tp_<ULID>`` folder."""
    return optimization.take_lease(engine, layout.new_topic_folder)


def _already_optimal(chunks, max_chunk_size: int) -> bool:
    """One chunk, not too big, whose rows were found sorted when it was indexed."""
    if len(chunks) == 0:
        return True
    return (len(chunks) == 1 and chunks[0]["size_bytes"] <= max_chunk_size
            and chunks[0]["timestamp_order"] == Order.FILE)


class Optimizer:
    def __init__(self, engine: Engine, store: ObjectStore, *, max_chunk_size: int,
                 row_group_bytes: int = 32 * 1024 * 1024):
        self.engine = engine
        self.store = store
        self.catalog = Catalog(engine)
        self.max_chunk_size = max_chunk_size
        # row groups of at most a quarter of a target file, so files end close to the target
        self.row_group_bytes = max(64 * 1024, min(row_group_bytes, max_chunk_size // 4))

    def run_pass(self, stop: threading.Event | None = None) -> OptimizerReport:
        report = OptimizerReport()
        queued = optimization.enqueue(self.engine)
        log.info("store optimizer pass started", newly_queued=queued,
                 max_chunk_size=self.max_chunk_size)
        while not (stop is not None and stop.is_set()):
            lease = take_lease(self.engine)
            if lease is None:
                break
            try:
                self._handle(lease, report)
            finally:
                lease.release()
        for outcome, items in (("rewritten", report.rewritten), ("skipped", report.skipped),
                               ("failed", report.failed)):
            metrics.OPTIMIZER_TOPICS.labels(outcome).inc(len(items))
        metrics.OPTIMIZER_RUNS.labels("failed" if report.failed else "done").inc()
        log.info("store optimizer pass finished", rewritten=len(report.rewritten),
                 skipped=len(report.skipped), failed=len(report.failed))
        return report

    # -- one topic ----------------------------------------------------------------------------
    def _handle(self, lease: Lease, report: OptimizerReport) -> None:
        if lease.previous:
            self._mark(lease.previous)  # left behind by a holder that died mid-rewrite
        topic = optimization.topic_row(self.engine, lease.topic_id)
        if topic is None or topic["path_in_store"] is None:
            optimization.drop(self.engine, lease.topic_id)
            return
        locator = topic["locator_name"]
        started = time.perf_counter()
        try:
            chunks = self.catalog.chunks_of(lease.topic_id)
            if _already_optimal(chunks, self.max_chunk_size):
                self._flag_only(lease, topic)
                report.skipped.append(locator)
                log.info("topic already optimal", topic=locator, chunks=len(chunks))
                return
            new_chunks = self._rewrite(lease, topic, chunks)
            self._switch(lease, topic, new_chunks, sum(c["row_count"] for c in chunks))
            crash_point("optimizer:after_switch")
            self._mark(topic["path_in_store"])
            report.rewritten.append(locator)
            log.info("topic optimized", topic=locator, old_folder=topic["path_in_store"],
                     new_folder=lease.folder, chunks_before=len(chunks), chunks_after=len(new_chunks),
                     duration_s=round(time.perf_counter() - started, 3))
        except Exception as exc:
            msg = errors.first_line(exc)
            report.failed.append([locator, msg])
            log.warning("topic optimization failed; old data kept", topic=locator, error=msg)
            self._mark(lease.folder)
            try:
                optimization.drop(self.engine, lease.topic_id)  # retried next pass
            except Exception:
                pass

    def _flag_only(self, lease: Lease, topic) -> None:
        optimization.flag_optimized(self.engine, lease.topic_id, now_ns())

    def _schema(self, topic) -> tuple[pa.Schema, bytes]:
        raw = topic["arrow_schema"]
        if raw is None:
            raw = self.store.get_bytes(layout.schema_key(topic["path_in_store"]))
        raw = bytes(raw)
        return pa.ipc.read_schema(pa.py_buffer(raw)), raw

    def _batch_rows(self, chunks) -> int:
        avg = max((((c["arrow_size_bytes"] or c["size_bytes"]) / c["row_count"])
                   for c in chunks if c["row_count"]), default=1.0)
        return max(1, min(1 << 20, int(self.max_chunk_size * SCAN_FRACTION / max(avg, 1.0))))

    def _rewrite(self, lease: Lease, topic, chunks) -> list[ChunkInfo]:
        old, new = topic["path_in_store"], lease.folder
        self.store.put_bytes(layout.metadata_key(new), self.store.get_bytes(layout.metadata_key(old)))
        crash_point("optimizer:after_metadata")
        schema, raw_schema = self._schema(topic)
        self.store.put_bytes(layout.schema_key(new), raw_schema)
        writer = ChunkWriter(self.store, new, schema, topic["serialization_format"],
                             max_chunk_size=self.max_chunk_size, row_group_bytes=self.row_group_bytes,
                             on_chunk=lambda info: crash_point("optimizer:after_chunk"))
        try:
            for batch in read_topic(self.store, [(c["data_file"], c["timestamp_order"]) for c in chunks], schema,
                                    batch_rows=self._batch_rows(chunks)):
                writer.write(batch)
            written = writer.close()
        except BaseException:
            writer.abort()
            raise
        self.store.put_json(layout.commit_key(new),
                            commit_doc_for(written, state="optimized", committed_at_ns=now_ns(),
                                           interrupted_at_ns=topic["interrupted_unix_tstamp"]))
        crash_point("optimizer:before_switch")
        return written

    def _switch(self, lease: Lease, topic, new_chunks: list[ChunkInfo], old_rows: int) -> None:
        new_rows = sum(c.row_count for c in new_chunks)
        if new_rows != old_rows:
            raise RuntimeError(f"rewrite produced {new_rows} rows, the topic has {old_rows}; not switched")
        optimization.switch(self.engine, lease, old_folder=topic["path_in_store"],
                            ontology_tag=topic["ontology_tag"], chunks=new_chunks, now_ns=now_ns())

    def _mark(self, folder: str | None) -> None:
        if folder:
            self.store.mark_deleted(folder, best_effort=True)
