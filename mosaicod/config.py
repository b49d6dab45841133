"""Configuration: the ``Settings`` dataclass is the one table of settings, resolved CLI flag >
environment > config file > default (docs/operations.md#configuration).

Every setting has an upstream-style environment name (``MOSAICOD_*``), a place in the TOML config
file (``[section] key``) and, where a command offers it, a command-line flag generated from the same
line (``mosaicod/commands/common.py``).  Secrets are never read from the config file (only from the
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


_PARSERS: dict[str, Callable[[Any], Any]] = {"str": _parse_str, "int": _parse_int, "bool": _parse_bool}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One configuration setting, described by its field on ``Settings``."""

    name: str  # attribute name on Settings
    section: str  # TOML section ("" = never in the config file: secrets)
    default: Any
    parse: Callable[[Any], Any]
    type: str  # "str" | "int" | "bool"
    secret: bool = False
    help: str = ""
    choices: tuple[str, ...] | None = None
    flag: str | None = None  # command-line flag when not --<name-with-dashes>
    metavar: str | None = None

    @property
    def env(self) -> str:
        return "MOSAICOD_" + self.name.upper()

    @property
    def flag_name(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


def setting(section: str, default: Any, help: str = "", *, secret: bool = False,
            choices: tuple[str, ...] | None = None, flag: str | None = None,
            metavar: str | None = None) -> Any:
    """Declare a field of ``Settings``: its TOML section, default and help (the environment name
    and the flag derive from the field name; the type from its annotation)."""
    return dataclasses.field(default=default, metadata={
        "setting": {"section": section, "secret": secret, "help": help, "choices": choices,
                    "flag": flag, "metavar": metavar}})


@dataclasses.dataclass(frozen=True)
class Settings:
    """The resolved configuration: one typed field per setting (docs/operations.md#configuration).

    A new setting is one line here: its environment variable (``MOSAICOD_<NAME>``), config-file
    key (``[section] name``), command-line flag (``--name``, where a command offers it) and help
    all derive from it.  Cross-setting checks go in ``_validate``.
    """

    # server
    host: str = setting("server", "127.0.0.1", "address to listen on")
    port: int = setting("server", 6726, "port to listen on")
    data_dir: str = setting("server", "mosaicod-data",
                            "data directory: embedded PostgreSQL in DIR/postgres, local store in DIR/store",
                            metavar="DIR")
    max_grpc_decode_message_size: int = setting(
        "server", 50 * MiB, "largest incoming gRPC message in bytes (4 MiB..512 MiB)")
    target_grpc_encode_message_size: int = setting(
        "server", 25 * MiB, "target size of one streamed DoGet message in bytes")
    max_batch_size: int = setting("server", 8192, "max rows per streamed DoGet batch")
    gzip_enabled: bool = setting("server", False, "gzip-compress responses")
    api_key_enabled: bool = setting("server", False, "require an API key on every call")
    metrics_port: int = setting("server", 0, "serve /healthz and /metrics over HTTP on this port (0 = off)",
                                metavar="PORT")
    metrics_host: str = setting("server", "127.0.0.1", "address of the /healthz and /metrics endpoint")
    heartbeat_interval: int = setting(
        "server", 10, "seconds between instance-registry heartbeats (ps: alive < 3x <= stale < 10x <= dead)")
    # TLS
    tls_enabled: bool = setting("tls", False, "serve gRPC over TLS")
    tls_cert_file: str = setting("tls", "", "PEM certificate chain")
    tls_private_key_file: str = setting("tls", "", "PEM private key")
    tls_client_ca_file: str = setting("tls", "", "PEM CA bundle: require client certificates (mutual TLS)")
    # database
    db_url: str = setting("database", "", "PostgreSQL URL (postgresql://host:port/db); empty = embedded PostgreSQL")
    db_user: str = setting("database", "", "PostgreSQL user (overrides the URL's)")
    db_password: str = setting("", "", "PostgreSQL password", secret=True)
    max_db_connections: int = setting("database", 19, "connection pool size")
    # store
    store_endpoint: str = setting(
        "store", "", "S3 endpoint URL (http[s]://host:port) or file:///abs/path; empty = <data-dir>/store")
    store_bucket: str = setting("store", "mosaicod", "bucket (S3) or sub-folder (file://)")
    store_region: str = setting("store", "us-east-1", "S3 region")
    store_access_key: str = setting("store", "", "S3 access key id")
    store_secret_key: str = setting("", "", "S3 secret access key", secret=True)
    # ingest / encoding
    max_chunk_size: int = setting(
        "encoding", 256 * MiB, "roll to a new Parquet chunk file once the current one reaches this many bytes")
    row_group_size: int = setting(
        "encoding", 32 * MiB, "Arrow bytes buffered (and sorted) per Parquet row group during ingest")
    # maintenance
    cleanup_time_interval: int = setting("cleanup", 0, "repeat every S seconds; 0 = one run, then exit",
                                         flag="--time-interval", metavar="S")
    cleanup_retention_duration: int = setting(
        "cleanup", 86400, "keep TO_DELETE-marked folders S seconds before deleting them",
        flag="--retention-duration", metavar="S")
    store_optimizer_time_interval: int = setting(
        "store_optimizer", 0, "repeat every S seconds; 0 = one pass, then exit", flag="--time-interval", metavar="S")
    store_optimizer_max_chunk_size: int = setting(
        "store_optimizer", 256 * MiB, "target size in bytes of the chunk files the store optimizer writes",
        flag="--max-chunk-size", metavar="BYTES")
    # logging
    log_level: str = setting("logging", "info", "log verbosity", choices=("debug", "info", "warning", "error"))
    log_format: str = setting("logging", "pretty", "log format", choices=("json", "pretty", "plain"))

    # where each value came from: name -> "cli" | "env" | "file" | "default" | "override"
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def values(self) -> dict[str, Any]:
        return {s.name: getattr(self, s.name) for s in SETTINGS}

    def replace(self, **changes: Any) -> "Settings":
        for k in changes:
            if k not in _BY_NAME:
                raise KeyError(k)
        return dataclasses.replace(self, **changes,
                                   sources={**self.sources, **dict.fromkeys(changes, "override")})

    def redacted(self) -> dict[str, Any]:
        """Settings safe to log: secrets replaced by '***' (or '' when unset)."""
        out = {}
        for s in SETTINGS:
            v = getattr(self, s.name)
            out[s.name] = ("***" if v else "") if s.secret else v
        return out

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()


SETTINGS: tuple[Setting, ...] = tuple(
    Setting(name=f.name, default=f.default, parse=_PARSERS[f.type], type=f.type, **f.metadata["setting"])
    for f in dataclasses.fields(Settings) if "setting" in f.metadata)

_BY_NAME = {s.name: s for s in SETTINGS}


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
    return Settings(**values, sources=sources)


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
