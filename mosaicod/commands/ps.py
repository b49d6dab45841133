"""`mosaicod ps`: the mosaicod processes registered on this catalog and the latest cleanup run."""

from __future__ import annotations

import argparse
import datetime as dt

from .. import registry
from ..catalog.db import CatalogUnavailable, connect
from .common import EPILOG, Formatter, add_config_options, fail, settings_from_args

HELP = "list mosaicod instances (servers, cleanup, store optimizer) running on this catalog"
DESCRIPTION = """\
Lists the instances registered in the catalog's instance registry.  Every running `serve`,
`cleanup` and `store-optimizer` process heartbeats every MOSAICOD_HEARTBEAT_INTERVAL seconds
(default 10); an instance is alive while its last heartbeat is younger than 3 intervals, stale up
to 10 intervals, dead after that (killed, crashed or cut off from the catalog).  A cleanly
stopped instance removes itself.  The last line shows the latest cleanup run: no run yet,
RUNNING, INTERRUPTED (its process is gone) or IDLE.

Use the same configuration as the server (--config / --data-dir / MOSAICOD_DB_URL) so that ps
reads the same catalog.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("ps", help=HELP, description=DESCRIPTION, formatter_class=Formatter,
                              epilog=EPILOG)
    p.add_argument("-a", "--all", action="store_true", help="also list dead instances")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="add start and last-heartbeat times")
    add_config_options(p)
    p.set_defaults(func=run)


def _ts(secs: int | None) -> str:
    if secs is None:
        return "-"
    return dt.datetime.fromtimestamp(secs, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ago(secs: int, now: int) -> str:
    age = max(0, now - secs)
    if age < 120:
        return f"{age}s ago"
    if age < 7200:
        return f"{age // 60}m ago"
    return f"{age // 3600}h ago"


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        engine = connect(settings, pool_size=1)
    except CatalogUnavailable as exc:
        return fail(str(exc))
    try:
        interval = settings.heartbeat_interval
        rows = registry.list_instances(engine, interval, include_dead=args.all)
        status = registry.cleanup_status(engine, interval)
    finally:
        engine.dispose()
    now = registry.now_secs()
    header = ["ID", "KIND", "STATE", "HOST", "PID", "ADDRESS", "HEARTBEAT"]
    if args.verbose:
        header += ["STARTED", "LAST_HEARTBEAT", "ONE_SHOT"]
    table = [header]
    for r in rows:
        line = [str(r.instance_id), r.kind, r.state, r.hostname, str(r.pid), r.address or "-",
                _ago(r.heartbeat, now)]
        if args.verbose:
            line += [_ts(r.started), _ts(r.heartbeat), "yes" if r.one_shot else "no"]
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    if len(table) == 1:
        print("(no instances" + ("" if args.all else " alive or stale; -a lists dead ones too") + ")")
    if status is None:
        print("cleanup: no run yet")
    else:
        detail = (f"run {status['cleanup_id']} started {_ts(status['start'])}"
                  + (f", ended {_ts(status['end'])}" if status["end"] is not None else "")
                  + f": marked {status['marked']}, deleted {status['deleted']}, failed {status['failed']}")
        print(f"cleanup: {status['state']} ({detail})")
    return 0
