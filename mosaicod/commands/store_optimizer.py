"""`mosaicod store-optimizer`: compact topics made of many small chunks."""

from __future__ import annotations

import argparse

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
    from ..cli import Formatter, add_config_options

    p = subparsers.add_parser("store-optimizer", help=HELP, description=DESCRIPTION,
                              formatter_class=Formatter)
    p.add_argument("--time-interval", type=int, metavar="S", dest="store_optimizer_time_interval",
                   help="repeat every S seconds; 0 = one pass, then exit "
                        "(env: MOSAICOD_STORE_OPTIMIZER_TIME_INTERVAL; default: 0)")
    p.add_argument("--max-chunk-size", type=int, metavar="BYTES", dest="store_optimizer_max_chunk_size",
                   help="target size of the rewritten chunk files "
                        "(env: MOSAICOD_STORE_OPTIMIZER_MAX_CHUNK_SIZE; default: 268435456)")
    p.add_argument("--metrics-port", type=int, metavar="PORT", dest="metrics_port",
                   help="serve /healthz and /metrics on this port while running (0 = off)")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import settings_from_args
    from ..maintenance.optimizer import Optimizer
    from ._loop import run_maintenance

    settings = settings_from_args(args)

    def once(engine, store, instance_id, stop):
        Optimizer(engine, store, max_chunk_size=settings.store_optimizer_max_chunk_size,
                  row_group_bytes=settings.row_group_size).run_pass(stop)

    return run_maintenance(settings, "store-optimizer", settings.store_optimizer_time_interval, once)
