"""Store garbage collector (docs/operations.md#cleanup): deferred deletion with TO_DELETE markers.

One run:
1. In ONE transaction take the cleanup advisory lock and insert a ``cleanup_log_t`` row, only if
   no run started within the last ``time_interval`` seconds (else: skipped).
2. List the top-level folders of the store, THEN read the folders the catalog references
   (``sequence_t.path_in_store``, ``topic_t.path_in_store``, ``topic_optimization_t.
   opt_path_in_store``, and the folders of pending changes in ``pending_change_t``).  Order
   matters: every writer records a folder in the catalog (as a pending change, at least) before
   it writes the first object, so a folder we listed is either referenced now or garbage.
3. Per folder: with a ``TO_DELETE`` marker older than the retention → delete every object (8 at
   a time, the marker last, so a crash mid-delete leaves a still-marked folder for the next run);
   unreferenced and unmarked → write the marker (or delete at once when retention is 0).
   A marked folder that the catalog references again is never deleted (the marker is removed).
   Per-folder failures are recorded and do not stop the run.
4. Close the log row with the marked / deleted / failed lists.

Markers written eagerly by our server when it deletes a resource are honoured the same way, so
retention counts from the delete.
"""

from __future__ import annotations

import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from .. import errors, logs, metrics
from ..catalog import cleanup_log
from ..store import layout
from ..store.objstore import ObjectStore
from .faults import crash_point

log = logs.get(__name__)

DELETE_CONCURRENCY = 8


@dataclass
class CleanupReport:
    skipped: bool = False
    cleanup_id: int | None = None
    marked: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: list[list[str]] = field(default_factory=list)
    kept: int = 0  # folders referenced, or marked but still within retention


def top_level_folders(store: ObjectStore) -> list[str]:
    """Names of the folders at the store root (bare objects at the root are ignored)."""
    try:
        entries = store.fs.ls(store.root, detail=True, refresh=True)
    except FileNotFoundError:
        return []
    return sorted(e["name"].rstrip("/").rpartition("/")[2] for e in entries
                  if e.get("type") == "directory")


def _mtime(info: dict) -> float:
    """Last-modified time (epoch seconds) of an object from fsspec info (local or S3)."""
    for key in ("LastModified", "last_modified", "mtime", "created"):
        v = info.get(key)
        if v is None:
            continue
        if isinstance(v, dt.datetime):
            return (v if v.tzinfo else v.replace(tzinfo=dt.timezone.utc)).timestamp()
        if isinstance(v, str):
            return dt.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
        return float(v)
    raise ValueError(f"no modification time in object info {sorted(info)}")


def marker_time(store: ObjectStore, folder: str) -> float | None:
    """When the folder was marked TO_DELETE (epoch seconds), or None if it is not marked."""
    try:
        return _mtime(store.info(layout.to_delete_key(folder)))
    except FileNotFoundError:
        return None


def delete_folder(store: ObjectStore, folder: str, pool: ThreadPoolExecutor) -> None:
    """Delete every object of a folder, the TO_DELETE marker last."""
    marker = layout.to_delete_key(folder)
    keys = [k for k, _ in store.walk_files(folder) if k != marker]
    for _ in pool.map(store.delete, keys):
        pass
    crash_point("cleanup:before_marker_delete")
    store.delete(marker)
    store.delete_tree(folder)  # empty directories of a local store (no-op on S3)


def run_once(engine: Engine, store: ObjectStore, *, time_interval: int = 0,
             retention: int = 86400, instance_id: int | None = None) -> CleanupReport:
    now = int(time.time())
    cleanup_id = cleanup_log.begin_run(engine, now, time_interval, instance_id)
    if cleanup_id is None:
        log.info("cleanup skipped: another instance ran within the interval",
                 time_interval=time_interval)
        metrics.CLEANUP_RUNS.labels("skipped").inc()
        return CleanupReport(skipped=True)
    report = CleanupReport(cleanup_id=cleanup_id)
    log.info("cleanup started", cleanup_id=cleanup_id, retention_s=retention)
    try:
        folders = top_level_folders(store)
        refs = cleanup_log.referenced_folders(engine)
        with ThreadPoolExecutor(DELETE_CONCURRENCY, thread_name_prefix="cleanup-delete") as pool:
            for folder in folders:
                try:
                    _one(store, folder, refs, retention, report, pool)
                except Exception as exc:
                    msg = errors.first_line(exc)
                    report.failed.append([folder, msg])
                    log.warning("cleanup failed on folder", folder=folder, error=msg)
        cleanup_log.finish_run(engine, cleanup_id, end=int(time.time()), marked=report.marked,
                               deleted=report.deleted, failed=report.failed)
    except Exception:
        metrics.CLEANUP_RUNS.labels("failed").inc()
        raise
    metrics.CLEANUP_RUNS.labels("done").inc()
    metrics.CLEANUP_FOLDERS.labels("marked").inc(len(report.marked))
    metrics.CLEANUP_FOLDERS.labels("deleted").inc(len(report.deleted))
    metrics.CLEANUP_FOLDERS.labels("failed").inc(len(report.failed))
    log.info("cleanup finished", cleanup_id=cleanup_id, marked=len(report.marked),
             deleted=len(report.deleted), failed=len(report.failed), kept=report.kept)
    return report


def _one(store: ObjectStore, folder: str, refs: set[str], retention: int,
         report: CleanupReport, pool: ThreadPoolExecutor) -> None:
    marked_at = marker_time(store, folder)
    if folder in refs:
        if marked_at is not None:
            # never delete what the catalog references (e.g. a rebuilt catalog): drop the marker
            log.warning("referenced folder carries TO_DELETE; marker removed", folder=folder)
            store.delete(layout.to_delete_key(folder))
        report.kept += 1
        return
    if not layout.FOLDER_RE.match(folder):
        log.warning("unexpected top-level folder (not sq_/tp_); treated as unreferenced",
                    folder=folder)
    if marked_at is None:
        if retention == 0:
            delete_folder(store, folder, pool)
            report.deleted.append(folder)
        else:
            store.mark_deleted(folder)
            report.marked.append(folder)
            crash_point("cleanup:after_mark")
        return
    if marked_at + retention <= time.time():
        delete_folder(store, folder, pool)
        report.deleted.append(folder)
        crash_point("cleanup:after_delete")
    else:
        report.kept += 1
