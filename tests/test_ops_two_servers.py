"""Two `mosaicod serve` processes on one catalog and one store (real CLI, real SDK).

Local variant: both processes get the same --data-dir, so they share the embedded PostgreSQL and
the local store.  S3 variant: an external database and a bucket of moto's standalone server.
"""

from __future__ import annotations

import threading

import pytest
from mosaicolabs import MosaicoClient, QuerySequence

from .ops_helpers import base_env, http_get, log_events, read_topic, run_cli, start_serve, write_sequence


def _exercise(a, b, env_ps: dict, ps_args: list[str]) -> None:
    # write through A, read / query / delete through B
    write_sequence(a.port, "ops_seq_a", {"cam/left": 300, "imu": 200}, seed=1)
    tab = read_topic(b.location, "ops_seq_a/cam/left")
    assert tab.num_rows == 300
    assert tab.column("timestamp_ns").to_pylist() == [1_000 + i * 10 for i in range(300)]
    assert read_topic(b.location, "ops_seq_a/imu").num_rows == 200
    again = read_topic(a.location, "ops_seq_a/cam/left")
    assert again.equals(tab)

    cb = MosaicoClient.connect("127.0.0.1", b.port)
    try:
        assert "ops_seq_a" in cb.list_sequences()
        res = cb.query(QuerySequence().with_name("ops_seq_a"))
        assert res is not None and [item.sequence.name for item in res] == ["ops_seq_a"]

        # concurrent writers on both servers: distinct sequences never collide ...
        errors: list[BaseException] = []

        def writer(srv, name, seed):
            try:
                write_sequence(srv.port, name, {"t": 150}, seed=seed)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(srv, f"ops_par_{i}", 10 + i))
                   for i, srv in enumerate([a, b, a, b])]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        for i, srv in enumerate([a, b, a, b]):
            other = b if srv is a else a
            assert read_topic(other.location, f"ops_par_{i}/t").num_rows == 150

        # ... and one name claimed on both at once is created exactly once
        results: list[str] = []

        def create_same(srv):
            try:
                write_sequence(srv.port, "ops_race", {"t": 5}, seed=srv.port)
                results.append("ok")
            except Exception as exc:  # noqa: BLE001
                results.append(f"{type(exc).__name__}: {exc}")

        racers = [threading.Thread(target=create_same, args=(s,)) for s in (a, b)]
        for t in racers:
            t.start()
        for t in racers:
            t.join(60)
        assert results.count("ok") <= 1
        # sequence names are unique in the shared catalog: whoever creates it first wins, the
        # other's sequence_create is refused; both racers must have finished
        assert len(results) == 2, results
        assert results.count("ok") == 1, results
        assert "Sequence `ops_race` already exists" in next(r for r in results if r != "ok"), results
        assert "ops_race" in cb.list_sequences()
        assert read_topic(a.location, "ops_race/t").num_rows == 5

        # delete through B; A no longer serves it
        cb.sequence_delete("ops_seq_a")
    finally:
        cb.close()
    ca = MosaicoClient.connect("127.0.0.1", a.port)
    try:
        assert "ops_seq_a" not in ca.list_sequences()
        assert ca.sequence_handler("ops_seq_a") is None
    finally:
        ca.close()

    # ps (same configuration resolution as serve) lists both servers as alive
    ps = run_cli(["ps", "-v", *ps_args], env_ps)
    assert ps.returncode == 0, ps.stderr
    lines = [ln for ln in ps.stdout.splitlines() if " server " in ln]
    assert len(lines) == 2, ps.stdout
    assert all(" alive " in ln for ln in lines), ps.stdout
    assert {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"} <= set(ps.stdout.split())

    for srv in (a, b):
        code, body = http_get(srv.metrics_url("/healthz"))
        assert code == 200 and '"catalog": "ok"' in body and '"store": "ok"' in body


def _check_request_logs(srv) -> None:
    events = [e for e in log_events(srv.log()) if e.get("event") == "request"]
    assert events, srv.log()[-2000:]
    for e in events:
        assert {"rpc", "duration_ms", "outcome", "status"} <= set(e)
    assert any(e["rpc"] == "do_put" and e.get("resource") and e.get("bytes_in") for e in events) or \
        any(e["rpc"] == "do_get" and e.get("resource") for e in events)


def test_two_servers_shared_data_dir(tmp_path):
    data_dir = tmp_path / "data"
    env = base_env(MOSAICOD_HEARTBEAT_INTERVAL=2)
    a = start_serve(["--data-dir", str(data_dir)], env, tmp_path / "a.log")
    try:
        b = start_serve(["--data-dir", str(data_dir)], env, tmp_path / "b.log")
        try:
            _exercise(a, b, env, ["--data-dir", str(data_dir)])
            _check_request_logs(a)
            _check_request_logs(b)
        finally:
            assert b.stop() in (0, 130)
        # a clean stop deregisters; the remaining server still works on the shared catalog
        ps = run_cli(["ps", "--data-dir", str(data_dir)], env)
        assert len([ln for ln in ps.stdout.splitlines() if " server " in ln]) == 1, ps.stdout
        assert read_topic(a.location, "ops_race/t").num_rows == 5
    finally:
        a.stop()


@pytest.mark.s3
def test_two_servers_on_s3(tmp_path, db_url, s3_settings):
    env = base_env(MOSAICOD_HEARTBEAT_INTERVAL=2, MOSAICOD_DB_URL=db_url,
                   MOSAICOD_STORE_ENDPOINT=s3_settings["store_endpoint"],
                   MOSAICOD_STORE_BUCKET=s3_settings["store_bucket"],
                   MOSAICOD_STORE_ACCESS_KEY="testing", MOSAICOD_STORE_SECRET_KEY="testing")
    a = start_serve(["--data-dir", str(tmp_path / "a")], env, tmp_path / "a.log")
    try:
        b = start_serve(["--data-dir", str(tmp_path / "b")], env, tmp_path / "b.log")
        try:
            _exercise(a, b, env, [])
        finally:
            b.stop()
    finally:
        a.stop()
