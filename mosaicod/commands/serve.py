"""`mosaicod serve`: run the Arrow Flight server."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .. import allocator, logs, metrics, registry
from ..catalog.db import CatalogUnavailable, release_embedded
from ..recovery import RecoveryLoop
from ..runtime import Runtime, build_server
from ..store.objstore import StoreUnavailable
from ..store.reader import remove_stale_spill_dirs
from ..tls import server_tls_kwargs, warn_if_insecure
from .common import (EPILOG, Formatter, StopSignals, add_config_options, add_setting_flags, fail,
                     settings_from_args)

HELP = """\
Run the mosaicod Arrow Flight server.

With no database URL (MOSAICOD_DB_URL) an embedded PostgreSQL is started (or joined) under
<data-dir>/postgres; with no store endpoint (MOSAICOD_STORE_ENDPOINT) data is kept under
<data-dir>/store.  Catalog migrations are applied at start.  Stop with Ctrl-C or SIGTERM.
"""

# A clean stop lets running calls end for this long; uploads still open after it (a client that
# sends nothing) are interrupted, and the end of the process cuts their calls.  Well under the
# 10 s `docker stop` waits before its SIGKILL.
STOP_GRACE_S = 3.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the Flight server", description=HELP,
                       formatter_class=Formatter, epilog=EPILOG)
    add_setting_flags(p, "host", "port", "metrics_port")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # SIGTERM (docker stop): the same clean stop as Ctrl-C.  While starting, the request is only
    # recorded: interrupting the start of the embedded PostgreSQL half-way would leave it running
    # unmanaged; it is honoured as soon as the server is up.
    stop = StopSignals(signal.SIGTERM).install()
    malloc = allocator.tune()  # before any server thread allocates
    settings = settings_from_args(args)
    log = logs.get("mosaicod.serve")
    log.debug("malloc settings", **malloc)
    warn_if_insecure(settings, log)
    server_tls_kwargs(settings)  # reject bad certificate/key files before starting anything
    remove_stale_spill_dirs()  # merge spill folders of a killed server (SIGKILL, OOM)
    try:
        runtime = Runtime.open(settings)
    except (CatalogUnavailable, StoreUnavailable) as exc:
        return fail(str(exc))
    try:
        server = build_server(runtime)
        log.info("mosaicod listening", address=f"{settings.host}:{server.port}",
                 tls=settings.tls_enabled, api_keys=settings.api_key_enabled,
                 catalog="embedded" if not settings.db_url else "external", store=runtime.store.url)
        log.debug("settings", **settings.redacted())
        http = (metrics.serve_http(settings.metrics_host, settings.metrics_port, runtime.engine,
                                   runtime.store) if settings.metrics_port else None)
        instance = registry.Instance(runtime.engine, "server", address=f"{settings.host}:{server.port}",
                                     interval=settings.heartbeat_interval).start()
        recovery = RecoveryLoop(runtime, interval=3 * settings.heartbeat_interval).start()
        calls_ended = False
        try:
            if stop.interrupt_from_now():  # from here on a SIGTERM interrupts
                # not server.serve(): on a signal it waits for every running call, however long
                # a client keeps its stream open; the server runs on its own threads meanwhile
                stop.requested.wait()
        except KeyboardInterrupt:
            pass  # Ctrl-C / SIGTERM: stop cleanly below
        finally:
            calls_ended = server.shutdown(grace=STOP_GRACE_S)
            recovery.stop()
            instance.stop()
            if http is not None:
                http.stop()
        log.info("mosaicod stopped")
    finally:
        runtime.close()
    if not calls_ended:  # the calls left open are idle streams (their uploads are interrupted):
        # the end of the process cuts them (a normal exit would wait for them).  os._exit skips
        # the exit handlers, among them the embedded PostgreSQL's stop when this server is its
        # last user: do that one first, or the database keeps running without its server
        release_embedded()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
