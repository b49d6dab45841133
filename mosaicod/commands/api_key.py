"""`mosaicod api-key ...`: create, list, inspect, revoke and purge API keys in the catalog.

Works on the same catalog as `serve` (same --config / --data-dir / MOSAICOD_DB_URL resolution).
Keys are enforced by the server only when it runs with MOSAICOD_API_KEY_ENABLED=true.
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timedelta, timezone

from .. import apikey
from ..catalog import db, keys
from ..errors import MosaicoError
from .common import add_config_options, fail, settings_from_args

_Formatter = argparse.RawDescriptionHelpFormatter

DESCRIPTION = """\
Manage the API keys that clients pass with MosaicoClient.connect(..., api_key=KEY) (or the
MOSAICO_API_KEY environment variable).  Keys are checked on every call when the server runs with
MOSAICOD_API_KEY_ENABLED=true.  A key looks like msco_<32 characters>_<fingerprint>; the 8-character
fingerprint is its public name (shown by `list`, used by `status` and `revoke`).  Only a hash of
each key is stored: a lost key cannot be recovered, create a new one.

Permissions are independent flags:
  read    GetFlightInfo, GetSchema, ListFlights, DoGet, query, notification lists, filters
  write   DoPut, sequence/session/topic create, session finalize, notification create
  delete  sequence/session/topic delete, notification purge
"""

CREATE_HELP = """\
Create a key and print it.  The key is the LAST line of standard output and is shown only this
once.  Examples:
  mosaicod api-key create --permissions read
  mosaicod api-key create --permissions read,write -d "ingest robot 7" --expires-in P90D
  mosaicod api-key create --permissions "read|write|delete" --expires-at 2030-01-31T00:00:00Z
"""


# -- expiration arguments -------------------------------------------------------------------------

_DURATION_RE = re.compile(
    r"^P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:[.,]\d+)?)S)?)?$")


def parse_duration(text: str) -> timedelta:
    """ISO-8601 duration (``P30D``, ``PT1H``, ``P1DT12H``, ``P2W``); a year counts as 365 days and
    a month as 30 days."""
    raw = (text or "").strip().upper()
    m = _DURATION_RE.match(raw)
    if m is None or raw in ("P", "PT") or raw.endswith("T"):
        raise ValueError(f"{text!r} is not an ISO-8601 duration (examples: P30D, PT1H, P1DT12H, P2W)")
    g = {k: v for k, v in m.groupdict().items() if v is not None}
    delta = timedelta(
        days=int(g.get("years", 0)) * 365 + int(g.get("months", 0)) * 30
        + int(g.get("weeks", 0)) * 7 + int(g.get("days", 0)),
        hours=int(g.get("hours", 0)), minutes=int(g.get("minutes", 0)),
        seconds=float(g.get("seconds", "0").replace(",", ".")))
    if delta <= timedelta(0):
        raise ValueError(f"duration {text!r} must be longer than zero")
    return delta


def parse_rfc3339(text: str) -> datetime:
    """RFC 3339 date-time with an explicit offset, e.g. ``2030-01-31T12:00:00Z``."""
    raw = (text or "").strip()
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 time (example: 2030-01-31T12:00:00Z)") from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset: add Z or +HH:MM (example: 2030-01-31T12:00:00Z)")
    return when


def _add_fingerprint(p: argparse.ArgumentParser) -> None:
    p.add_argument("fingerprint", metavar="FINGERPRINT",
                   help="the key's 8-character fingerprint (last part of the key, see `list`)")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "api-key", help="manage API keys (create, list, status, revoke, purge)",
        description=DESCRIPTION, formatter_class=_Formatter)
    sub = parser.add_subparsers(dest="api_key_command", metavar="ACTION", required=True)

    p = sub.add_parser("create", help="create a key and print it once", description=CREATE_HELP,
                       formatter_class=_Formatter)
    p.add_argument("-p", "--permissions", required=True, metavar="PERMS",
                   help="any combination of read, write, delete separated by ',' or '|' "
                        "(e.g. read,write)")
    p.add_argument("-d", "--description", default="", metavar="TEXT",
                   help="free text shown by list/status (who or what uses the key)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--expires-in", metavar="DURATION",
                      help="ISO-8601 duration from now: P30D, PT12H, P1DT6H, P2W "
                           "(Y = 365 days, M before T = 30 days); default: never expires")
    when.add_argument("--expires-at", metavar="TIME",
                      help="RFC 3339 time with offset, e.g. 2030-01-31T12:00:00Z; "
                           "default: never expires")
    add_config_options(p)
    p.set_defaults(func=run_create)

    p = sub.add_parser("list", help="list keys (fingerprints, permissions, state; never secrets)",
                       description="List every key with its fingerprint, permissions, state "
                                   "(active/expired/revoked), creation and expiration times and "
                                   "description.  Secrets are never shown (they are not stored).",
                       formatter_class=_Formatter)
    add_config_options(p)
    p.set_defaults(func=run_list)

    p = sub.add_parser("status", help="show one key", formatter_class=_Formatter,
                       description="Show the permissions, state and times of the key with this "
                                   "fingerprint.  Exit status 0 if the key is active, 3 if it is "
                                   "expired or revoked, 1 if it does not exist.")
    _add_fingerprint(p)
    add_config_options(p)
    p.set_defaults(func=run_status)

    p = sub.add_parser("revoke", help="revoke a key (refused from the next call on)",
                       formatter_class=_Formatter,
                       description="Revoke the key with this fingerprint: every later call with "
                                   "it is refused, also on running servers.  Revoked keys stay "
                                   "listed until `purge`.")
    _add_fingerprint(p)
    add_config_options(p)
    p.set_defaults(func=run_revoke)

    p = sub.add_parser("purge", help="delete expired and revoked keys (or all with --all)",
                       formatter_class=_Formatter,
                       description="Delete the keys that can no longer be used (expired or "
                                   "revoked).  With --all delete every key: clients then need "
                                   "new keys.")
    p.add_argument("-A", "--all", action="store_true", dest="purge_all",
                   help="delete every key, including active ones")
    add_config_options(p)
    p.set_defaults(func=run_purge)


def _engine(args):
    settings = settings_from_args(args)
    try:
        return db.connect(settings)
    except db.CatalogUnavailable as exc:
        raise _Fail(str(exc)) from None


class _Fail(Exception):
    pass


def _guard(fn):
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except _Fail as exc:
            return fail(str(exc))
        except MosaicoError as exc:
            return fail(exc.message)
    wrapper.__name__ = fn.__name__
    return wrapper


def _with_engine(args, fn):
    engine = _engine(args)
    try:
        return fn(engine)
    finally:
        engine.dispose()


def _fingerprint(args) -> str:
    try:
        return apikey.check_fingerprint(args.fingerprint)
    except ValueError as exc:
        raise _Fail(str(exc)) from None


def _describe(info: apikey.ApiKeyInfo) -> list[str]:
    lines = [
        f"fingerprint: {info.fingerprint}",
        f"permissions: {apikey.format_permissions(info.permissions)}",
        f"state:       {info.state()}",
        f"created:     {apikey.format_time(info.created_at)}",
        f"expires:     {apikey.format_time(info.expires_at)}",
    ]
    if info.revoked_at is not None:
        lines.append(f"revoked:     {apikey.format_time(info.revoked_at)}")
    lines.append(f"description: {info.description}")
    return lines


@_guard
def run_create(args: argparse.Namespace) -> int:
    try:
        perms = apikey.parse_permissions(args.permissions)
        lifetime = parse_duration(args.expires_in) if args.expires_in else None
        expires_at = parse_rfc3339(args.expires_at) if args.expires_at else None
        if expires_at is not None and expires_at <= datetime.now(timezone.utc):
            raise ValueError(f"--expires-at {args.expires_at} is not in the future")
    except ValueError as exc:
        raise _Fail(str(exc)) from None

    def create(engine):
        # a duration counts from the moment the key is stored, not from when the command started
        when = datetime.now(timezone.utc) + lifetime if lifetime is not None else expires_at
        return keys.create_key(engine, perms, args.description, when)

    key, info = _with_engine(args, create)
    print(f"Created API key {info.fingerprint}: permissions {apikey.format_permissions(perms)}, "
          f"expires {apikey.format_time(info.expires_at)}.")
    print("Store it now: it cannot be shown again (only its hash is kept).")
    print(key, flush=True)
    return 0


@_guard
def run_list(args: argparse.Namespace) -> int:
    found = _with_engine(args, keys.list_keys)
    if not found:
        print("No API keys. Create one with `mosaicod api-key create --permissions read`.")
        return 0
    rows = [("FINGERPRINT", "PERMISSIONS", "STATE", "CREATED", "EXPIRES", "DESCRIPTION")]
    for k in found:
        rows.append((k.fingerprint, apikey.format_permissions(k.permissions), k.state(),
                     apikey.format_time(k.created_at), apikey.format_time(k.expires_at), k.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0


@_guard
def run_status(args: argparse.Namespace) -> int:
    fp = _fingerprint(args)
    info = _with_engine(args, lambda e: keys.key_status(e, fp))
    print("\n".join(_describe(info)))
    return 0 if info.state() == "active" else 3


@_guard
def run_revoke(args: argparse.Namespace) -> int:
    fp = _fingerprint(args)
    info = _with_engine(args, lambda e: keys.revoke_key(e, fp))
    print(f"API key {fp} revoked at {apikey.format_time(info.revoked_at)}.")
    return 0


@_guard
def run_purge(args: argparse.Namespace) -> int:
    gone = _with_engine(args, lambda e: keys.purge_keys(e, all_keys=args.purge_all))
    what = "API keys" if args.purge_all else "expired or revoked API keys"
    print(f"Purged {len(gone)} {what}" + (f": {', '.join(gone)}." if gone else "."))
    return 0
