"""Instance registry (``instance_registry_t``): which mosaicod processes run on this catalog.

Every long-lived process (``serve``, ``cleanup``, ``store-optimizer``) registers one row, keeps its
``last_heartbeat_unix_tstamp_secs`` fresh from a daemon thread and deletes the row on a clean
exit.  A process that dies without deregistering ages from *alive* to *stale* to *dead*:

    alive  : heartbeat age <  3 x interval
    stale  : 3 x interval  <= age < 10 x interval
    dead   : age >= 10 x interval

Rows dead for longer than ``PURGE_AFTER_SECS`` are purged by any heartbeating instance.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from . import errors, logs
from .catalog import cleanup_log, instances

log = logs.get(__name__)

DEFAULT_INTERVAL = 10  # seconds
PURGE_AFTER_SECS = 7 * 24 * 3600
ALIVE, STALE, DEAD = "alive", "stale", "dead"


def now_secs() -> int:
    return int(time.time())


def state_of(heartbeat_secs: int, interval: int, now: int | None = None) -> str:
    age = (now_secs() if now is None else now) - heartbeat_secs
    if age < 3 * interval:
        return ALIVE
    if age < 10 * interval:
        return STALE
    return DEAD


class Instance:
    """One registered process; use as a context manager or call start()/stop()."""

    def __init__(self, engine: Engine, kind: str, *, one_shot: bool = False,
                 address: str | None = None, interval: int = DEFAULT_INTERVAL):
        self.engine = engine
        self.kind = kind
        self.one_shot = one_shot
        self.address = address
        self.interval = max(1, int(interval))
        self.instance_id: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "Instance":
        self.instance_id = self._insert()
        log.info("instance registered", kind=self.kind, instance_id=self.instance_id,
                 address=self.address)
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{self.kind}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.instance_id is not None:
            try:
                instances.deregister(self.engine, self.instance_id)
                log.info("instance deregistered", kind=self.kind, instance_id=self.instance_id)
            except Exception as exc:  # catalog gone at shutdown: the row ages to dead
                log.warning("instance deregistration failed", kind=self.kind, error=str(exc))
            self.instance_id = None

    def __enter__(self) -> "Instance":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------------------------
    def _insert(self) -> int:
        return instances.register(self.engine, kind=self.kind, hostname=socket.gethostname(),
                                  pid=os.getpid(), now=now_secs(), one_shot=self.one_shot,
                                  address=self.address)

    def heartbeat(self) -> None:
        """Refresh our row (re-creating it if it was purged) and purge long-dead rows."""
        now = now_secs()
        if not instances.heartbeat(self.engine, self.instance_id, now, now - PURGE_AFTER_SECS):
            self.instance_id = self._insert()
            log.warning("instance row was missing; registered again", kind=self.kind,
                        instance_id=self.instance_id)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.heartbeat()
            except Exception as exc:  # catalog down: keep trying, ps will show us stale
                log.warning("heartbeat failed", kind=self.kind, error=errors.first_line(exc))


@dataclass
class Row:
    instance_id: int
    kind: str
    hostname: str
    pid: int
    started: int
    heartbeat: int
    one_shot: bool
    address: str | None
    state: str


def list_instances(engine: Engine, interval: int = DEFAULT_INTERVAL, *,
                   include_dead: bool = False) -> list[Row]:
    now = now_secs()
    out = []
    for r in instances.all_instances(engine):
        st = state_of(r["last_heartbeat_unix_tstamp_secs"], interval, now)
        if st == DEAD and not include_dead:
            continue
        out.append(Row(r["instance_id"], r["kind"], r["hostname"], r["pid"],
                       r["started_unix_tstamp_secs"], r["last_heartbeat_unix_tstamp_secs"],
                       r["one_shot"], r["address"], st))
    return out


def cleanup_status(engine: Engine, interval: int = DEFAULT_INTERVAL) -> dict | None:
    """Latest cleanup run: None (never ran) or {state: RUNNING|INTERRUPTED|IDLE, start, end, ...}."""
    row = cleanup_log.latest_run(engine)
    if row is None:
        return None
    hb = row["last_heartbeat_unix_tstamp_secs"]
    if row["end_unix_tstamp_secs"] is not None:
        state = "IDLE"
    elif hb is not None and state_of(hb, interval) == ALIVE:
        state = "RUNNING"
    else:
        state = "INTERRUPTED"
    return {"state": state, "cleanup_id": row["cleanup_id"], "start": row["start_unix_tstamp_secs"],
            "end": row["end_unix_tstamp_secs"], "marked": len(row["marked_folders"] or []),
            "deleted": len(row["deleted_folders"] or []), "failed": len(row["failed_folders"] or [])}
