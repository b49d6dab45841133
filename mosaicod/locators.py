"""Resource locators: validation and normalisation (docs/storage.md#locators).

Sequence ``seq``; topic ``seq/topic/path``; session ``seq:<ULID>``.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from .errors import Kind, MosaicoError, shown

MAX_LOCATOR_LENGTH = 512
_FORBIDDEN = set("!\"'*£$%&. ")


class BadLocator(MosaicoError):
    def __init__(self, locator: str, kind: str | None = None):
        what = f"a valid {kind} locator" if kind else "a valid locator"
        super().__init__(Kind.BAD_REQUEST, f"`{shown(locator, 80)}` is not {what}")


def _segment_ok(text: str, extra_forbidden: str = "") -> bool:
    if not text or not text.isascii() or len(text) > MAX_LOCATOR_LENGTH:
        return False
    if any(c in _FORBIDDEN or c in extra_forbidden or ord(c) < 32 or ord(c) == 127 for c in text):
        return False
    return True


def is_sequence(name: str) -> bool:
    return _segment_ok(name, "/:")


def is_topic(locator: str) -> bool:
    seq, sep, path = locator.partition("/")
    if not sep or not is_sequence(seq):
        return False
    if path.startswith("/") or path.endswith("/") or "//" in path:
        return False
    return _segment_ok(path, ":")


def is_session(locator: str) -> bool:
    if locator.count(":") != 1:
        return False
    seq, _, sid = locator.partition(":")
    return is_sequence(seq) and _segment_ok(sid, "/")


def _strip_slashes(raw: str) -> str:
    text = raw
    if text.startswith("/"):
        text = text[1:]
    if text.endswith("/"):
        text = text[:-1]
    return text


def sequence(raw: object) -> str:
    """Normalise (one leading/trailing '/') and validate a sequence name."""
    if not isinstance(raw, str):
        raise BadLocator(repr(raw), "sequence")
    name = _strip_slashes(raw)
    if not is_sequence(name):
        raise BadLocator(raw, "sequence")
    return name


def topic(raw: object) -> str:
    if not isinstance(raw, str):
        raise BadLocator(repr(raw), "topic")
    loc = raw[1:] if raw.startswith("/") else raw
    if not is_topic(loc):
        raise BadLocator(raw, "topic")
    return loc


def session(raw: object) -> str:
    if not isinstance(raw, str) or not is_session(raw):
        raise BadLocator(str(raw), "session")
    return raw


def topic_sequence(topic_locator: str) -> str:
    return topic_locator.partition("/")[0]


@dataclass(frozen=True)
class Resource:
    kind: str  # "sequence" | "topic"
    locator: str


def resource(raw: object) -> Resource:
    """Dispatch a GetFlightInfo locator: sequence grammar first, then topic; sessions unsupported."""
    if not isinstance(raw, str):
        raise BadLocator(repr(raw))
    text = raw.strip("/") if raw.startswith("/") else raw
    if is_sequence(text):
        return Resource("sequence", text)
    if is_topic(text):
        return Resource("topic", text)
    if is_session(text):
        raise MosaicoError(Kind.BAD_REQUEST, f"Unsupported locator: {shown(raw)}")
    raise BadLocator(raw)


def parse_uuid(raw: object) -> uuid.UUID:
    if isinstance(raw, str):
        try:
            return uuid.UUID(raw)
        except ValueError:
            pass
    raise MosaicoError(Kind.BAD_REQUEST, f"`{shown(raw, 80)}` is not a valid UUID")


_KEY_RE = re.compile(r"^[A-Za-z0-9_\- ]+$")


def validate_user_metadata(value: object) -> None:
    """Every object key at every depth: non-empty, [A-Za-z0-9_- ], no '--' (docs/storage.md#locators)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            for k, child in v.items():
                if not _KEY_RE.match(k) or "--" in k:
                    raise MosaicoError(Kind.BAD_REQUEST, f"Bad request: Found invalid key in json: `{shown(k)}`")
                stack.append(child)
        elif isinstance(v, list):
            stack.extend(v)
