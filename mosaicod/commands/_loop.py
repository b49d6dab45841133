"""Shared plumbing of the maintenance commands: catalog + store, registry, signals, repeat loop."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from .. import logs, metrics, registry
from ..catalog.db import CatalogUnavailable, connect
from ..config import Settings
from ..store.objstore import ObjectStore, StoreUnavailable
from .common import fail

log = logs.get(__name__)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT/SIGTERM (work stops between units, never in the middle)."""
    stop = threading.Event()
    previous = {}

    def handler(signum, frame):
        log.info("stop requested; finishing the current step", signal=signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def run_maintenance(settings: Settings, kind: str, interval: int,
                    once: Callable[[object, ObjectStore, int | None, threading.Event], None]) -> int:
    """Connect, register as ``kind``, run ``once`` every ``interval`` s (0 = once), deregister."""
    try:
        engine = connect(settings)
        store = ObjectStore.from_settings(settings)
    except (CatalogUnavailable, StoreUnavailable) as exc:
        return fail(str(exc))
    http = None
    if settings.metrics_port:
        http = metrics.serve_http(settings.metrics_host, settings.metrics_port, engine, store)
    inst = registry.Instance(engine, kind, one_shot=interval == 0,
                             interval=settings.heartbeat_interval)
    try:
        with stop_on_signals() as stop, inst:
            while True:
                once(engine, store, inst.instance_id, stop)
                if interval == 0 or stop.wait(interval):
                    break
    finally:
        if http is not None:
            http.stop()
        engine.dispose()
    return 0
