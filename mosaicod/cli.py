"""`mosaicod` command line: one sub-command per module in mosaicod.commands.

Every sub-command shares the configuration options (``--config``, ``--data-dir``, logging) and
resolves settings the same way: CLI flag > MOSAICOD_* environment > config file > default.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from . import __version__
from .commands import api_key, cleanup, ps, rebuild_catalog, serve, store_optimizer
from .commands.common import EPILOG, Formatter, fail
from .config import ConfigError

# Each module exposes register(subparsers) and sets a `func(args) -> int` default on its parser.
COMMANDS = (serve, api_key, cleanup, store_optimizer, ps, rebuild_catalog)

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mosaicod", formatter_class=Formatter, epilog=EPILOG,
        description="mosaicod: the Mosaico data platform server (Arrow Flight, PostgreSQL catalog, "
                    "Parquet object store).")
    parser.add_argument("--version", action="version", version=f"mosaicod {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args) or 0)
    except ConfigError as exc:
        return fail(str(exc), 2)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
