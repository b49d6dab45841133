"""`mosaicod` command line: one sub-command per module in mosaicod.commands.

Every sub-command shares the configuration options (``--config``, ``--data-dir``, logging) and
resolves settings the same way: CLI flag > MOSAICOD_* environment > config file > default.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Callable

from . import __version__, logs
from .config import SETTINGS, ConfigError, Settings, load_settings

# Each module exposes register(subparsers) and sets a `func(args) -> int` default on its parser.
COMMAND_MODULES = (
    "mosaicod.commands.serve",
    "mosaicod.commands.api_key",
    "mosaicod.commands.cleanup",
    "mosaicod.commands.store_optimizer",
    "mosaicod.commands.ps",
    "mosaicod.commands.rebuild_catalog",
)

EPILOG = """\
configuration: every option can also be given as an environment variable (MOSAICOD_<NAME>, e.g.
MOSAICOD_DB_URL) or in a TOML config file (--config); precedence is flag > environment > file >
default.  Secrets (MOSAICOD_DB_PASSWORD, MOSAICOD_STORE_SECRET_KEY) come only from the environment
or from a file named by MOSAICOD_<NAME>_FILE, and are never printed.
"""


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps description layout; shows "(default: X)" only for real parser defaults.  Options
    that fall back to the environment / config file default to None and say so in their help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every sub-command that reaches the catalog or the store."""
    g = parser.add_argument_group("configuration")
    g.add_argument("--config", metavar="PATH", help="TOML config file (env: MOSAICOD_CONFIG_FILE)")
    g.add_argument("--data-dir", metavar="DIR",
                   help="data directory: embedded PostgreSQL in DIR/postgres, local store in DIR/store "
                        "(env: MOSAICOD_DATA_DIR; default: ./mosaicod-data)")
    g.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   help="log verbosity (env: MOSAICOD_LOG_LEVEL; default: info)")
    g.add_argument("--log-format", choices=("json", "pretty", "plain"),
                   help="log format (env: MOSAICOD_LOG_FORMAT; default: pretty)")


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    """Resolve settings from the parsed flags (only flags the user gave count as CLI values)."""
    names = {s.name for s in SETTINGS}
    cli = {k: v for k, v in vars(args).items() if k in names and v is not None}
    cli.update({k: v for k, v in extra.items() if v is not None})
    settings = load_settings(cli, config_file=getattr(args, "config", None))
    logs.configure(settings.log_level, settings.log_format)
    return settings


def fail(message: str, code: int = 1) -> int:
    print(f"mosaicod: error: {message}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mosaicod", formatter_class=Formatter, epilog=EPILOG,
        description="mosaicod: the Mosaico data platform server (Arrow Flight, PostgreSQL catalog, "
                    "Parquet object store).")
    parser.add_argument("--version", action="version", version=f"mosaicod {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
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
