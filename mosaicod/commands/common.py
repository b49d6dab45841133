"""What every sub-command shares: the help formatter, flags generated from the settings table,
settings resolution from the parsed flags, the one-line error exit and the stop signals."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from .. import logs
from ..config import SETTINGS, Settings, load_settings

_BY_NAME = {s.name: s for s in SETTINGS}

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


def add_setting_flags(parser, *names: str) -> None:
    """One flag per named setting, from its line in the settings table: ``--name`` (or the
    setting's own flag), its type, choices and help, with its environment name and default.  The
    flag defaults to None so that an absent flag lets the environment, file or default decide."""
    for name in names:
        s = _BY_NAME[name]
        shown = s.default if s.default != "" else "empty"
        kwargs: dict[str, Any] = {"dest": s.name, "default": None,
                                  "help": f"{s.help} (env: {s.env}; default: {shown})"}
        if s.choices:
            kwargs["choices"] = s.choices
        elif s.type == "int":
            kwargs["type"] = int
        if s.metavar:
            kwargs["metavar"] = s.metavar
        parser.add_argument(s.flag_name, **kwargs)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every sub-command that reaches the catalog or the store."""
    g = parser.add_argument_group("configuration")
    g.add_argument("--config", metavar="PATH", help="TOML config file (env: MOSAICOD_CONFIG_FILE)")
    add_setting_flags(g, "data_dir", "log_level", "log_format")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Resolve settings from the parsed flags (only flags the user gave count as CLI values)."""
    cli = {k: v for k, v in vars(args).items() if k in _BY_NAME and v is not None}
    settings = load_settings(cli, config_file=getattr(args, "config", None))
    logs.configure(settings.log_level, settings.log_format)
    return settings


def fail(message: str, code: int = 1) -> int:
    """Print ``mosaicod: error: <message>`` on stderr; returns the exit status."""
    print(f"mosaicod: error: {message}", file=sys.stderr)
    return code


class StopSignals:
    """Stop requests by signal (SIGTERM: docker stop; SIGINT: Ctrl-C), handled from a command's
    first moment: as PID 1 in a container an unhandled SIGTERM is ignored and docker kills after
    10 s; elsewhere it kills at once, leaving an embedded PostgreSQL being started unmanaged.

    A request is recorded in ``requested`` (an event the work checks between units).  Once
    ``interrupt`` is set (``interrupt_from_now``) a request also raises KeyboardInterrupt, for a
    main thread blocked in a call that only an exception leaves (the Flight server)."""

    def __init__(self, *signums: signal.Signals, log_as: str | None = None) -> None:
        self.signums = signums
        self.log_as = log_as
        self.requested = threading.Event()
        self.interrupt = False
        self._previous: dict = {}

    def install(self) -> StopSignals:
        for sig in self.signums:
            self._previous[sig] = signal.signal(sig, self)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()

    def interrupt_from_now(self) -> bool:
        """Let later requests interrupt; False when one came already (stop instead of starting)."""
        self.interrupt = True
        return not self.requested.is_set()

    def __call__(self, signum, frame) -> None:
        if self.log_as:
            logs.get("mosaicod").info(self.log_as, signal=signal.Signals(signum).name)
        self.requested.set()
        if self.interrupt:
            raise KeyboardInterrupt
