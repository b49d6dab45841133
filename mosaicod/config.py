"""Configuration: one table of settings, resolved CLI flag > environment > config file > default.

Every setting has an upstream-style environment name (``MOSAICOD_*``) and a place in the TOML
config file (``[section] key``).  Secrets are never read from the config file (only from the
environment or from a ``*_FILE`` path) and never printed: ``Settings.redacted()`` is what logs see.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any, Callable, Mapping

MiB = 1024 * 1024


class ConfigError(Exception):
    """A setting has an invalid value or the config file is unusable."""


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean (true/false), got {raw!r}")


def _parse_int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"expected an integer, got {raw!r}")
    return int(raw)


def _parse_str(raw: Any) -> str:
    if not isinstance(raw, (str, int, float)):
        raise ValueError(f"expected a string, got {raw!r}")
    return str(raw)


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str  # attribute name on Settings
    section: str  # TOML section ("" = never in the config file: secrets)
    default: Any
    parse: Callable[[Any], Any] = _parse_str
    secret: bool = False
    help: str = ""
    choices: tuple[str, ...] | None = None

    @property
    def env(self) -> str:
        return "MOSAICOD_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    # server
    Setting("host", "server", "127.0.0.1", help="address to listen on"),
    Setting("port", "server", 6726, _parse_int, help="port to listen on"),
    Setting("data_dir", "server", "mosaicod-data",
            help="directory for the embedded PostgreSQL and the local store"),
    Setting("max_grpc_decode_message_size", "server", 50 * MiB, _parse_int,
            help="largest incoming gRPC message in bytes (4 MiB..512 MiB)"),
    Setting("target_grpc_encode_message_size", "server", 25 * MiB, _parse_int,
            help="target size of one streamed DoGet message in bytes"),
    Setting("max_batch_size", "server", 8192, _parse_int, help="max rows per streamed DoGet batch"),
    Setting("gzip_enabled", "server", False, _parse_bool, help="gzip-compress responses"),
    Setting("api_key_enabled", "server", False, _parse_bool, help="require an API key on every call"),
    Setting("metrics_port", "server", 0, _parse_int,
            help="port of the HTTP /healthz and /metrics endpoint (0 = off)"),
    # TLS
    Setting("tls_enabled", "tls", False, _parse_bool, help="serve gRPC over TLS"),
    Setting("tls_cert_file", "tls", "", help="PEM certificate chain"),
    Setting("tls_private_key_file", "tls", "", help="PEM private key"),
    Setting("tls_client_ca_file", "tls", "", help="PEM CA bundle: require client certificates (mutual TLS)"),
    # database
    Setting("db_url", "database", "",
            help="PostgreSQL URL (postgresql://host:port/db); empty = embedded PostgreSQL"),
    Setting("db_user", "database", "", help="PostgreSQL user (overrides the URL's)"),
    Setting("db_password", "", "", secret=True, help="PostgreSQL password"),
    Setting("max_db_connections", "database", 19, _parse_int, help="connection pool size"),
    # store
    Setting("store_endpoint", "store", "",
            help="S3 endpoint URL (http[s]://host:port) or file:///abs/path; empty = <data-dir>/store"),
    Setting("store_bucket", "store", "mosaicod", help="bucket (S3) or sub-folder (file://)"),
    Setting("store_region", "store", "us-east-1", help="S3 region"),
    Setting("store_access_key", "store", "", help="S3 access key id"),
    Setting("store_secret_key", "", "", secret=True, help="S3 secret access key"),
    # ingest / encoding
    Setting("max_chunk_size", "encoding", 256 * MiB, _parse_int,
            help="roll to a new Parquet chunk file once the current one reaches this many bytes"),
    Setting("row_group_size", "encoding", 32 * MiB, _parse_int,
            help="Arrow bytes buffered (and sorted) per Parquet row group during ingest"),
    # operations (cleanup, store optimizer, instance registry, metrics)
    Setting("metrics_host", "server", "127.0.0.1", help="address of the /healthz and /metrics endpoint"),
    Setting("heartbeat_interval", "server", 10, _parse_int,
            help="seconds between instance-registry heartbeats (ps: alive < 3x <= stale < 10x <= dead)"),
    Setting("cleanup_time_interval", "cleanup", 0, _parse_int,
            help="seconds between cleanup runs (0 = one run, then exit)"),
    Setting("cleanup_retention_duration", "cleanup", 86400, _parse_int,
            help="seconds a TO_DELETE-marked folder is kept before it is physically removed"),
    Setting("store_optimizer_time_interval", "store_optimizer", 0, _parse_int,
            help="seconds between store-optimizer passes (0 = one pass, then exit)"),
    Setting("store_optimizer_max_chunk_size", "store_optimizer", 256 * MiB, _parse_int,
            help="target size in bytes of the chunk files the store optimizer writes"),
    # logging
    Setting("log_level", "logging", "info", choices=("debug", "info", "warning", "error")),
    Setting("log_format", "logging", "pretty", choices=("json", "pretty", "plain")),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclasses.dataclass(frozen=True)
class Settings:
    values: Mapping[str, Any]
    sources: Mapping[str, str]  # name -> "cli" | "env" | "file" | "default"

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def replace(self, **changes: Any) -> "Settings":
        values = dict(self.values)
        sources = dict(self.sources)
        for k, v in changes.items():
            if k not in _BY_NAME:
                raise KeyError(k)
            values[k] = v
            sources[k] = "override"
        return Settings(values, sources)

    def redacted(self) -> dict[str, Any]:
        """Settings safe to log: secrets replaced by '***' (or '' when unset)."""
        out = {}
        for s in SETTINGS:
            v = self.values[s.name]
            out[s.name] = ("***" if v else "") if s.secret else v
        return out

    @property
    def data_path(self) -> Path:
        return Path(self.values["data_dir"]).expanduser().resolve()


def _read_secret_file(path: str, env_name: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{env_name}: cannot read secret file {path!r}: {exc.strerror}") from None


def _load_file(path: str | os.PathLike | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    flat: dict[str, Any] = {}
    sections = {s.section for s in SETTINGS if s.section}
    for section, table in doc.items():
        if section not in sections or not isinstance(table, dict):
            raise ConfigError(
                f"config file {str(path)!r}: unknown section [{section}] "
                f"(known: {', '.join(sorted(sections))})")
        for key, value in table.items():
            setting = _BY_NAME.get(key)
            if (setting is None or setting.section != section) and f"{section}_{key}" in _BY_NAME:
                setting = _BY_NAME[f"{section}_{key}"]
            if setting is None or setting.section != section:
                secret_hint = ""
                if key.endswith(("password", "secret_key")):
                    secret_hint = " (secrets come only from the environment or a *_FILE path)"
                raise ConfigError(
                    f"config file {str(path)!r}: unknown key {key!r} in [{section}]{secret_hint}")
            flat[setting.name] = value
    return flat


def load_settings(cli: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
                  config_file: str | os.PathLike | None = None) -> Settings:
    """Resolve every setting: CLI flag > environment > config file > default.

    ``cli`` holds only the flags the user actually gave (None values are ignored).
    The config file path itself comes from ``config_file`` or ``MOSAICOD_CONFIG_FILE``.
    """
    env = os.environ if env is None else env
    cli = {k: v for k, v in (cli or {}).items() if v is not None}
    file_values = _load_file(config_file or env.get("MOSAICOD_CONFIG_FILE"))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for s in SETTINGS:
        if s.name in cli:
            raw, src = cli[s.name], "cli"
        elif s.env in env:
            raw, src = env[s.env], "env"
        elif s.secret and env.get(s.env + "_FILE"):
            raw, src = _read_secret_file(env[s.env + "_FILE"], s.env + "_FILE"), "env"
        elif s.name in file_values:
            raw, src = file_values[s.name], "file"
        else:
            raw, src = s.default, "default"
        try:
            value = s.parse(raw)
        except (TypeError, ValueError) as exc:
            where = {"cli": f"--{s.name.replace('_', '-')}", "env": s.env,
                     "file": f"[{s.section}] {s.name}"}.get(src, s.name)
            shown = "***" if s.secret else repr(raw)
            raise ConfigError(f"{where}: invalid value {shown}: {exc}") from None
        if s.choices and value not in s.choices:
            raise ConfigError(f"{s.env}: {value!r} is not one of {', '.join(s.choices)}")
        values[s.name] = value
        sources[s.name] = src
    _validate(values)
    return Settings(values, sources)


def _validate(v: dict[str, Any]) -> None:
    if not (0 < v["port"] < 65536):
        raise ConfigError(f"MOSAICOD_PORT: {v['port']} is not a valid TCP port")
    if not (4 * MiB <= v["max_grpc_decode_message_size"] <= 512 * MiB):
        raise ConfigError("MOSAICOD_MAX_GRPC_DECODE_MESSAGE_SIZE must be between 4 MiB and 512 MiB")
    if not (0 < v["target_grpc_encode_message_size"] <= 512 * MiB):
        raise ConfigError("MOSAICOD_TARGET_GRPC_ENCODE_MESSAGE_SIZE must be > 0 and <= 512 MiB")
    if v["max_batch_size"] < 1:
        raise ConfigError("MOSAICOD_MAX_BATCH_SIZE must be >= 1")
    if v["max_chunk_size"] < MiB:
        raise ConfigError("MOSAICOD_MAX_CHUNK_SIZE must be >= 1 MiB")
    if v["row_group_size"] < 64 * 1024:
        raise ConfigError("MOSAICOD_ROW_GROUP_SIZE must be >= 64 KiB")
    for name in ("cleanup_time_interval", "cleanup_retention_duration",
                 "store_optimizer_time_interval", "metrics_port"):
        if v[name] < 0:
            raise ConfigError(f"MOSAICOD_{name.upper()} must be >= 0")
    if v["heartbeat_interval"] < 1:
        raise ConfigError("MOSAICOD_HEARTBEAT_INTERVAL must be >= 1 second")
    if v["store_optimizer_max_chunk_size"] < 64 * 1024:
        raise ConfigError("MOSAICOD_STORE_OPTIMIZER_MAX_CHUNK_SIZE must be >= 64 KiB")
    ep = v["store_endpoint"]
    if ep and not ep.startswith(("file:///", "http://", "https://", "s3://")):
        raise ConfigError(
            f"MOSAICOD_STORE_ENDPOINT: {ep!r} must be an S3 URL (http[s]://host:port) "
            "or an absolute file:///path")
