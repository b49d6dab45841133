"""API key text, hashing, permission/duration/time parsing, TLS file checks (no server, no DB)."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from mosaicod import apikey, auth, errors, tls, transport
from mosaicod.commands import api_key as api_key_cmd
from mosaicod.config import ConfigError, load_settings
from mosaicod.permissions import Permission

KEY_RE = re.compile(r"^msco_[a-z0-9]{32}_[a-z0-9]{8}$")


def test_generated_keys_have_upstream_shape_and_parse_back():
    seen = set()
    for _ in range(50):
        key, payload, fp = apikey.generate_key()
        assert KEY_RE.match(key)
        assert apikey.parse_key(key) == (payload, fp)
        seen.add(payload)
    assert len(seen) == 50


@pytest.mark.parametrize("bad", [
    "", "msco", "msco_wrongauthapikey123_abc12345",  # the client's docs example of a bad key
    "msco_" + "a" * 32,  # no fingerprint
    "MSCO_" + "a" * 32 + "_" + "b" * 8,
    "msco_" + "A" * 32 + "_" + apikey.fingerprint_of("a" * 32),  # upper case payload
    "msco_" + "a" * 31 + "_" + "b" * 8,
    "msco_" + "a" * 32 + "_" + "b" * 9,
    "xxxx_" + "a" * 32 + "_" + apikey.fingerprint_of("a" * 32),
    " msco_" + "a" * 32 + "_" + apikey.fingerprint_of("a" * 32),
    "Bearer msco_" + "a" * 32 + "_" + apikey.fingerprint_of("a" * 32),
])
def test_malformed_keys_are_rejected(bad):
    with pytest.raises(ValueError):
        apikey.parse_key(bad)


def test_mistyped_payload_fails_the_fingerprint_check():
    key, payload, fp = apikey.generate_key()
    typo = payload[:-1] + ("a" if payload[-1] != "a" else "b")
    with pytest.raises(ValueError, match="fingerprint does not match"):
        apikey.parse_key(f"msco_{typo}_{fp}")


def test_hash_is_bound_to_payload_and_fingerprint_and_hides_the_payload():
    _, payload, fp = apikey.generate_key()
    h = apikey.hash_payload(fp, payload)
    assert len(h) == 32
    assert h == apikey.hash_payload(fp, payload)
    assert h != apikey.hash_payload(fp, payload[::-1])
    assert h != apikey.hash_payload("00000000", payload)
    assert payload.encode() not in h and payload not in h.hex()


@pytest.mark.parametrize("text,expected", [
    ("read", Permission.READ),
    ("write", Permission.WRITE),
    ("delete", Permission.DELETE),
    ("read,write", Permission.READ | Permission.WRITE),
    ("write|read", Permission.READ | Permission.WRITE),
    ("delete, read", Permission.READ | Permission.DELETE),
    ("READ|write|Delete", Permission.READ | Permission.WRITE | Permission.DELETE),
    ("read,read", Permission.READ),
])
def test_parse_permissions(text, expected):
    assert apikey.parse_permissions(text) == expected


@pytest.mark.parametrize("bad", ["", ",", "read,", "manage", "read,admin", "all", "rw"])
def test_parse_permissions_rejects(bad):
    with pytest.raises(ValueError):
        apikey.parse_permissions(bad)


def test_format_permissions():
    assert apikey.format_permissions(Permission.READ | Permission.DELETE) == "read,delete"
    assert apikey.format_permissions(7) == "read,write,delete"
    assert apikey.format_permissions(0) == "none"


@pytest.mark.parametrize("text,expected", [
    ("P30D", dt.timedelta(days=30)),
    ("PT1H", dt.timedelta(hours=1)),
    ("PT90M", dt.timedelta(minutes=90)),
    ("PT1.5S", dt.timedelta(seconds=1.5)),
    ("P1DT12H", dt.timedelta(days=1, hours=12)),
    ("P2W", dt.timedelta(days=14)),
    ("P1Y", dt.timedelta(days=365)),
    ("P1M", dt.timedelta(days=30)),
    ("p1d", dt.timedelta(days=1)),
])
def test_parse_duration(text, expected):
    assert api_key_cmd.parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["", "P", "PT", "P1DT", "30D", "1h", "P-1D", "PT0S", "P1H", "forever"])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        api_key_cmd.parse_duration(bad)


def test_parse_rfc3339():
    when = api_key_cmd.parse_rfc3339("2030-01-31T12:00:00Z")
    assert when == dt.datetime(2030, 1, 31, 12, tzinfo=dt.timezone.utc)
    assert api_key_cmd.parse_rfc3339("2030-01-31T14:00:00+02:00") == when
    for bad in ("2030-01-31T12:00:00", "tomorrow", "", "2030-13-01T00:00:00Z"):
        with pytest.raises(ValueError):
            api_key_cmd.parse_rfc3339(bad)


def test_check_fingerprint():
    assert apikey.check_fingerprint("ABCD1234") == "abcd1234"
    key, _, _ = apikey.generate_key()
    with pytest.raises(ValueError, match="not the whole key"):
        apikey.check_fingerprint(key)
    for bad in ("abc", "abcd12345", "abcd-123"):
        with pytest.raises(ValueError):
            apikey.check_fingerprint(bad)


def test_key_state():
    info = apikey.ApiKeyInfo("abcd1234", Permission.READ, "", 100, 200, None)
    assert info.state(now=150) == "active"
    assert info.state(now=200) == "expired"
    assert apikey.ApiKeyInfo("abcd1234", Permission.READ, "", 100, None, 120).state(now=110) == "revoked"


def test_refusal_messages_carry_the_required_wording():
    for token in (None, "", "msco_wrongauthapikey123_abc12345"):
        with pytest.raises(errors.MosaicoError) as exc:
            auth.verify_key(None, token)  # refused before any catalog access
        assert exc.value.message.startswith("Unauthorized:")
        assert "unauthorized" in exc.value.message


# --------------------------------------------------------------------------- settings plumbing


def _settings(**env):
    return load_settings(env={f"MOSAICOD_{k.upper()}": str(v) for k, v in env.items()})


def test_security_middleware_by_settings():
    assert transport.security_middleware(_settings()) == {}
    mw = transport.security_middleware(_settings(gzip_enabled="true"))
    assert list(mw) == ["gzip"]
    with pytest.raises(ValueError):
        transport.security_middleware(_settings(api_key_enabled="true"))
    mw = transport.security_middleware(_settings(api_key_enabled="true"), engine=object())
    assert isinstance(mw["auth"], auth.AuthMiddlewareFactory)


def test_warn_if_insecure():
    class Log:
        def __init__(self):
            self.msgs = []

        def warning(self, msg, **kw):
            self.msgs.append(msg)

    log = Log()
    assert not tls.warn_if_insecure(_settings(), log)
    assert tls.warn_if_insecure(_settings(api_key_enabled="true"), log)
    assert "clear text" in log.msgs[0]
    assert not tls.warn_if_insecure(_settings(api_key_enabled="true", tls_enabled="true"), Log())


def test_tls_off_gives_no_kwargs():
    assert tls.server_tls_kwargs(_settings()) == {}
    assert tls.scheme(_settings()) == "grpc"
    assert tls.scheme(_settings(tls_enabled="true")) == "grpc+tls"
    with pytest.raises(ConfigError, match="needs MOSAICOD_TLS_ENABLED"):
        tls.server_tls_kwargs(_settings(tls_client_ca_file="/x.pem"))
