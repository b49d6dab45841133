"""Structured logging (structlog) for every mosaicod command."""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


class _Stderr:
    """Resolves sys.stderr at each write (it may be replaced, e.g. by test capture)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "info", fmt: str = "pretty") -> None:
    """Route structlog (and stdlib logging) to stderr in the chosen format."""
    lvl = _LEVELS.get(level, logging.INFO)
    processors: list = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        processors.append(structlog.processors.format_exc_info)
    else:
        # Plain tracebacks in every format: structlog's default exception formatter (rich, or
        # better-exceptions) renders each frame's local variables, which took seconds for one
        # failed request holding a large body.  Tracebacks are full, locals never printed.
        renderer = structlog.dev.ConsoleRenderer(colors=fmt != "plain" and sys.stderr.isatty(),
                                                 exception_formatter=structlog.dev.plain_traceback)
    structlog.configure(
        processors=processors + [renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


def get(name: str | None = None):
    return structlog.get_logger(name)
