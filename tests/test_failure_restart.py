"""Restart always works: after a SIGKILL of the server and/or of its embedded PostgreSQL, `mosaicod
serve` starts again (a dead or zombie postmaster is detected and started again, stale pid files
are handled), what was written is still there, and a clean stop stops the embedded PostgreSQL
when the server is its last user."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from mosaicod.catalog.db import clear_stale_embedded_state

from .ops_helpers import base_env, free_port, read_topic, run_cli, start_serve, write_sequence


def postmaster_pid(data: Path) -> int:
    return int((data / "postgres" / "postmaster.pid").read_text().splitlines()[0])


def running_postmasters(data: Path) -> list[int]:
    """Live (not zombie) PostgreSQL server processes of this data dir."""
    out = []
    for p in psutil.process_iter(["name", "cmdline", "status"]):
        if (p.info["name"] or "").startswith("postgres") and p.info["status"] != psutil.STATUS_ZOMBIE \
                and str(data / "postgres") in " ".join(p.info["cmdline"] or []):
            out.append(p.pid)
    return out


def wait_for(cond, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


def handle_pids(data: Path) -> list[int]:
    return json.loads((data / "postgres" / ".handle_pids.json").read_text() or "[]")


@pytest.fixture
def tmp_path() -> Path:
    """A private temp dir: not under pytest's basetemp, which concurrent pytest runs prune while
    a long test still uses it."""
    path = Path(tempfile.mkdtemp(prefix="mosaicod-restart-"))
    os.chmod(path, 0o755)  # the embedded PostgreSQL may run as another user
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def data(tmp_path) -> Path:
    return tmp_path / "data"


def _kill_server(srv) -> None:
    srv.proc.send_signal(signal.SIGKILL)
    assert srv.proc.wait(30) == -signal.SIGKILL


def _stop_cleanly(srv, data: Path) -> None:
    assert srv.stop() == 0, srv.log()[-2000:]
    # the server was the last user of the embedded PostgreSQL: it is stopped
    assert wait_for(lambda: not running_postmasters(data)), running_postmasters(data)
    assert handle_pids(data) == []


@pytest.mark.parametrize("kill_postgres", [True, False], ids=["server-and-postgres", "server-only"])
def test_restart_after_sigkill(data, tmp_path, kill_postgres):
    env = base_env()
    srv = start_serve(["--data-dir", str(data)], env, tmp_path / "first.log")
    try:
        write_sequence(srv.port, "before", {"t": 50})
        pg = postmaster_pid(data)
        _kill_server(srv)
        if kill_postgres:
            os.kill(pg, signal.SIGKILL)
            assert wait_for(lambda: not running_postmasters(data))
    finally:
        srv.stop()
    assert handle_pids(data) == [srv.proc.pid]  # the killed server never said goodbye
    srv = start_serve(["--data-dir", str(data)], env, tmp_path / "second.log")
    try:
        assert read_topic(srv.location, "before/t").num_rows == 50
        write_sequence(srv.port, "after", {"t": 5})
        assert handle_pids(data) == [srv.proc.pid]  # the dead user was dropped
    except BaseException:
        srv.stop()
        raise
    _stop_cleanly(srv, data)


def test_stale_postmaster_pid_of_a_foreign_process(data, tmp_path):
    """A postmaster.pid naming a live process that is not this data dir's PostgreSQL (pid reuse
    after a reboot or in a new container) does not stop the server from starting."""
    env = base_env()
    srv = start_serve(["--data-dir", str(data)], env, tmp_path / "first.log")
    _stop_cleanly(srv, data)
    pidfile = data / "postgres" / "postmaster.pid"
    pidfile.write_text("\n".join([str(os.getpid()), str(data / "postgres"), "1700000000", "5432", "/tmp",
                                  "", "0 0", "ready"]) + "\n")
    srv = start_serve(["--data-dir", str(data)], env, tmp_path / "second.log")
    try:
        write_sequence(srv.port, "ok", {"t": 3})
        assert read_topic(srv.location, "ok/t").num_rows == 3
    except BaseException:
        srv.stop()
        raise
    _stop_cleanly(srv, data)


def test_clear_stale_embedded_state_units(tmp_path):
    pgdata = tmp_path / "postgres"
    pgdata.mkdir()
    (pgdata / "postmaster.pid").write_text("not a pid\n")
    me, dead = os.getpid(), 2**22 + 12345  # above any pid_max default: never a live process
    (pgdata / ".handle_pids.json").write_text(json.dumps([dead, me]))
    clear_stale_embedded_state(pgdata)
    assert not (pgdata / "postmaster.pid").exists()
    assert json.loads((pgdata / ".handle_pids.json").read_text()) == [me]


def test_unreachable_embedded_postgres_is_one_line(data, tmp_path):
    """An embedded PostgreSQL that cannot be started (here: its data directory is unusable)
    gives one clear line and exit status 1, not a traceback."""
    data.mkdir(parents=True)
    (data / "postgres").mkdir()
    (data / "postgres" / "PG_VERSION").write_text("18\n")  # looks initialised, is not
    res = run_cli(["serve", "--data-dir", str(data), "--port", str(free_port())], base_env(), timeout=120)
    assert res.returncode == 1, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "embedded PostgreSQL" in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_a_stop_that_cuts_idle_streams_still_stops_the_embedded_postgres(data, tmp_path):
    """A stream left open and idle by its client outlives the stop's grace: the process ends
    without waiting for it (``os._exit``), which skips the normal exit; the embedded PostgreSQL,
    whose last user the server is, must be stopped all the same."""
    import pyarrow as pa
    import pyarrow.flight as flight

    srv = start_serve(["--data-dir", str(data)], base_env(), tmp_path / "serve.log")
    client = flight.FlightClient(srv.location)
    try:
        def act(name, body):
            return [json.loads(r.body.to_pybytes()) for r in client.do_action(flight.Action(name, json.dumps(body).encode()))]

        act("sequence_create", {"locator": "idle", "user_metadata": {}})
        sess = act("session_create", {"locator": "idle"})[0]["response"]["uuid"]
        tid = act("topic_create", {"session_uuid": sess, "locator": "idle/t", "serialization_format": "default",
                                   "ontology_tag": "F", "user_metadata": {}})[0]["response"]["uuid"]
        schema = pa.schema([pa.field("timestamp_ns", pa.int64(), nullable=False), pa.field("v", pa.float64())])
        desc = flight.FlightDescriptor.for_command(json.dumps({"resource_locator": "idle/t", "topic_uuid": tid}).encode())
        # the stream is opened and then left idle (a batch could arrive after the stop began and
        # end the call at once: the stop would then not have to cut anything)
        writer, _ = client.do_put(desc, schema)
        assert running_postmasters(data)
        _stop_cleanly(srv, data)  # the stream is still open: the server ends without waiting for it
        assert "stopped with calls still open" in srv.log(), srv.log()[-2000:]
    finally:
        client.close()
        srv.stop()
