"""TLS settings are checked before the server starts: clear errors for every bad file."""

from __future__ import annotations

from pathlib import Path

import pytest

from mosaicod import tls
from mosaicod.config import ConfigError, load_settings
from tests.security_certs import CA, write_server_files


@pytest.fixture(scope="module")
def pem(tmp_path_factory):
    return write_server_files(tmp_path_factory.mktemp("tls"), CA("test-ca"))


def _settings(**values):
    env = {f"MOSAICOD_{k.upper()}": str(v) for k, v in values.items()}
    return load_settings(env={"MOSAICOD_TLS_ENABLED": "true", **env})


def test_valid_files_give_server_kwargs(pem):
    kw = tls.server_tls_kwargs(_settings(tls_cert_file=pem["cert"], tls_private_key_file=pem["key"]))
    assert kw == {"tls_certificates": [(pem["cert"].read_bytes(), pem["key"].read_bytes())]}


def test_client_ca_turns_on_mutual_tls(pem):
    kw = tls.server_tls_kwargs(_settings(tls_cert_file=pem["cert"], tls_private_key_file=pem["key"],
                                         tls_client_ca_file=pem["ca"]))
    assert kw["verify_client"] is True
    assert kw["root_certificates"] == pem["ca"].read_bytes()


@pytest.mark.parametrize("cert,key,ca,match", [
    (None, "key", None, "MOSAICOD_TLS_CERT_FILE is required"),
    ("cert", None, None, "MOSAICOD_TLS_PRIVATE_KEY_FILE is required"),
    ("missing", "key", None, "MOSAICOD_TLS_CERT_FILE: file .* does not exist"),
    ("cert", "missing", None, "MOSAICOD_TLS_PRIVATE_KEY_FILE: file .* does not exist"),
    ("dir", "key", None, "is a directory"),
    ("not_pem", "key", None, "contains no PEM certificate"),
    ("garbled_cert", "key", None, "invalid PEM certificate"),
    ("cert", "not_pem", None, "contains no PEM private key"),
    ("cert", "cert", None, "contains no PEM private key"),
    ("cert", "encrypted_key", None, "is encrypted"),
    ("cert", "other_key", None, "does not match the certificate"),
    ("cert", "key", "not_pem", "MOSAICOD_TLS_CLIENT_CA_FILE: .* no PEM certificate"),
    ("cert", "key", "missing", "MOSAICOD_TLS_CLIENT_CA_FILE: file .* does not exist"),
])
def test_bad_files_are_clear_errors(pem, tmp_path, cert, key, ca, match):
    def path(name):
        if name is None:
            return ""
        if name == "missing":
            return tmp_path / "nope.pem"
        if name == "dir":
            return tmp_path
        return pem[name]

    settings = _settings(tls_cert_file=path(cert), tls_private_key_file=path(key),
                         tls_client_ca_file=path(ca))
    with pytest.raises(ConfigError, match=match):
        tls.server_tls_kwargs(settings)


def test_unreadable_file(pem, tmp_path, monkeypatch):
    """Tests run as root, who reads a chmod-0 file anyway: the permission error is simulated on the
    read tls.py does (Path.read_bytes), for this one path only."""
    locked = tmp_path / "locked.pem"
    locked.write_bytes(pem["key"].read_bytes())
    locked.chmod(0)
    real_read_bytes = Path.read_bytes

    def read_bytes(self):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(ConfigError, match="cannot read") as exc:
        tls.server_tls_kwargs(_settings(tls_cert_file=pem["cert"], tls_private_key_file=locked))
    assert "Permission denied" in str(exc.value)
    assert "MOSAICOD_TLS_PRIVATE_KEY_FILE" in str(exc.value) and str(locked) in str(exc.value)
