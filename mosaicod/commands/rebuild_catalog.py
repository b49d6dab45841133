"""`mosaicod rebuild-catalog`: restore the catalog from the object store
(docs/operations.md#rebuilding-the-catalog)."""

from __future__ import annotations

import argparse
import sys

from .. import logs
from ..catalog.db import CatalogUnavailable, connect
from ..maintenance.rebuild import Options, RebuildRefused, load_sequence_map
from ..maintenance.rebuild import run as rebuild
from ..store.objstore import ObjectStore, StoreUnavailable
from .common import EPILOG, Formatter, add_config_options, fail, settings_from_args

HELP = """\
Rebuild the catalog (PostgreSQL) from the object store alone: the store is the source of truth,
the database an index of it.  Run it after losing or corrupting the catalog; the server then
answers every read and query as before.

Configuration is resolved like `serve` (same --data-dir => same embedded catalog; if its
PostgreSQL directory is gone a fresh one is created).  Every sq_/tp_ folder is scanned; folders
marked TO_DELETE stay deleted; uploads that never committed are restored as *Uploading* and
reported; every Parquet file is streamed once to recompute chunk rows and column statistics.

modes:
  --dry-run       scan, compare with the current catalog, report the differences; write nothing
  --mode replace  (default) empty the derived tables (sequences, sessions, topics, chunks, columns,
                  statistics, optimizer queue) and load them from the store
  --mode merge    keep existing rows, insert what is missing, report conflicting rows

never touched: API keys, notifications (kept and re-attached by locator in replace mode), the
cleanup log and the instance registry.  Not restorable: those DB-only tables after a total loss
(API keys must then be re-issued), topics created but never uploaded; on stores written by
upstream mosaicod 0.7 also exact UUIDs, exact sequence/session timestamps (ms precision), user
metadata of sequences the heuristic cannot attribute, sequences without topics, and resources
deleted before cleanup marked them TO_DELETE.

Refuses to run while a server, cleanup or store-optimizer instance heartbeats on this catalog
(unless --force) and holds an advisory lock, so two rebuilds never overlap.  Idempotent: running
it twice gives the same catalog.  Exit status: 0 done (problems are reported), 1 problems found
with --strict (or a refusal/failure), 2 configuration error.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rebuild-catalog", help="rebuild the catalog from the object store", description=HELP,
                       formatter_class=Formatter, epilog=EPILOG)
    p.add_argument("--dry-run", action="store_true", help="report differences with the catalog; write nothing")
    p.add_argument("--mode", choices=("replace", "merge"), default="replace",
                   help="replace: reload the derived tables from scratch; merge: insert only what is missing")
    p.add_argument("--force", action="store_true",
                   help="run even if a server/cleanup/optimizer instance is alive on this catalog")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when anything was skipped (corrupt files, unreadable or foreign folders, ...)")
    p.add_argument("--report-json", metavar="PATH", help="also write the final report as JSON ('-' = stdout)")
    p.add_argument("--sequence-map", metavar="FILE",
                   help='JSON {"sq_<ULID>": "sequence_name"} overriding the folder attribution heuristic '
                        "for upstream (anonymous) sequence folders")
    p.add_argument("--skip-anonymous", action="store_true",
                   help="do not guess anonymous sequence folders: their sequences get NULL user metadata")
    p.add_argument("--mark-orphans", action="store_true",
                   help="write TO_DELETE into live folders that lost (duplicates, deleted parents)")
    p.add_argument("--jobs", type=int, default=0, help="parallel Parquet decoders (0 = number of CPUs)")
    p.add_argument("--executor", choices=("thread", "process"), default="thread",
                   help="decode in threads (pyarrow releases the GIL) or in processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    log = logs.get("mosaicod.rebuild_catalog")
    try:
        smap = load_sequence_map(args.sequence_map) if args.sequence_map else {}
    except (OSError, ValueError) as exc:
        return fail(f"--sequence-map {args.sequence_map}: {exc}", 2)
    opts = Options(mode=args.mode, dry_run=args.dry_run, force=args.force, jobs=args.jobs, executor=args.executor,
                   sequence_map=smap, skip_anonymous=args.skip_anonymous, mark_orphans=args.mark_orphans,
                   progress=not args.no_progress and sys.stderr.isatty(),
                   heartbeat_interval=settings.heartbeat_interval)
    try:
        store = ObjectStore.from_settings(settings)
        engine = connect(settings, pool_size=2)
    except (CatalogUnavailable, StoreUnavailable) as exc:
        return fail(str(exc))
    try:
        report = rebuild(store, engine, opts)
    except RebuildRefused as exc:
        return fail(str(exc))
    finally:
        engine.dispose()
    print(report.summary())
    if args.report_json:
        text = report.to_json()
        if args.report_json == "-":
            print(text)
        else:
            with open(args.report_json, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
    log.debug("report", problems=len(report.problems), differences=len(report.differences))
    if args.strict and (report.problems or report.folders.get("orphaned")
                        or report.folders.get("unattributed_sequences")):
        return 1
    return 0
