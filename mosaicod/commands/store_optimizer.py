"""`mosaicod store-optimizer`: compact topics made of many small chunks."""

from __future__ import annotations

import argparse

from ..maintenance.optimizer import Optimizer
from ._loop import run_maintenance
from .common import EPILOG, Formatter, add_config_options, add_setting_flags, settings_from_args

HELP = "compact topics made of many small chunks into chunks of about --max-chunk-size"
DESCRIPTION = """\
Store optimizer (as upstream mosaicod 0.7).  Every finalized topic not optimized yet is queued;
each queued topic is rewritten, in timestamp order, into a new store folder with chunk files of
about --max-chunk-size bytes (same Parquet settings and column statistics as ingest), then the
catalog switches to the new folder in one transaction and the old folder is marked TO_DELETE
(`mosaicod cleanup` removes it after its retention).  A topic that already is one sorted chunk no
larger than the target is only flagged as optimized.

Crash safety: until the switch commits, readers keep using the old, untouched folder; a run that
dies mid-rewrite leaves only an unreferenced folder that cleanup removes, and the next run takes
the topic over.  Several instances may run at once: each topic is leased to one of them.
SIGINT/SIGTERM stop after the current topic.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("store-optimizer", help=HELP, description=DESCRIPTION,
                              formatter_class=Formatter, epilog=EPILOG)
    add_setting_flags(p, "store_optimizer_time_interval", "store_optimizer_max_chunk_size", "metrics_port")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)

    def once(engine, store, instance_id, stop):
        Optimizer(engine, store, max_chunk_size=settings.store_optimizer_max_chunk_size,
                  row_group_bytes=settings.row_group_size).run_pass(stop)

    return run_maintenance(settings, "store-optimizer", settings.store_optimizer_time_interval, once)
