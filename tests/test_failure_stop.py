"""A clean stop (SIGTERM, as `docker stop` sends) of `mosaicod serve` while an upload streams.

The server must stop within a few seconds (well under Docker's 10 s grace period) instead of
waiting for the client to end its stream, whether the client keeps sending or holds its stream
open without sending; the upload ends *interrupted* with every row received durable and readable
after the restart; the client gets an error, not a hang; and the store still matches the catalog
(`rebuild-catalog --dry-run`: no difference)."""

from __future__ import annotations

import json
import threading
import time

import pyarrow.flight as flight
import pytest
import sqlalchemy as sa

from .ops_helpers import start_serve
from .test_core_bad_input import act
from .test_failure_crash import (BATCH_ROWS, SCHEMA, _interrupted, assert_serves, assert_store_matches_catalog,
                                 batch, crash_env, topic)  # noqa: F401 - crash_env is a fixture

SENT_BEFORE_STOP = 5  # 25,000-row batches of ~400 kB: 1 MiB chunks have rolled, one is open
STOP_WITHIN_S = 6.0  # the server's grace period is 3 s; docker stop kills after 10 s


def _upload(location: str, mode: str, sent: list[int], stopped: threading.Event, outcome: dict) -> None:
    """Send SENT_BEFORE_STOP batches, one every 0.2 s; then either keep sending (``streaming``)
    or hold the stream open without sending until the server was stopped (``idle``, a quiet
    sensor), then try to go on and end the stream."""
    c = flight.FlightClient(location)
    try:
        act(c, "sequence_create", {"locator": "s", "user_metadata": {}})
        sess = act(c, "session_create", {"locator": "s"})
        tid = act(c, "topic_create", {"session_uuid": sess["uuid"], "locator": "s/t",
                                      "serialization_format": "default", "ontology_tag": "F",
                                      "user_metadata": {}})["uuid"]
        desc = flight.FlightDescriptor.for_command(json.dumps({"resource_locator": "s/t", "topic_uuid": tid}).encode())
        writer, _ = c.do_put(desc, SCHEMA)
        try:
            for k in range(1_000):
                if k >= SENT_BEFORE_STOP and mode == "idle":
                    stopped.wait(30)
                writer.write_batch(batch(k))
                sent.append(k)
                time.sleep(0.2)
            writer.close()
            outcome["error"] = None
        except Exception as exc:  # noqa: BLE001 - the outcome is checked by the test
            outcome["error"] = exc
            outcome["at"] = time.monotonic()
    finally:
        c.close()


@pytest.mark.parametrize("mode", ["streaming", "idle"])
def test_sigterm_during_an_upload(mode, crash_env, db_url, tmp_path):
    srv = start_serve([], crash_env(None), tmp_path / "serve.log")
    sent: list[int] = []
    outcome: dict = {}
    stopped = threading.Event()
    client = threading.Thread(target=_upload, args=(srv.location, mode, sent, stopped, outcome), daemon=True)
    try:
        client.start()
        deadline = time.monotonic() + 60
        while len(sent) < SENT_BEFORE_STOP and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(sent) >= SENT_BEFORE_STOP, srv.log()
        time.sleep(1.0)  # the server has received what was sent
        t0 = time.monotonic()
        srv.proc.terminate()
        try:
            code = srv.proc.wait(30)
        finally:
            stop_s = time.monotonic() - t0
            stopped.set()
        print(f"[{mode}] stopped in {stop_s:.2f} s, exit code {code}")
        assert code == 0, srv.log()
        assert stop_s < STOP_WITHIN_S, srv.log()
        client.join(20)
        assert not client.is_alive(), "the client hangs after the server stopped"
        error = outcome.get("error")
        assert isinstance(error, flight.FlightError), outcome  # UNAVAILABLE: the server stopped or is gone
        print(f"[{mode}] client error after {outcome['at'] - t0:.2f} s: {type(error).__name__}: "
              f"{str(error).splitlines()[0]}")
    finally:
        srv.stop()

    srv = start_serve([], crash_env(None), tmp_path / "restart.log")
    try:
        assert_store_matches_catalog(db_url, tmp_path / "data")
        c = flight.FlightClient(srv.location)
        engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
        try:
            meta = topic(c, "s/t")
            print(f"[{mode}] after the restart: {meta['upload_state']}, {meta['data_info']['total_row_count']} rows "
                  f"in {meta['data_info']['total_chunks_count']} chunks")
            notes = act(c, "topic_notification_list", {"locator": "s/t"})["notifications"]
            assert "the server was stopped" in notes[0]["msg"], notes
            assert meta["data_info"]["total_row_count"] >= SENT_BEFORE_STOP * BATCH_ROWS
            with engine.connect() as db:  # interrupted, every row received readable, not stuck
                _interrupted(exact=SENT_BEFORE_STOP * BATCH_ROWS if mode == "idle" else None)(c, db)
        finally:
            c.close()
            engine.dispose()
        assert_store_matches_catalog(db_url, tmp_path / "data")
        assert_serves(srv.location)
    finally:
        srv.stop()
