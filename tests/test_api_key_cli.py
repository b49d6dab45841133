"""`mosaicod api-key ...` against a real catalog, and the key store's secrecy guarantees."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from mosaicod import apikey, auth, cli, errors, logs
from mosaicod.catalog import db as catalog_db
from mosaicod.catalog import keys
from mosaicod.catalog.tables import api_key_t, metadata
from mosaicod.config import load_settings
from mosaicod.permissions import Permission
from tests.conftest import create_database, drop_database

KEY_LINE = re.compile(r"^msco_[a-z0-9]{32}_[a-z0-9]{8}$")


@pytest.fixture(scope="module")
def module_db(pg_admin_url):
    url = create_database(pg_admin_url)
    engine = catalog_db.connect(load_settings({"db_url": url}, env={}))
    yield url, engine
    engine.dispose()
    drop_database(pg_admin_url, url)


@pytest.fixture
def catalog(module_db, monkeypatch):
    """The CLI resolves settings from the environment like `serve`: point it at the test db
    (one per module, emptied of keys before each test)."""
    url, engine = module_db
    keys.purge_keys(engine, all_keys=True)
    monkeypatch.setenv("MOSAICOD_DB_URL", url)
    monkeypatch.setenv("MOSAICOD_LOG_LEVEL", "warning")
    yield engine


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["api-key", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def create(capsys, *argv) -> tuple[str, str]:
    code, out, err = run_cli(capsys, "create", *argv)
    assert code == 0, err
    key = out.rstrip("\n").splitlines()[-1]
    assert KEY_LINE.match(key), out
    return key, out


def test_create_prints_key_last_and_stores_only_a_hash(catalog, capsys):
    key, out = create(capsys, "--permissions", "read|write", "-d", "robot 7")
    assert out.count("cannot be shown again") == 1
    payload, fp = apikey.parse_key(key)
    with catalog.connect() as conn:
        row = conn.execute(sa.select(api_key_t)).one()
    assert row.fingerprint == fp
    assert row.permissions == int(Permission.READ | Permission.WRITE)
    assert row.description == "robot 7"
    assert row.expiration_unix_timestamp is None and row.revocation_unix_timestamp is None
    assert bytes(row.payload_hash) == apikey.hash_payload(fp, payload)
    assert payload.encode() not in bytes(row.payload_hash)
    assert auth.verify_key(catalog, key).permissions == Permission.READ | Permission.WRITE


@pytest.mark.parametrize("perms,expected", [
    ("read", Permission.READ), ("write", Permission.WRITE), ("delete", Permission.DELETE),
    ("write,delete", Permission.WRITE | Permission.DELETE),
    ("delete|read|write", Permission.READ | Permission.WRITE | Permission.DELETE),
])
def test_create_any_permission_combination(catalog, capsys, perms, expected):
    key, _ = create(capsys, "--permissions", perms)
    assert auth.verify_key(catalog, key).permissions == expected


def test_expiry_options(catalog, capsys):
    before = time.time()
    key, _ = create(capsys, "--permissions", "read", "--expires-in", "PT1H")
    info = auth.verify_key(catalog, key)
    assert before + 3600 - 2 <= info.expires_at <= time.time() + 3600 + 1
    key, _ = create(capsys, "--permissions", "read", "--expires-at", "2099-01-31T12:00:00+01:00")
    expected = datetime(2099, 1, 31, 11, tzinfo=timezone.utc).timestamp()
    assert auth.verify_key(catalog, key).expires_at == expected


def test_list_status_revoke_purge(catalog, capsys):
    k1, _ = create(capsys, "--permissions", "read", "-d", "first")
    k2, _ = create(capsys, "--permissions", "write", "--expires-in", "PT1S")
    k3, _ = create(capsys, "--permissions", "delete")
    fp1, fp2, fp3 = (apikey.parse_key(k)[1] for k in (k1, k2, k3))
    while time.time() < keys.key_status(catalog, fp2).expires_at:
        time.sleep(0.05)

    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for k, fp, state in ((k1, fp1, "active"), (k2, fp2, "expired"), (k3, fp3, "active")):
        line = next(li for li in out.splitlines() if li.startswith(fp))
        assert state in line
        assert apikey.parse_key(k)[0] not in out  # never a secret
    assert "first" in out

    code, out, _ = run_cli(capsys, "status", fp1)
    assert code == 0 and "state:       active" in out and "permissions: read" in out
    code, out, _ = run_cli(capsys, "status", fp2)
    assert code == 3 and "expired" in out

    code, out, _ = run_cli(capsys, "revoke", fp1.upper())  # fingerprints are case-insensitive
    assert code == 0 and fp1 in out
    code, out, _ = run_cli(capsys, "status", fp1)
    assert code == 3 and "state:       revoked" in out and "revoked:" in out
    with pytest.raises(errors.MosaicoError, match="revoked"):
        auth.verify_key(catalog, k1)

    code, out, _ = run_cli(capsys, "purge")  # expired and revoked only
    assert code == 0 and fp1 in out and fp2 in out and fp3 not in out
    assert [k.fingerprint for k in keys.list_keys(catalog)] == [fp3]
    code, out, _ = run_cli(capsys, "purge", "--all")
    assert code == 0 and fp3 in out
    assert keys.list_keys(catalog) == []
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and "No API keys" in out


@pytest.mark.parametrize("argv,message", [
    (["create", "--permissions", "admin"], "unknown permission 'admin'"),
    (["create", "--permissions", ""], "no permission given"),
    (["create", "--permissions", "read", "--expires-in", "30 days"], "not an ISO-8601 duration"),
    (["create", "--permissions", "read", "--expires-at", "2099-01-01"], "no UTC offset"),
    (["create", "--permissions", "read", "--expires-at", "2001-01-01T00:00:00Z"], "not in the future"),
    (["status", "abc"], "not a key fingerprint"),
    (["revoke", "msco_" + "a" * 32 + "_" + "b" * 8], "not the whole key"),
    (["status", "zzzzzzzz"], "API key `zzzzzzzz` not found"),
    (["revoke", "zzzzzzzz"], "API key `zzzzzzzz` not found"),
])
def test_bad_input_is_a_clear_error(catalog, capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 1
    assert message in err
    assert out == ""
    assert keys.list_keys(catalog) == []


def test_expiry_flags_are_exclusive_and_permissions_required(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["api-key", "create", "--permissions", "read", "--expires-in", "P1D",
                  "--expires-at", "2099-01-01T00:00:00Z"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["api-key", "create"])
    assert "--permissions" in capsys.readouterr().err


@pytest.mark.parametrize("sub", ["create", "list", "status", "revoke", "purge"])
def test_help_explains(sub, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["api-key", sub, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--data-dir" in out and "(default: None)" not in out
    assert {"create": "shown only this", "list": "never shown", "status": "fingerprint",
            "revoke": "refused", "purge": "--all"}[sub] in out


def test_wrong_secret_for_a_known_fingerprint_is_refused_like_an_unknown_key(catalog):
    key, info = keys.create_key(catalog, Permission.READ)
    payload, fp = apikey.parse_key(key)
    with catalog.begin() as conn:  # the stored secret differs from the presented one
        conn.execute(api_key_t.update().values(payload_hash=apikey.hash_payload(fp, "x" * 32)))
    with pytest.raises(errors.MosaicoError, match="API key does not exist"):
        auth.verify_key(catalog, key)


def test_no_plaintext_key_in_database_or_logs(catalog, module_db, capfd, start_server, make_settings):
    """Mint keys with the CLI, use them (good, mistyped, revoked) against a server logging at
    debug level, then grep every table of the catalog and every log line for the secrets."""
    from mosaicolabs import MosaicoClient

    import pyarrow.flight as flight

    logs.configure("debug", "json")
    os.environ["MOSAICOD_LOG_LEVEL"] = "debug"
    code = cli.main(["api-key", "create", "--permissions", "read,write,delete", "-d", "secret test"])
    assert code == 0
    created_out = capfd.readouterr().out
    key = created_out.rstrip("\n").splitlines()[-1]
    payload, fp = apikey.parse_key(key)
    other, _ = keys.create_key(catalog, Permission.READ)

    srv = start_server(make_settings(db=module_db[0], api_key_enabled=True, log_level="debug"))
    logs.configure("debug", "json")
    with MosaicoClient.connect("127.0.0.1", srv.port, timeout=3, api_key=key) as client:
        client.list_sequences()
    typo = f"msco_{payload[:-1]}{'a' if payload[-1] != 'a' else 'b'}_{fp}"
    raw = flight.FlightClient(f"grpc://127.0.0.1:{srv.port}")
    for bad in (typo, f"msco_{payload}_00000000", other + "x"):
        with pytest.raises(flight.FlightUnauthorizedError):
            list(raw.do_action(flight.Action("info", b"{}"), options=flight.FlightCallOptions(
                headers=[(b"mosaico-api-key-token", bad.encode())])))
    raw.close()
    assert cli.main(["api-key", "revoke", fp]) == 0
    assert cli.main(["api-key", "list"]) == 0
    assert cli.main(["api-key", "status", fp]) == 3
    with pytest.raises(ConnectionError):
        MosaicoClient.connect("127.0.0.1", srv.port, timeout=1, api_key=key)
    srv.stop()

    captured = capfd.readouterr()
    logged = captured.out + captured.err
    assert "call refused" in logged and fp in logged  # the logs did record the refusals
    for secret in (payload, apikey.parse_key(other)[0], payload[:16], payload[16:]):
        assert secret not in logged
    assert created_out.count(key) == 1  # shown once, by create, as its last line

    dumped = []
    with catalog.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                for value in row:
                    dumped.append(value.hex() if isinstance(value, (bytes, memoryview))
                                  else str(value))
    text = "\n".join(dumped)
    assert fp in text  # sanity: the dump does contain the key's row
    for secret in (payload, apikey.parse_key(other)[0], payload.encode().hex()):
        assert secret not in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(proc: subprocess.Popen, port: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mosaicod serve exited early: {proc.stderr.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail("mosaicod serve did not start listening")


def test_cli_reaches_the_same_catalog_as_serve_via_data_dir(tmp_path):
    """`api-key create --data-dir D` then `serve --data-dir D` (embedded PostgreSQL): the key works,
    a revocation by the CLI while the server runs takes effect at once."""
    from mosaicolabs import MosaicoClient

    data = tmp_path / "data"
    data.mkdir()
    os.chmod(tmp_path, 0o755)  # the embedded PostgreSQL may run as another user
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAICOD_")}
    env["MOSAICOD_LOG_LEVEL"] = "warning"
    base = [sys.executable, "-m", "mosaicod"]
    out = subprocess.run([*base, "api-key", "create", "--permissions", "read", "--data-dir", str(data)],
                         env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    key = out.rstrip("\n").splitlines()[-1]
    assert KEY_LINE.match(key)
    port = _free_port()
    server = subprocess.Popen([*base, "serve", "--data-dir", str(data), "--port", str(port)],
                              env={**env, "MOSAICOD_API_KEY_ENABLED": "true"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_port(server, port)
        with MosaicoClient.connect("127.0.0.1", port, timeout=5, api_key=key) as client:
            assert client.list_sequences() == []
            subprocess.run([*base, "api-key", "revoke", apikey.parse_key(key)[1], "--data-dir",
                            str(data)], env=env, capture_output=True, timeout=120, check=True)
            import pyarrow.flight as flight

            with pytest.raises(flight.FlightUnauthorizedError):
                client.list_sequences()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            _, err = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            _, err = server.communicate()
    assert "clear text" in err, "serve must warn when API keys are on and TLS is off"
