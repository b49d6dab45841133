"""The one parser of wire JSON (action bodies, GetFlightInfo / GetSchema / DoPut commands), with
explicit limits.  (DoGet tickets are binary: ``tickets.py``.)

Everything a client sends as JSON goes through ``parse_object`` before any catalog or store call.
It refuses, with ``INVALID_ARGUMENT`` and the offending field named:

* a document larger than ``MAX_BYTES``, not UTF-8, not JSON, or not a JSON object;
* nesting deeper than ``MAX_DEPTH`` (Python's parser would otherwise hit its recursion limit);
* more than ``MAX_CONTAINERS`` arrays and objects in all, an array or object with more than
  ``MAX_ITEMS`` entries, a string or key longer than ``MAX_STRING`` characters;
* values that cannot be stored or compared: a NUL character (PostgreSQL text and JSONB reject
  it), a lone UTF-16 surrogate (not encodable as UTF-8), ``NaN`` / ``Infinity`` (not JSON), a
  number too large for a float (``1e400``), an integer literal longer than ``MAX_INT_DIGITS``.

Integers beyond int64 (up to ``MAX_INT_DIGITS`` digits) are returned as Python ints; the layer
that knows the field's type decides (timestamps must be int64, query operands beyond int64 compare
as floats and are refused beyond the float range, user metadata stores them as JSON numbers).

Cost: the checks that need a walk over the decoded document run only when a cheap test on the
raw text says they might fail; decoding runs with garbage collection paused.  An erroneous
document of the maximum size costs a few tens of milliseconds (bench/fuzz_errors.py).
"""

from __future__ import annotations

import contextlib
import gc
import json
import re
from typing import Any

import numpy as np

from . import errors

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_ITEMS = 100_000
MAX_CONTAINERS = 10_000  # arrays and objects in one document (each costs a Python object)
MAX_STRING = 64 * 1024
MAX_INT_DIGITS = 400  # beyond ~309 digits not even a float can hold the value

_MAX_INT_BITS = 1330  # ~ MAX_INT_DIGITS decimal digits
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1

_SURROGATE = re.compile(r"[\ud800-\udfff]")


class _Invalid:
    """Placeholder the decoder hooks leave where a number cannot be represented; the walk names
    the field it sits in."""

    __slots__ = ("why",)

    def __init__(self, why: str):
        self.why = why


def _parse_int(text: str) -> Any:
    digits = len(text) - (text[0] == "-")
    if digits > MAX_INT_DIGITS:
        return _Invalid(f"an integer of {digits} digits is too large (at most {MAX_INT_DIGITS})")
    return int(text)


def _parse_constant(name: str) -> Any:
    return _Invalid(f"{name} is not a valid JSON number")


def path_str(path: list) -> str:
    """``a.b[3].c``; a deep path keeps its first and last steps (``a[0][0]...[0][0]``)."""
    def step(p) -> str:
        return f"[{p}]" if isinstance(p, int) else "." + errors.shown(p, 60)

    steps = [step(p) for p in path]
    if len(steps) > 10:
        steps = steps[:5] + [f"...({len(steps) - 7} more)..."] + steps[-2:]
    return errors.shown("".join(steps).removeprefix("."), 200) if steps else "(document)"


def _string_problem(s: str) -> str | None:
    if len(s) > MAX_STRING:
        return f"a string of {len(s)} characters is too long (at most {MAX_STRING})"
    if "\x00" in s:
        return "contains a NUL character (\\u0000), which cannot be stored"
    if _SURROGATE.search(s):
        return "contains a lone UTF-16 surrogate, which is not valid Unicode"
    return None


def _fail(what: str, path: tuple | None, why: str) -> errors.MosaicoError:
    keys: list = []
    while path is not None:
        path, key = path
        keys.append(key)
    return errors.bad_request(f"{what} deserialization error: field `{path_str(keys[::-1])}`: {why}")


def check_value(doc: Any, what: str = "body") -> None:
    """Walk a decoded document (iteratively) and refuse what ``parse_object`` refuses, naming the
    field.  The path is a linked list of (parent, key) tuples: one small tuple per container."""
    if isinstance(doc, str):
        why = _string_problem(doc)
        if why:
            raise _fail(what, None, why)
    if isinstance(doc, _Invalid):
        raise _fail(what, None, doc.why)
    stack: list[tuple[Any, tuple | None, int]] = [(doc, None, 0)]
    while stack:
        v, p, depth = stack.pop()
        if isinstance(v, dict):
            items = v.items()
        elif isinstance(v, list):
            items = enumerate(v)
        else:
            continue
        if depth >= MAX_DEPTH:
            raise _fail(what, p, f"nested deeper than {MAX_DEPTH} levels")
        if len(v) > MAX_ITEMS:
            raise _fail(what, p, f"{len(v)} entries are too many (at most {MAX_ITEMS})")
        for k, child in items:
            if type(k) is str:
                why = _string_problem(k)
                if why:
                    raise _fail(what, (p, k), f"the key {why.removeprefix('a string ')}")
            t = type(child)
            if t is str:
                why = _string_problem(child)
                if why:
                    raise _fail(what, (p, k), why)
            elif t is dict or t is list:
                stack.append((child, (p, k), depth + 1))
            elif t is float:
                if child - child != 0.0:  # inf or nan
                    raise _fail(what, (p, k), "the number is out of range (beyond about ±1.8e308)")
            elif t is int:
                if child.bit_length() > _MAX_INT_BITS:
                    raise _fail(what, (p, k), f"an integer of {len(str(abs(child)))} digits is too large "
                                              f"(at most {MAX_INT_DIGITS})")
            elif t is _Invalid:
                raise _fail(what, (p, k), child.why)


# cheap over-approximations on the raw text: when none fires, the walk cannot find anything
_OPEN_CLOSE = bytes(range(256)).translate(None, b"[]{}")
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')


def _outside_strings(raw: bytes) -> bytes:
    """The JSON text without the contents of its strings (split on quotes when none is escaped:
    a regex pass costs ~0.2 us per string, 20 ms for 100,000 of them)."""
    if b'\\"' not in raw:
        return b"".join(raw.split(b'"')[::2])
    return _STRINGS.sub(b"", raw)


_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")


def _may_be_too_deep(raw: bytes) -> bool:
    brackets = raw.translate(None, _OPEN_CLOSE)  # every [ ] { }, strings included
    if brackets.count(b"[") + brackets.count(b"{") <= MAX_DEPTH:
        return False
    steps = np.frombuffer(brackets, dtype=np.uint8)
    depth = np.cumsum(np.where((steps == 91) | (steps == 123), 1, -1), dtype=np.int64)
    return bool(depth.max() > MAX_DEPTH)


def parse_object(raw: bytes | None, what: str = "body") -> dict:
    """Decode ``raw`` as a JSON object within the limits above, or raise ``bad_request``."""
    raw = raw or b""
    if len(raw) > MAX_BYTES:
        raise errors.bad_request(f"{what} deserialization error: {len(raw)} bytes is too large "
                                 f"(at most {MAX_BYTES})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.bad_request(f"{what} deserialization error: not valid UTF-8 "
                                 f"(byte {exc.start})") from None
    if raw.count(b"[") + raw.count(b"{") > MAX_CONTAINERS:  # brackets in strings count too: recount
        outside = _outside_strings(raw)
        n = outside.count(b"[") + outside.count(b"{")
        if n > MAX_CONTAINERS:
            raise errors.bad_request(f"{what} deserialization error: {n} arrays and objects are too many "
                                     f"(at most {MAX_CONTAINERS} in one document)")
    with _gc_paused():
        return _decode(raw, text, what)


@contextlib.contextmanager
def _gc_paused():
    """Decoding a document of 100,000 small containers triggers dozens of garbage collections,
    each scanning the whole (large) server heap: 30 ms became 280 ms in the server.  The
    containers are freed by reference counting anyway; collection resumes right after (unless
    something else had switched it off)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _decode(raw: bytes, text: str, what: str) -> dict:
    # Only NaN / Infinity need a hook; number hooks would cost a Python call per number, so
    # unrepresentable numbers are found by the walk (1e400 decodes as inf), except integer
    # literals beyond Python's 4300-digit limit, for which the decoder is run again with a hook.
    invalid: list[_Invalid] = []

    def hooked(fn):
        def hook(t: str) -> Any:
            v = fn(t)
            if isinstance(v, _Invalid):
                invalid.append(v)
            return v
        return hook

    hooks: dict[str, Any] = {"parse_constant": hooked(_parse_constant)}
    try:
        try:
            doc = json.loads(text, **hooks) if text else None
        except ValueError as exc:
            if isinstance(exc, json.JSONDecodeError):
                raise
            doc = json.loads(text, parse_int=hooked(_parse_int), **hooks)  # > 4300 digits
    except json.JSONDecodeError as exc:
        raise errors.bad_request(f"{what} deserialization error: {exc}") from None
    except RecursionError:
        raise errors.bad_request(f"{what} deserialization error: nested deeper than "
                                 f"{MAX_DEPTH} levels") from None
    if not isinstance(doc, dict):
        raise errors.bad_request(f"{what} deserialization error: expected a JSON object")
    if (invalid or _may_be_too_deep(raw) or _SUSPECT_ESCAPE.search(text) or _BIG_NUMBER.search(text)
            or (len(text) > MAX_STRING and _has_long_run(text))
            or text.count(",") >= MAX_ITEMS):
        check_value(doc, what)
    return doc


def _has_long_run(text: str) -> bool:
    """Some stretch between two quotes is at least MAX_STRING long (a string may be too long).
    Linear: a regex like ``[^"]{N}`` restarts at every position and is quadratic on long runs."""
    return max(map(len, text.split('"'))) >= MAX_STRING
# a run of 300 digits, tried only where a run starts (else the search is quadratic), or an
# exponent of 3 digits
_BIG_NUMBER = re.compile(r"(?<![0-9])[0-9]{300}|[eE][+-]?[0-9]{3}")


def member(obj: dict, key: str, kind: type | tuple[type, ...] = str, *, optional: bool = False) -> Any:
    """``obj[key]`` checked to be a ``kind`` (bool is not an int); a missing or null member is
    refused unless ``optional`` (then None)."""
    if key not in obj or obj[key] is None:
        if optional:
            return None
        raise errors.bad_request(f"body deserialization error: missing field `{key}`")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise errors.bad_request(f"body deserialization error: field `{key}` must be {names}, "
                                 f"got {type(value).__name__}")
    return value


def int64(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and INT64_MIN <= value <= INT64_MAX
