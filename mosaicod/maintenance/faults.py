"""Crash injection for the maintenance routines' crash-safety tests.

``MOSAICOD_TEST_CRASH_AT=<point>`` makes the process SIGKILL itself when it reaches the named
point (no cleanup handlers, no atexit: exactly like a machine dying there).  Points are listed
next to each ``crash_point`` call.  Unset in production; costs one dict lookup per call.
"""

from __future__ import annotations

import os
import signal

ENV = "MOSAICOD_TEST_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
