"""Configuration resolution: flag > environment > config file > default; secrets handling."""

import pytest

from mosaicod.config import ConfigError, load_settings


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
