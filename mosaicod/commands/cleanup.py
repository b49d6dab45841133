"""`mosaicod cleanup`: remove store folders of deleted resources after the retention period."""

from __future__ import annotations

import argparse

from ..maintenance import cleanup
from ._loop import run_maintenance
from .common import EPILOG, Formatter, add_config_options, add_setting_flags, settings_from_args

HELP = "physically remove store folders of deleted resources after the retention period"
DESCRIPTION = """\
Store garbage collector (deferred deletion, as upstream mosaicod 0.7).

Deleting a sequence, session or topic removes it from the catalog at once; its store folder is
only marked with a TO_DELETE object.  A cleanup run lists the top-level folders of the store and
  * marks every folder the catalog no longer references (writes <folder>/TO_DELETE),
  * deletes every folder whose TO_DELETE marker is older than --retention-duration.
A retention of 0 deletes unreferenced folders immediately.  Several instances may run against one
catalog: runs are serialised by a PostgreSQL advisory lock and recorded in cleanup_log_t, and a run
is skipped when another one started less than --time-interval seconds ago.  `mosaicod ps` shows the
latest run.  SIGINT/SIGTERM stop the loop after the current run.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("cleanup", help=HELP, description=DESCRIPTION,
                              formatter_class=Formatter, epilog=EPILOG)
    add_setting_flags(p, "cleanup_time_interval", "cleanup_retention_duration", "metrics_port")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    interval = settings.cleanup_time_interval
    retention = settings.cleanup_retention_duration

    def once(engine, store, instance_id, stop):
        cleanup.run_once(engine, store, time_interval=interval, retention=retention,
                         instance_id=instance_id)

    return run_maintenance(settings, "cleanup", interval, once)
