"""TLS for the Flight server: load and check the PEM files named in the settings.

``server_tls_kwargs(settings)`` returns the extra keyword arguments for
``pyarrow.flight.FlightServerBase.__init__`` (``{}`` when TLS is off).  Every problem an operator
can cause — missing or unreadable file, content that is not PEM, an encrypted private key, a key
that does not belong to the certificate, an unusable client CA bundle — is reported as a
``ConfigError`` naming the setting and the file, before the server binds its port.

Mutual TLS (ours, beyond upstream): with ``MOSAICOD_TLS_CLIENT_CA_FILE`` set, clients must present
a certificate signed by one of those CAs.  The 0.7.0 SDK cannot send a client certificate, so
this is for deployments whose clients are plain Flight/gRPC clients or a TLS-terminating proxy.
"""

from __future__ import annotations

from pathlib import Path

from .config import ConfigError, Settings


def _read(setting_env: str, path: str) -> bytes:
    if not path:
        raise ConfigError(f"{setting_env} is required when MOSAICOD_TLS_ENABLED=true "
                          "(path to a PEM file)")
    p = Path(path).expanduser()
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{setting_env}: file {str(p)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{setting_env}: {str(p)!r} is a directory, expected a PEM file") from None
    except OSError as exc:
        raise ConfigError(f"{setting_env}: cannot read {str(p)!r}: {exc.strerror}") from None


def _certificates(setting_env: str, path: str, data: bytes) -> list:
    from cryptography import x509

    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(f"{setting_env}: {path!r} contains no PEM certificate "
                          "(expected a '-----BEGIN CERTIFICATE-----' block)")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"{setting_env}: {path!r} holds an invalid PEM certificate ({exc})") from None


def _private_key(setting_env: str, path: str, data: bytes):
    from cryptography.hazmat.primitives import serialization

    if b"PRIVATE KEY-----" not in data:
        raise ConfigError(f"{setting_env}: {path!r} contains no PEM private key "
                          "(expected a '-----BEGIN PRIVATE KEY-----' block)")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{setting_env}: the private key in {path!r} is encrypted; "
                          "provide an unencrypted PEM key (protect it with file permissions)") from None
    except Exception as exc:  # cryptography raises ValueError / UnsupportedAlgorithm
        raise ConfigError(f"{setting_env}: {path!r} holds an invalid private key ({exc})") from None


def _public_bytes(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def load_server_identity(settings: Settings) -> tuple[bytes, bytes]:
    """(certificate chain PEM, private key PEM), checked to belong together."""
    cert_env, key_env = "MOSAICOD_TLS_CERT_FILE", "MOSAICOD_TLS_PRIVATE_KEY_FILE"
    cert_pem = _read(cert_env, settings.tls_cert_file)
    key_pem = _read(key_env, settings.tls_private_key_file)
    chain = _certificates(cert_env, settings.tls_cert_file, cert_pem)
    key = _private_key(key_env, settings.tls_private_key_file, key_pem)
    if _public_bytes(chain[0].public_key()) != _public_bytes(key.public_key()):
        raise ConfigError(
            f"{key_env}: the private key in {settings.tls_private_key_file!r} does not match the "
            f"certificate in {settings.tls_cert_file!r} (the first certificate of "
            f"{cert_env} must be the server's own certificate)")
    return cert_pem, key_pem


def load_client_ca(settings: Settings) -> bytes:
    env = "MOSAICOD_TLS_CLIENT_CA_FILE"
    data = _read(env, settings.tls_client_ca_file)
    _certificates(env, settings.tls_client_ca_file, data)
    return data


def server_tls_kwargs(settings: Settings) -> dict:
    """Extra kwargs for ``FlightServerBase.__init__``; ``{}`` when TLS is off.  Raises ConfigError."""
    if not settings.tls_enabled:
        if settings.tls_client_ca_file:
            raise ConfigError("MOSAICOD_TLS_CLIENT_CA_FILE (mutual TLS) needs MOSAICOD_TLS_ENABLED=true")
        return {}
    cert_pem, key_pem = load_server_identity(settings)
    kwargs: dict = {"tls_certificates": [(cert_pem, key_pem)]}
    if settings.tls_client_ca_file:
        kwargs["verify_client"] = True
        kwargs["root_certificates"] = load_client_ca(settings)
    return kwargs


def scheme(settings: Settings) -> str:
    return "grpc+tls" if settings.tls_enabled else "grpc"


def warn_if_insecure(settings: Settings, log) -> bool:
    """Warn when API keys travel in clear text (keys on, TLS off).  Returns True if it warned."""
    if settings.api_key_enabled and not settings.tls_enabled:
        log.warning("API keys are enabled but TLS is off: keys travel in clear text. "
                    "Enable TLS (MOSAICOD_TLS_ENABLED=true with MOSAICOD_TLS_CERT_FILE and "
                    "MOSAICOD_TLS_PRIVATE_KEY_FILE) unless the server is reachable only locally.")
        return True
    return False
