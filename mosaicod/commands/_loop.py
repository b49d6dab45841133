"""Shared plumbing of the maintenance commands: catalog + store, registry, signals, repeat loop."""

from __future__ import annotations

import signal
import threading
from typing import Callable

from .. import logs, metrics, registry
from ..catalog.db import CatalogUnavailable, connect
from ..config import Settings
from ..store.objstore import ObjectStore, StoreUnavailable
from ..store.reader import remove_stale_spill_dirs
from .common import StopSignals, fail

log = logs.get(__name__)


def run_maintenance(settings: Settings, kind: str, interval: int,
                    once: Callable[[object, ObjectStore, int | None, threading.Event], None]) -> int:
    """Connect, register as ``kind``, run ``once`` every ``interval`` s (0 = once), deregister.

    SIGINT/SIGTERM are handled from the start: work stops between units, never in the middle; a
    request that comes while connecting (the embedded PostgreSQL may be starting) is carried out
    once connected, without a run."""
    with StopSignals(signal.SIGINT, signal.SIGTERM,
                     log_as="stop requested; finishing the current step") as signals:
        stop = signals.requested
        remove_stale_spill_dirs()  # the optimizer reads through the merge reader: a killed one's folders
        try:
            engine = connect(settings)
            store = ObjectStore.from_settings(settings)
        except (CatalogUnavailable, StoreUnavailable) as exc:
            return fail(str(exc))
        if stop.is_set():
            log.info("stop requested while starting; stopped before the first run")
            engine.dispose()
            return 0
        http = None
        if settings.metrics_port:
            http = metrics.serve_http(settings.metrics_host, settings.metrics_port, engine, store)
        inst = registry.Instance(engine, kind, one_shot=interval == 0,
                                 interval=settings.heartbeat_interval)
        try:
            with inst:
                while True:
                    once(engine, store, inst.instance_id, stop)
                    if interval == 0 or stop.wait(interval):
                        break
        finally:
            if http is not None:
                http.stop()
            engine.dispose()
        return 0
