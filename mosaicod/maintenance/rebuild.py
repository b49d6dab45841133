"""`rebuild-catalog`: restore the derived catalog tables from the object store alone
(docs/operations.md#rebuilding-the-catalog).

    scan (listings + JSON) -> plan (rows by locator, heuristics) -> decode every Parquet file in
    parallel, streaming -> per sequence: diff (dry-run), insert all (replace) or insert the
    missing rows (merge), one transaction per sequence.

API keys, notifications, the cleanup log and the instance registry are never touched (in replace
mode notifications are kept and re-attached to their sequence/topic by locator).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from .. import errors, logs, registry
from ..catalog import instances
from ..catalog import rebuild as rows_db
from ..catalog.locks import REBUILD_LOCK_KEY
from ..catalog.rebuild import TABLE_ORDER, Rows
from ..store.objstore import ObjectStore
from . import decode as decoding
from .load import desired_rows, diff
from .plan import build_plan, stable_uuid
from .scan import Problem, scan

log = logs.get(__name__)

WATCHED_KINDS = ("server", "cleanup", "store-optimizer")
NOT_RESTORED = ("API keys, notifications, the cleanup log and the instance registry live only in the "
                "database: they are never touched (in replace mode notifications are kept and re-attached "
                "by locator; after a total loss they are gone and API keys must be re-issued). Topics "
                "created but never uploaded have no folder and cannot be restored.")


class RebuildRefused(Exception):
    """The rebuild must not run now (a live server, another rebuild); message for the operator."""


@dataclass
class Options:
    mode: str = "replace"  # replace | merge
    dry_run: bool = False
    force: bool = False
    jobs: int = 0  # 0 = number of CPUs
    executor: str = "thread"  # thread | process
    sequence_map: dict[str, str] = field(default_factory=dict)
    skip_anonymous: bool = False
    mark_orphans: bool = False
    progress: bool = True
    batch_rows: int = decoding.BATCH_ROWS
    heartbeat_interval: int = registry.DEFAULT_INTERVAL  # settings.heartbeat_interval: liveness as in `ps`


@dataclass
class Report:
    mode: str
    store: str
    counts: dict[str, int] = field(default_factory=dict)
    folders: dict[str, Any] = field(default_factory=dict)
    heuristics: list[dict] = field(default_factory=list)
    uploading_topics: list[str] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)
    differences: list[dict] = field(default_factory=list)
    conflicts: list[dict] = field(default_factory=list)
    notifications_dropped: list[str] = field(default_factory=list)
    files: int = 0
    parquet_bytes: int = 0
    elapsed_s: float = 0.0
    peak_rss_mb: float = 0.0
    not_restored: str = NOT_RESTORED

    @property
    def mb_per_s(self) -> float:
        return self.parquet_bytes / 1e6 / self.elapsed_s if self.elapsed_s else 0.0

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items()}
        d["mb_per_s"] = round(self.mb_per_s, 2)
        d["differences"] = [{**x, "key": str(x["key"])} for x in self.differences]
        d["conflicts"] = [{**x, "key": str(x["key"])} for x in self.conflicts]
        return d

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=str)

    def summary(self) -> str:
        lines = [f"rebuild-catalog ({self.mode}) of {self.store}: {self.files} data files, "
                 f"{self.parquet_bytes / 1e6:.1f} MB in {self.elapsed_s:.1f} s ({self.mb_per_s:.1f} MB/s)"]
        lines.append("  rows: " + ", ".join(f"{t} {n}" for t, n in self.counts.items()))
        f = self.folders
        lines.append(f"  folders: {f.get('sequences', 0)} sequence, {f.get('topics', 0)} topic; "
                     f"{len(f.get('pending_purge', []))} pending purge (TO_DELETE), "
                     f"{len(f.get('foreign', []))} foreign, {len(f.get('orphaned', []))} orphaned, "
                     f"{len(f.get('unattributed_sequences', []))} unattributed sequence folders")
        for title, items in (("heuristics", self.heuristics), ("problems", self.problems)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines += [f"    - {json.dumps(i, default=str)}" for i in items[:50]]
                if len(items) > 50:
                    lines.append(f"    ... {len(items) - 50} more (see --report-json)")
        if self.uploading_topics:
            lines.append(f"  uploads never committed, left Uploading ({len(self.uploading_topics)}): "
                         + ", ".join(self.uploading_topics[:20]))
        if self.mode == "dry-run" or self.differences:
            lines.append(f"  differences catalog vs store: {len(self.differences)}")
            lines += [f"    - {json.dumps(d, default=str)}" for d in self.differences[:50]]
        if self.conflicts:
            lines.append(f"  conflicts (kept the catalog's rows): {len(self.conflicts)}")
            lines += [f"    - {json.dumps(d, default=str)}" for d in self.conflicts[:50]]
        if self.notifications_dropped:
            lines.append(f"  notifications dropped (resource not in the store): {self.notifications_dropped}")
        lines.append("  note: " + self.not_restored)
        return "\n".join(lines)


def alive_instances(conn: sa.Connection, now: int | None = None,
                    interval: int = registry.DEFAULT_INTERVAL) -> list[dict]:
    """Watched instances that `mosaicod ps` shows *alive* (``registry.state_of`` with ``interval``)."""
    now = registry.now_secs() if now is None else now
    return [dict(x) for x in instances.of_kinds(conn, WATCHED_KINDS)
            if registry.state_of(x["last_heartbeat_unix_tstamp_secs"], interval, now) == registry.ALIVE]


def _progress(total_bytes: int, total_files: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                desc="rebuild-catalog", disable=not enabled, dynamic_ncols=True,
                postfix={"files": f"0/{total_files}"})


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run(store: ObjectStore, engine: sa.Engine, opts: Options) -> Report:
    start = time.monotonic()
    report = Report(mode="dry-run" if opts.dry_run else opts.mode, store=store.url)
    with rows_db.exclusive(engine) as lock_conn:
        if lock_conn is None:
            raise RebuildRefused("another rebuild-catalog is running on this catalog (advisory lock held)")
        if not opts.dry_run and not opts.force:
            alive = alive_instances(lock_conn, interval=opts.heartbeat_interval)
            lock_conn.commit()
            if alive:
                who = ", ".join(f"{a['kind']} pid {a['pid']} on {a['hostname']}" for a in alive)
                raise RebuildRefused(f"a mosaicod process uses this catalog ({who}); stop it first "
                                     "or pass --force")
        _run_locked(store, engine, opts, report)
    report.elapsed_s = round(time.monotonic() - start, 3)
    report.peak_rss_mb = round(_peak_rss_mb(), 1)
    return report


def _run_locked(store: ObjectStore, engine: sa.Engine, opts: Options, report: Report) -> None:
    sc = scan(store)
    plan = build_plan(sc, footer_rows=lambda k: decoding.footer_rows(store, k),
                      sequence_map=opts.sequence_map, skip_anonymous=opts.skip_anonymous)
    problems: list[Problem] = list(sc.problems) + list(plan.problems)
    report.heuristics = plan.heuristics
    report.uploading_topics = sorted(plan.uploading)
    report.folders = {"sequences": len(sc.sequences), "topics": len(sc.topics), "pending_purge": sorted(sc.dead),
                      "foreign": sorted(sc.foreign), "orphaned": plan.orphaned,
                      "unattributed_sequences": plan.unattributed}
    if opts.mark_orphans and not opts.dry_run:
        for o in plan.orphaned:
            store.mark_deleted(o["folder"])
    order = sorted(plan.sequences)
    files = [(fp.key, fp.size, opts.batch_rows) for seq in order for t in plan.topics_of(seq) for fp in t.files]
    report.files = len(files)
    report.parquet_bytes = sum(f[1] for f in files)

    saved_notifications: list = []
    if not opts.dry_run and opts.mode == "replace":
        with engine.begin() as conn:
            saved_notifications = rows_db.save_notifications(conn)
            rows_db.truncate_data_tables(conn)
    totals = dict.fromkeys(TABLE_ORDER, 0)
    bar = _progress(report.parquet_bytes, len(files), opts.progress)
    executor, fn = decoding.make_executor(store, opts.executor, opts.jobs)
    jobs = executor._max_workers  # noqa: SLF001 - bounded window = 2 files per worker
    done_files = 0
    try:
        results = decoding.ordered_map(fn, files, executor, window=2 * jobs)
        for seq in order:
            topics = plan.topics_of(seq)
            got: dict[str, decoding.FileResult] = {}
            for _ in range(sum(len(t.files) for t in topics)):
                r = next(results)
                got[r.key] = r
                done_files += 1
                bar.update(r.size)
                bar.set_postfix(files=f"{done_files}/{len(files)}", refresh=False)
                if r.error:
                    what = "unreadable Parquet" if r.error_kind == "corrupt-file" else "rows refused"
                    problems.append(Problem(r.error_kind, r.key, f"{what}, no chunk row: {r.error}"))
            want = desired_rows(plan.sequences[seq], plan.sessions_of(seq), topics, got, problems)
            _apply(engine, opts, want, seq, report, totals)
    finally:
        bar.close()
        executor.shutdown(wait=True, cancel_futures=True)
    if opts.dry_run or opts.mode == "merge":
        with engine.connect() as conn:
            extra = rows_db.other_sequences(conn, order)
        for loc in sorted(extra):
            entry = {"table": "sequence_t", "key": loc, "change": "only_in_catalog"}
            (report.differences if opts.dry_run else report.conflicts).append(entry)
    if saved_notifications:
        with engine.begin() as conn:
            report.notifications_dropped = rows_db.restore_notifications(conn, saved_notifications)
    report.problems = [p.as_dict() for p in problems]
    if opts.dry_run:
        report.counts = totals
    else:
        with engine.connect() as conn:
            report.counts = rows_db.table_counts(conn)
    log.info("rebuild-catalog done", mode=report.mode, files=report.files, problems=len(problems))


def _chunk_uuid(data_file: str) -> str:
    return stable_uuid("chunk", data_file)


def _apply(engine: sa.Engine, opts: Options, want: Rows, seq: str, report: Report,
           totals: dict[str, int]) -> None:
    for t in TABLE_ORDER:
        totals[t] += len(want.tables[t])
    if not opts.dry_run and opts.mode == "replace":
        with engine.begin() as conn:
            rows_db.insert_rows(conn, want, chunk_uuid=_chunk_uuid)
        return
    with engine.connect() as conn:
        have = rows_db.current_rows(conn, [seq])
    changes = diff(want, have)
    if opts.dry_run:
        report.differences.extend(changes)
        return
    missing = {(c["table"], c["key"]) for c in changes if c["change"] == "missing_in_catalog"}
    report.conflicts.extend(c for c in changes if c["change"] != "missing_in_catalog")
    if missing:
        try:
            with engine.begin() as conn:
                rows_db.insert_rows(conn, want, chunk_uuid=_chunk_uuid, only=missing)
            report.differences.extend({**c, "change": "inserted"} for c in changes
                                      if c["change"] == "missing_in_catalog")
        except sa.exc.IntegrityError as exc:
            report.conflicts.append({"table": "sequence_t", "key": seq, "change": "insert-failed",
                                     "error": errors.first_line(exc.orig or exc)})


def load_sequence_map(path: str) -> dict[str, str]:
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    if not isinstance(doc, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items()):
        raise ValueError('--sequence-map must be a JSON object {"sq_<ULID>": "sequence_name", ...}')
    return doc


__all__ = ["Options", "Report", "RebuildRefused", "run", "alive_instances", "load_sequence_map",
           "REBUILD_LOCK_KEY", "NOT_RESTORED"]
