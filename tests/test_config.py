"""Configuration resolution: flag > environment > config file > default; secrets handling."""

from pathlib import Path

import pytest

from mosaicod.config import MiB, ConfigError, load_settings


def write(tmp_path, text: str):
    p = tmp_path / "mosaicod.toml"
    p.write_text(text)
    return p


def test_precedence_flag_env_file_default(tmp_path):
    cfg = write(tmp_path, '[server]\nport = 7000\nhost = "127.0.0.2"\n[logging]\nlog_level = "debug"\n')
    s = load_settings({}, env={}, config_file=cfg)
    assert (s.port, s.host, s.log_level, s.max_batch_size) == (7000, "127.0.0.2", "debug", 8192)
    assert s.sources["port"] == "file" and s.sources["max_batch_size"] == "default"
    s = load_settings({}, env={"MOSAICOD_PORT": "7100"}, config_file=cfg)
    assert (s.port, s.sources["port"]) == (7100, "env")
    s = load_settings({"port": 7200, "host": None}, env={"MOSAICOD_PORT": "7100"}, config_file=cfg)
    assert (s.port, s.sources["port"], s.host) == (7200, "cli", "127.0.0.2")


def test_config_file_from_environment(tmp_path):
    cfg = write(tmp_path, "[server]\nport = 7300\n")
    assert load_settings({}, env={"MOSAICOD_CONFIG_FILE": str(cfg)}).port == 7300


@pytest.mark.parametrize("text, match", [
    ("[server]\nprot = 1\n", "unknown key 'prot'"),
    ("[nope]\nx = 1\n", r"unknown section \[nope\]"),
    ("[database]\ndb_password = 'x'\n", "secrets come only from the environment"),
    ("[store]\nstore_secret_key = 'x'\n", "secrets come only from the environment"),
    ("[server\n", "not valid TOML"),
    ("[server]\nport = 'abc'\n", r"\[server\] port: invalid value"),
])
def test_bad_config_files_are_rejected(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_settings({}, env={}, config_file=write(tmp_path, text))


def test_missing_config_file():
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings({}, env={}, config_file="/nonexistent/mosaicod.toml")


@pytest.mark.parametrize("env, match", [
    ({"MOSAICOD_PORT": "70000"}, "not a valid TCP port"),
    ({"MOSAICOD_PORT": "x"}, "MOSAICOD_PORT: invalid value"),
    ({"MOSAICOD_LOG_FORMAT": "xml"}, "not one of"),
    ({"MOSAICOD_API_KEY_ENABLED": "maybe"}, "expected a boolean"),
    ({"MOSAICOD_STORE_ENDPOINT": "relative/path"}, "must be an S3 URL"),
    ({"MOSAICOD_MAX_GRPC_DECODE_MESSAGE_SIZE": "1024"}, "between 4 MiB and 512 MiB"),
])
def test_bad_values_name_the_setting(env, match):
    with pytest.raises(ConfigError, match=match):
        load_settings({}, env=env)


def test_secrets_from_file_and_never_shown(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("s3cr3t-value\n")
    s = load_settings({}, env={"MOSAICOD_DB_PASSWORD_FILE": str(pw), "MOSAICOD_STORE_SECRET_KEY": "k3y-value"})
    assert s.db_password == "s3cr3t-value" and s.store_secret_key == "k3y-value"
    shown = repr(s.redacted())
    assert "s3cr3t" not in shown and "k3y" not in shown and "***" in shown
    with pytest.raises(ConfigError, match="cannot read secret file") as info:
        load_settings({}, env={"MOSAICOD_DB_PASSWORD_FILE": str(tmp_path / "missing")})
    assert "s3cr3t" not in str(info.value)


# -- precedence through the real CLI path (argparse -> settings_from_args) -------------------------

@pytest.fixture
def cli_env(monkeypatch, restore_logging):
    for name in ("MOSAICOD_CONFIG_FILE", "MOSAICOD_HOST", "MOSAICOD_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MOSAICOD_DATA_DIR", "/envdir")
    monkeypatch.setenv("MOSAICOD_PORT", "7100")
    monkeypatch.setenv("MOSAICOD_LOG_LEVEL", "warning")


def _cli_settings(argv):
    from mosaicod import cli
    from mosaicod.commands.common import settings_from_args

    return settings_from_args(cli.build_parser().parse_args(argv))


def test_cli_flags_beat_environment(cli_env):
    s = _cli_settings(["serve", "--data-dir", "/flagdir", "--port", "7200", "--log-level", "debug"])
    assert (s.data_dir, s.port, s.log_level) == ("/flagdir", 7200, "debug")
    assert s.sources["port"] == "cli" and s.sources["data_dir"] == "cli" and s.sources["log_level"] == "cli"


def test_cli_environment_used_without_flags(cli_env):
    s = _cli_settings(["serve"])
    assert (s.data_dir, s.port, s.log_level) == ("/envdir", 7100, "warning")
    assert s.sources["port"] == "env" and s.sources["data_dir"] == "env" and s.sources["log_level"] == "env"


def test_cli_environment_beats_config_file(cli_env, tmp_path):
    cfg = write(tmp_path, '[server]\nport = 7000\nhost = "127.0.0.9"\n'
                          '[logging]\nlog_level = "error"\nlog_format = "plain"\n')
    s = _cli_settings(["serve", "--config", str(cfg)])
    assert (s.port, s.sources["port"]) == (7100, "env")             # in both: environment wins
    assert (s.log_level, s.sources["log_level"]) == ("warning", "env")
    assert (s.host, s.sources["host"]) == ("127.0.0.9", "file")     # only in the file
    assert (s.log_format, s.sources["log_format"]) == ("plain", "file")
    s = _cli_settings(["serve", "--config", str(cfg), "--port", "7200"])
    assert (s.port, s.sources["port"], s.host) == (7200, "cli", "127.0.0.9")


# -- documented defaults (README "Configuration" table) --------------------------------------------

def test_documented_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings({}, env={})
    assert set(s.sources.values()) == {"default"}
    assert (s.host, s.port) == ("127.0.0.1", 6726)
    assert s.data_dir == "mosaicod-data" and s.data_path == (tmp_path / "mosaicod-data").resolve()
    assert (s.db_url, s.db_user, s.db_password) == ("", "", "")       # empty = embedded PostgreSQL
    assert s.store_endpoint == "" and s.store_bucket == "mosaicod"   # empty = <data-dir>/store
    assert (s.store_access_key, s.store_secret_key) == ("", "")
    assert (s.log_level, s.log_format) == ("info", "pretty")
    assert s.api_key_enabled is False and s.gzip_enabled is False
    assert s.tls_enabled is False
    assert (s.tls_cert_file, s.tls_private_key_file, s.tls_client_ca_file) == ("", "", "")
    assert s.max_grpc_decode_message_size == 50 * MiB == 52428800
    assert s.target_grpc_encode_message_size == 25 * MiB == 26214400
    assert s.max_batch_size == 8192
    assert s.max_chunk_size == 256 * MiB == 268435456
    assert s.row_group_size == 32 * MiB == 33554432


# -- database credentials, store secret file, store root -------------------------------------------

def test_db_user_and_password_override_the_url():
    from mosaicod.catalog.db import database_url

    url = database_url(load_settings({}, env={"MOSAICOD_DB_URL": "postgresql://a:b@h:5/d",
                                              "MOSAICOD_DB_USER": "u", "MOSAICOD_DB_PASSWORD": "p"}))
    assert (url.username, url.password, url.host, url.port, url.database) == ("u", "p", "h", 5, "d")
    url = database_url(load_settings({}, env={"MOSAICOD_DB_URL": "postgresql://a:b@h:5/d"}))
    assert (url.username, url.password) == ("a", "b")  # unset: the URL's own credentials stay


def test_db_password_file_overrides_the_url(tmp_path):
    from mosaicod.catalog.db import database_url

    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    url = database_url(load_settings({}, env={"MOSAICOD_DB_URL": "postgresql://a:b@h:5/d",
                                              "MOSAICOD_DB_PASSWORD_FILE": str(pw)}))
    assert (url.username, url.password) == ("a", "from-file")


def test_store_secret_key_from_file(tmp_path):
    key = tmp_path / "key"
    key.write_text("st0re-secret\n")
    s = load_settings({}, env={"MOSAICOD_STORE_SECRET_KEY_FILE": str(key)})
    assert (s.store_secret_key, s.sources["store_secret_key"]) == ("st0re-secret", "env")
    assert "st0re" not in repr(s.redacted())
    with pytest.raises(ConfigError, match="MOSAICOD_STORE_SECRET_KEY_FILE: cannot read secret file"):
        load_settings({}, env={"MOSAICOD_STORE_SECRET_KEY_FILE": str(tmp_path / "missing")})
    # the variable itself beats its _FILE
    s = load_settings({}, env={"MOSAICOD_STORE_SECRET_KEY_FILE": str(key), "MOSAICOD_STORE_SECRET_KEY": "direct"})
    assert s.store_secret_key == "direct"


def test_local_store_root_file_endpoint_uses_bucket_subfolder(tmp_path):
    from mosaicod.store.objstore import ObjectStore

    store = ObjectStore.from_settings(load_settings({}, env={
        "MOSAICOD_STORE_ENDPOINT": f"file://{tmp_path}", "MOSAICOD_STORE_BUCKET": "bkt",
        "MOSAICOD_DATA_DIR": str(tmp_path / "data")}))
    assert store.root == f"{tmp_path}/bkt" and Path(store.root).is_dir()
    assert not (tmp_path / "data" / "store").exists()
    store = ObjectStore.from_settings(load_settings({}, env={"MOSAICOD_STORE_ENDPOINT": f"file://{tmp_path}/"}))
    assert store.root == f"{tmp_path}/mosaicod"  # default bucket name as the sub-folder


def test_local_store_root_defaults_to_data_dir(tmp_path):
    from mosaicod.store.objstore import ObjectStore

    store = ObjectStore.from_settings(load_settings({}, env={"MOSAICOD_DATA_DIR": str(tmp_path / "data")}))
    assert store.root == str((tmp_path / "data").resolve() / "store") and Path(store.root).is_dir()
