"""Malformed requests by family, from a seeded generator, and a raw pyarrow.flight sender.

Shared by the fuzz test (tests/test_fuzz_errors.py, a few hundred cases) and the long run
(bench/fuzz_errors.py).  Every family of the error-boundary issue is here: deep JSON, huge
integers, timestamps outside int64, integer operands beyond float range, NUL / NaN / Infinity /
lone surrogates in every text or number field, array subscripts >= 2^31, ``$in`` lists above
65,535 values (which must *work*), clusterize without ontology conditions, long echoed inputs,
plus garbage bytes, random mutations of valid requests and odd DoPut streams.

Destructive requests never name the baseline sequence ``keep``; the checks after a run compare it
with what it was before.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa
import pyarrow.flight as flight

BASE = "keep"
BASE_TOPIC = "keep/t"
TAG = "Floating64"

# what must never appear in a client-visible message
LEAKS = re.compile(r"Traceback|File \"|\.pyx?\b|line \d+, in |pyarrow\.lib|mosaicod\.[a-z_]+\b"
                   r"|[A-Za-z]+(Error|Exception):|SELECT |INSERT |UPDATE |DELETE FROM|\[SQL|\[parameters"
                   r"|/work/|site-packages", re.IGNORECASE)
MAX_MESSAGE = 1200


def server_part(message: str) -> str:
    """The message without what the client library appends about its own side of the call."""
    return message.split(". gRPC client debug context:")[0]


def leaks(message: str) -> list[str]:
    return [m.group(0) for m in LEAKS.finditer(server_part(message))]


class Raw:
    """A JSON fragment written verbatim (NaN, 1e400, a 5000-digit integer, deep nesting)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r}...)"


def encode(v: Any) -> str:
    """JSON text of ``v``; strings are ASCII-escaped, so lone surrogates travel as \\udXXX."""
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, dict):
        return "{" + ", ".join(f"{encode(str(k) if not isinstance(k, (str, Raw)) else k)}: {encode(x)}"
                               for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(encode(x) for x in v) + "]"
    return json.dumps(v, ensure_ascii=True)


@dataclass
class Case:
    family: str
    rpc: str  # action | get_flight_info | get_schema | do_get | do_put | list_flights
    payload: bytes = b""
    action: str = ""
    expect: str = "any"  # refuse: INVALID_ARGUMENT | ok: must succeed | any: anything but INTERNAL
    schema: pa.Schema | None = None
    batches: list = field(default_factory=list)

    def describe(self) -> str:
        what = self.action or self.rpc
        return f"{self.family}/{what[:40]}: {self.payload[:120]!r}"


@dataclass
class Outcome:
    status: str
    message: str = ""


STATUS_OF = [
    (flight.FlightUnauthorizedError, "PERMISSION_DENIED"),
    (flight.FlightUnauthenticatedError, "UNAUTHENTICATED"),
    (flight.FlightCancelledError, "CANCELLED"),
    (flight.FlightUnavailableError, "UNAVAILABLE"),
    (flight.FlightTimedOutError, "TIMED_OUT"),
    (flight.FlightInternalError, "INTERNAL"),
    (flight.FlightServerError, "UNKNOWN"),
    (pa.ArrowNotImplementedError, "UNIMPLEMENTED"),
    (pa.ArrowKeyError, "NOT_FOUND"),
    (pa.ArrowInvalid, "INVALID_ARGUMENT"),
]


def classify(exc: BaseException) -> Outcome:
    msg = str(exc)
    for cls, status in STATUS_OF:
        if isinstance(exc, cls):
            if status == "INTERNAL" and server_part(msg).startswith("Unsupported stream message"):
                status = "ABORTED"  # upstream's ABORTED, carried as INTERNAL by pyarrow
            return Outcome(status, msg)
    return Outcome(f"CLIENT:{type(exc).__name__}", msg)


def send(client: flight.FlightClient, case: Case, timeout: float = 60) -> Outcome:
    opts = flight.FlightCallOptions(timeout=timeout)
    try:
        if case.rpc == "action":
            for _ in client.do_action(flight.Action(case.action, case.payload), opts):
                pass
        elif case.rpc == "get_flight_info":
            client.get_flight_info(flight.FlightDescriptor.for_command(case.payload), opts)
        elif case.rpc == "get_schema":
            client.get_schema(flight.FlightDescriptor.for_command(case.payload), opts)
        elif case.rpc == "do_get":
            client.do_get(flight.Ticket(case.payload), opts).read_all()
        elif case.rpc == "list_flights":
            list(client.list_flights(case.payload, opts))
        elif case.rpc == "do_put":
            writer, _ = client.do_put(flight.FlightDescriptor.for_command(case.payload), case.schema, opts)
            try:
                for b in case.batches:
                    writer.write_batch(b)
            finally:
                writer.close()
        else:
            raise AssertionError(case.rpc)
    except (pa.ArrowException, flight.FlightError) as exc:
        return classify(exc)
    return Outcome("OK")


# ---------------------------------------------------------------------------------------------
# hostile values


def deep(rng: random.Random) -> Raw:
    n = rng.choice([65, 100, 1000, 5000, 100_000])
    o, c = rng.choice([("[", "]"), ('{"a":', "}")])
    return Raw(o * n + "1" + c * n)


def huge_int(rng: random.Random) -> Raw:
    return Raw(rng.choice(["", "-"]) + "9" * rng.choice([401, 4301, 5000, 20_000]))


def beyond_int64(rng: random.Random) -> int:
    return rng.choice([2 ** 63, -(2 ** 63) - 1, 2 ** 64, 10 ** 30, -(10 ** 40)])


def beyond_float(rng: random.Random) -> Raw:
    return Raw(rng.choice(["", "-"]) + "1" + "0" * rng.choice([309, 320, 399]))


def nonfinite(rng: random.Random) -> Raw:
    return Raw(rng.choice(["NaN", "Infinity", "-Infinity", "1e400", "-1e999"]))


def with_nul(rng: random.Random) -> str:
    return rng.choice(["\x00", "a\x00", "\x00b", "ab\x00cd"])


def with_surrogate(rng: random.Random) -> str:
    return rng.choice(["\ud800", "x\udfff", "\udc80y", "\ud83d"])


def long_text(rng: random.Random) -> str:
    return rng.choice(["x", "ab", "é", "/"]) * rng.choice([300, 5000, 20_000, 70_000])


def hostile(rng: random.Random) -> Any:
    return rng.choice([deep, huge_int, beyond_int64, beyond_float, nonfinite, with_nul, with_surrogate,
                       long_text, lambda r: None, lambda r: True, lambda r: [], lambda r: {},
                       lambda r: -1, lambda r: 1.5, lambda r: "", lambda r: " ", lambda r: "../..",
                       lambda r: [1, "a", None], lambda r: {"$eq": 1}, lambda r: "\t\n"])(rng)


# ---------------------------------------------------------------------------------------------
# valid request templates (never destructive on BASE)


def fz_name(rng: random.Random) -> str:
    return f"fz{rng.randrange(10_000)}"


def fz_topic(rng: random.Random) -> str:
    return f"{fz_name(rng)}/t{rng.randrange(10)}"


def md(rng: random.Random) -> dict:
    return {"a": rng.randrange(100), "b": {"c": ["x", 1.5, True, None]}, "d e": "text"}


def onto_cond(rng: random.Random) -> dict:
    return {f"{TAG}.data": {rng.choice(["$gt", "$lt", "$eq", "$geq"]): rng.randrange(10)}}


def templates(rng: random.Random, ctx: dict) -> list[tuple[str, str, dict]]:
    """(rpc, action, document) of valid requests; reads may name BASE, writes never do."""
    seq = fz_name(rng)
    return [
        ("action", "sequence_create", {"locator": seq, "user_metadata": md(rng)}),
        ("action", "session_create", {"locator": seq}),
        ("action", "topic_create", {"session_uuid": str(uuid.uuid4()), "locator": fz_topic(rng),
                                    "serialization_format": "default", "ontology_tag": TAG, "user_metadata": md(rng)}),
        ("action", "session_finalize", {"session_uuid": str(uuid.uuid4())}),
        ("action", "sequence_delete", {"locator": seq}),
        ("action", "topic_delete", {"locator": fz_topic(rng)}),
        ("action", "session_delete", {"locator": f"{seq}:01J0000000000000000000000"}),
        ("action", "sequence_notification_create", {"locator": seq, "notification_type": "error", "msg": "m"}),
        ("action", "topic_notification_create", {"locator": fz_topic(rng), "notification_type": "error", "msg": "m"}),
        ("action", "sequence_notification_list", {"locator": BASE}),
        ("action", "topic_notification_list", {"locator": BASE_TOPIC}),
        ("action", "sequence_notification_purge", {"locator": seq}),
        ("action", "query", {"sequence": {"name": {"$match": "k*"}, "user_metadata": {"a": {"$lt": 50}}},
                             "topic": {"created_at_ns": {"$gt": 0}, "ontology_tag": {"$eq": TAG}},
                             "ontology": onto_cond(rng)}),
        ("action", "query", {"sequence": {"user_metadata": {"b.c[1]": {"$eq": 1.5}, "a": {"$in": [1, 2, 3]}}}}),
        ("action", "topic_filter_clusterize", {"locator": BASE_TOPIC, "clustering_dt_ns": rng.randrange(5),
                                               "ontology": onto_cond(rng),
                                               "timestamp_range": {"start_ns": 0, "end_ns": 100}}),
        ("action", "topic_filter_intersect", {"topics": [
            {"locator": BASE_TOPIC, "ontology": onto_cond(rng)},
            {"locator": BASE_TOPIC, "ontology": onto_cond(rng)}], "intersect_dt_ns": rng.randrange(5)}),
        ("action", "info", {}),
        ("get_flight_info", "", {"resource_locator": rng.choice([BASE, BASE_TOPIC]),
                                 "timestamp_ns_start": 2, "timestamp_ns_end": 8}),
        ("get_schema", "", {"resource_locator": BASE_TOPIC}),
        ("do_put", "", {"resource_locator": fz_topic(rng), "topic_uuid": str(uuid.uuid4())}),
    ]


def leaves(doc: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.extend(leaves(v, path + (k,)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.extend(leaves(v, path + (i,)))
    return out


def replaced(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {k: (replaced(v, rest, value) if k == head else v) for k, v in doc.items()}
    return [replaced(v, rest, value) if i == head else v for i, v in enumerate(doc)]


def renamed_key(doc: dict, path: tuple, new_key: Any) -> Any:
    """Replace the key at ``path`` (last element) by ``new_key``."""
    if len(path) == 1:
        return {(new_key if k == path[0] else k): v for k, v in doc.items()}
    head = path[0]
    if isinstance(doc, dict):
        return {k: (renamed_key(v, path[1:], new_key) if k == head else v) for k, v in doc.items()}
    return [renamed_key(v, path[1:], new_key) if i == head else v for i, v in enumerate(doc)]


TS_SCHEMA = pa.schema([pa.field("timestamp_ns", pa.int64(), nullable=False), pa.field("data", pa.float64())])


def ts_batch(n: int = 3, schema: pa.Schema = TS_SCHEMA) -> pa.RecordBatch:
    return pa.record_batch([pa.array(range(n), pa.int64()), pa.array([float(i) for i in range(n)])], schema=schema)


# ---------------------------------------------------------------------------------------------
# families


def _case(family: str, rpc: str, action: str, doc: Any, expect: str, **kw) -> Case:
    return Case(family, rpc, encode(doc).encode() if not isinstance(doc, bytes) else doc, action, expect, **kw)


def _in_field(rng: random.Random, value: Any, family: str) -> Case:
    """``value`` placed in one of the text / number fields that reach the catalog."""
    seq = fz_name(rng)
    where = rng.randrange(9)
    if where == 0:
        return _case(family, "action", "sequence_create", {"locator": seq, "user_metadata": {"k": value}}, "refuse")
    if where == 1:
        return _case(family, "action", "sequence_create",
                     {"locator": seq, "user_metadata": {"k": {"l": [1, value]}}}, "refuse")
    if where == 2:
        return _case(family, "action", "sequence_notification_create",
                     {"locator": BASE, "notification_type": "error", "msg": value}, "refuse")
    if where == 3:
        return _case(family, "action", "query", {"sequence": {"name": {"$eq": value}}}, "refuse")
    if where == 4:
        return _case(family, "action", "query", {"sequence": {"user_metadata": {"a": {"$in": [1, value]}}}}, "refuse")
    if where == 5:
        return _case(family, "action", "query", {"ontology": {f"{TAG}.data": {"$gt": value}}}, "refuse")
    if where == 6:
        return _case(family, "action", "topic_create",
                     {"session_uuid": str(uuid.uuid4()), "locator": fz_topic(rng), "serialization_format": "default",
                      "ontology_tag": TAG, "user_metadata": {"z": value}}, "refuse")
    if where == 7:
        return _case(family, "get_flight_info", "", {"resource_locator": value}, "refuse")
    return _case(family, "action", "topic_filter_clusterize",
                 {"locator": BASE_TOPIC, "ontology": {f"{TAG}.data": {"$eq": value}}}, "refuse")


def f_deep_json(rng, ctx) -> Case:
    d = deep(rng)
    rpc, action, doc = rng.choice(templates(rng, ctx))
    path = rng.choice(leaves(doc)[1:] or [()])
    case = _case("deep_json", rpc, action, replaced(doc, path, d), "refuse")
    if rpc == "do_put":
        case.schema, case.batches = TS_SCHEMA, [ts_batch()]
    return case


def f_huge_int(rng, ctx) -> Case:
    return _in_field(rng, huge_int(rng), "huge_int")


def f_int64_range(rng, ctx) -> Case:
    v = beyond_int64(rng)
    which = rng.randrange(5)
    if which == 0:
        return _case("int64_range", "get_flight_info", "", {"resource_locator": rng.choice([BASE, BASE_TOPIC]),
                                                             "timestamp_ns_start": v}, "refuse")
    if which == 1:
        return _case("int64_range", "get_flight_info", "", {"resource_locator": BASE_TOPIC, "timestamp_ns_end": v},
                     "refuse")
    if which == 2:
        return _case("int64_range", "action", "topic_filter_clusterize",
                     {"locator": BASE_TOPIC, "ontology": onto_cond(rng),
                      "timestamp_range": {rng.choice(["start_ns", "end_ns"]): v}}, "refuse")
    if which == 3:
        return _case("int64_range", "action", "topic_filter_clusterize",
                     {"locator": BASE_TOPIC, "ontology": onto_cond(rng), "clustering_dt_ns": v}, "refuse")
    return _case("int64_range", "action", "query",
                 {"topic": {"created_at_ns": {rng.choice(["$gt", "$eq", "$lt"]): v}}}, "refuse")


def f_float_overflow(rng, ctx) -> Case:
    v = beyond_float(rng)
    op = rng.choice(["$gt", "$eq", "$lt", "$neq"])
    target = rng.randrange(3)
    if target == 0:
        doc = {"sequence": {"user_metadata": {"a": {op: v}}}}
    elif target == 1:
        doc = {"ontology": {f"{TAG}.data": {op: v}}}
    else:
        doc = {"topic": {"user_metadata": {"b.c[*]": {"$between": [0, v]}}}}
    return _case("float_overflow", "action", "query", doc, "refuse")


def f_nul(rng, ctx) -> Case:
    return _in_field(rng, with_nul(rng), "nul")


def f_nonfinite(rng, ctx) -> Case:
    return _in_field(rng, nonfinite(rng), "nonfinite")


def f_surrogate(rng, ctx) -> Case:
    s = with_surrogate(rng)
    if rng.random() < 0.2:  # in a key
        return _case("surrogate", "action", "sequence_create",
                     {"locator": fz_name(rng), "user_metadata": {s: 1}}, "refuse")
    return _in_field(rng, s, "surrogate")


def f_subscript(rng, ctx) -> Case:
    n = rng.choice([2 ** 31, 2 ** 32, 10 ** 12, 10 ** 30])
    if rng.random() < 0.5:
        doc = {"sequence": {"user_metadata": {f"b.c[{n}]": {"$eq": 1}}}}
    else:
        doc = {"ontology": {f"{TAG}.data[{n}]": {"$eq": 1}}}
    return _case("subscript", "action", "query", doc, "refuse")


def f_in_list(rng, ctx) -> Case:
    n = rng.choice([65_536, 70_000, 99_999])
    which = rng.randrange(3)
    if which == 0:
        doc = {"sequence": {"name": {"$in": [f"n{i}" for i in range(n - 1)] + [BASE]}}}
    elif which == 1:
        doc = {"topic": {"created_at_ns": {"$in": list(range(n))}}}
    else:
        doc = {"sequence": {"user_metadata": {"a": {"$in": list(range(n))}}}}
    return _case("in_list", "action", "query", doc, "ok")


def f_clusterize_empty(rng, ctx) -> Case:
    onto = rng.choice([{}, None, {"include_timestamp_range": True}])
    body = {"locator": BASE_TOPIC, "clustering_dt_ns": rng.randrange(3)}
    if onto is not None or rng.random() < 0.5:
        body["ontology"] = onto
    if rng.random() < 0.5:
        return _case("clusterize_empty", "action", "topic_filter_intersect",
                     {"topics": [{"locator": BASE_TOPIC, "ontology": onto_cond(rng)}, body]}, "refuse")
    return _case("clusterize_empty", "action", "topic_filter_clusterize", body, "refuse")


def f_long_input(rng, ctx) -> Case:
    s = long_text(rng)
    which = rng.randrange(6)
    if which == 0:
        return Case("long_input", "action", b"{}", s, "refuse")
    if which == 1:
        valid = len(s) <= 512 and s.isascii() and "/" not in s  # a sequence name may be 512 characters
        return _case("long_input", "action", "sequence_create", {"locator": s, "user_metadata": {}},
                     "any" if valid else "refuse")
    if which == 2:
        return _case("long_input", "action", "sequence_create",  # a long key is storable up to 64 Ki chars
                     {"locator": fz_name(rng), "user_metadata": {s: 1}}, "refuse" if len(s) > 65_536 else "any")
    if which == 3:
        return _case("long_input", "action", "query", {"sequence": {"user_metadata": {s: {"$eq": 1}}}}, "any")
    if which == 4:
        return _case("long_input", "get_flight_info", "", {"resource_locator": s}, "any")
    return _case("long_input", "action", "topic_create",
                 {"session_uuid": s, "locator": fz_topic(rng), "serialization_format": "default",
                  "ontology_tag": s, "user_metadata": {}}, "refuse")


def f_garbage(rng, ctx) -> Case:
    kind = rng.randrange(6)
    if kind == 0:
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    elif kind == 1:
        _, _, doc = rng.choice(templates(rng, ctx))
        text = encode(doc).encode()
        raw = text[: rng.randrange(len(text))]
    elif kind == 2:
        raw = encode(rng.choice([[1, 2], "text", 3, None, True])).encode()
    elif kind == 3:
        raw = b"\xef\xbb\xbf{}" if rng.random() < 0.5 else b"{\"a\": \"\xff\xfe\"}"
    elif kind == 4:
        raw = b" " * rng.randrange(5) + b"{}" + b"garbage"
    else:
        raw = b""
    rpc = rng.choice(["action", "get_flight_info", "get_schema", "do_get", "list_flights", "do_put"])
    if rpc == "do_get":
        raw = ctx["ticket"][: rng.randrange(len(ctx["ticket"]))] + raw if rng.random() < 0.5 else raw
    action = rng.choice([a for _, a, _ in templates(rng, ctx) if a]) if rpc == "action" else ""
    case = Case("garbage", rpc, raw, action, "any")
    if rpc == "do_put":
        case.schema, case.batches = TS_SCHEMA, [ts_batch()]
    return case


def f_mutation(rng, ctx) -> Case:
    rpc, action, doc = rng.choice(templates(rng, ctx))
    paths = leaves(doc)
    for _ in range(rng.randrange(1, 3)):
        path = rng.choice(paths)
        if path and isinstance(path[-1], str) and rng.random() < 0.3:
            doc = renamed_key(doc, path, rng.choice([with_nul(rng), with_surrogate(rng), "", "$eq", "a--b", "x.y",
                                                     "[0]", "**", "*", "a[9]"]))
        else:
            doc = replaced(doc, path, hostile(rng))
        paths = leaves(doc)
    case = _case("mutation", rpc, action, doc, "any")
    if rpc == "do_put":
        case.schema, case.batches = TS_SCHEMA, [ts_batch()]
    return case


def f_ticket(rng, ctx) -> Case:
    t = bytearray(ctx["ticket"])
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(3)
        if op == 0 and t:
            t[rng.randrange(len(t))] = rng.randrange(256)
        elif op == 1:
            t.insert(rng.randrange(len(t) + 1), rng.randrange(256))
        elif t:
            del t[rng.randrange(len(t))]
    return Case("ticket", "do_get", bytes(t), "", "any")


ODD_SCHEMAS = [
    pa.schema([("data", pa.float64())]),
    pa.schema([("timestamp_ns", pa.string())]),
    pa.schema([("timestamp_ns", pa.int32())]),
    pa.schema([("timestamp_ns", pa.int64()), ("u", pa.dense_union([pa.field("a", pa.int64())]))]),
    pa.schema([("timestamp_ns", pa.int64()), ("n", pa.null())]),
    pa.schema([("timestamp_ns", pa.int64()), ("d", pa.dictionary(pa.int8(), pa.string()))]),
    pa.schema([("timestamp_ns", pa.int64()), ("l", pa.list_(pa.struct([("x", pa.float32())])))]),
    pa.schema([("timestamp_ns", pa.int64()), ("m", pa.map_(pa.string(), pa.int64()))]),
    pa.schema([("timestamp_ns", pa.int64()), ("e", pa.struct([]))]),
    pa.schema([("timestamp_ns", pa.int64()), ("timestamp_ns", pa.int64())]),
    pa.schema([("timestamp_ns", pa.int64()), ("", pa.int64())]),
    pa.schema([("timestamp_ns", pa.int64()), ("x" * 5000, pa.int64())]),
    pa.schema([("timestamp_ns", pa.int64()), ("f16", pa.float16())]),
    pa.schema([("timestamp_ns", pa.int64()), ("dec", pa.decimal128(38, 3))]),
    pa.schema([("timestamp_ns", pa.int64()), ("dur", pa.duration("ns"))]),
]


def f_do_put(rng, ctx) -> Case:
    """DoPut with an odd command or schema against a topic created for the purpose (ctx['put_target']
    gives a fresh (locator, topic_uuid) or None)."""
    target = ctx["put_target"]() if rng.random() < 0.7 else None
    schema = rng.choice(ODD_SCHEMAS)
    loc, tuuid = target or (fz_topic(rng), str(uuid.uuid4()))
    cmd = {"resource_locator": loc, "topic_uuid": tuuid}
    if rng.random() < 0.2:
        cmd = replaced(cmd, (rng.choice(["resource_locator", "topic_uuid"]),), hostile(rng))
    batches = []
    try:
        for _ in range(rng.randrange(3)):
            n = rng.randrange(1, 5)
            batches.append(pa.record_batch(
                [pa.array(range(n), f.type) if f.name == "timestamp_ns" and pa.types.is_integer(f.type)
                 else pa.nulls(n, f.type) for f in schema], schema=schema))
    except (pa.ArrowException, ValueError, TypeError):  # a type pyarrow cannot fill with nulls
        batches = []
    return _case("do_put", "do_put", "", cmd, "any", schema=schema, batches=batches)


def f_big_document(rng, ctx) -> Case:
    """Documents near the parser's limits (1 MiB, 100,000 entries, 64 Ki-character strings, runs of
    digits, many escapes) with one bad value at the end: the worst case of every check."""
    kind = rng.randrange(6)
    bad = rng.choice([Raw("NaN"), "x\x00", "\ud800", Raw("1e999"), Raw("9" * 5000), deep(rng)])
    if kind == 0:
        items: list = [rng.randrange(10 ** 9) for _ in range(99_999)]
    elif kind == 1:
        items = [Raw("1" * 299)] * 3000
    elif kind == 2:
        items = ["ab" * 16_000, "é" * 30_000]
    elif kind == 3:
        items = [{"k": i, "v": "\\u0000"} for i in range(20_000)]
    elif kind == 4:
        items = ["[" * 60_000, "{" * 60_000]
    else:
        items = [[[[[[i]]]]] for i in range(20_000)]
    doc = {"locator": fz_name(rng), "user_metadata": {"big": items + [bad]}}
    return _case("big_document", "action", "sequence_create", doc, "refuse")


FAMILIES: dict[str, tuple[Callable[[random.Random, dict], Case], float]] = {
    # name: (generator, weight)
    "deep_json": (f_deep_json, 1.0),
    "huge_int": (f_huge_int, 1.0),
    "int64_range": (f_int64_range, 1.0),
    "float_overflow": (f_float_overflow, 1.0),
    "nul": (f_nul, 1.0),
    "nonfinite": (f_nonfinite, 1.0),
    "surrogate": (f_surrogate, 1.0),
    "subscript": (f_subscript, 0.5),
    "in_list": (f_in_list, 0.02),
    "clusterize_empty": (f_clusterize_empty, 0.5),
    "long_input": (f_long_input, 1.0),
    "garbage": (f_garbage, 1.5),
    "mutation": (f_mutation, 3.0),
    "ticket": (f_ticket, 0.7),
    "do_put": (f_do_put, 0.5),
    "big_document": (f_big_document, 0.2),
}


def generate(seed: int, count: int, ctx: dict, families: list[str] | None = None):
    """``count`` cases; every selected family appears at least once (first), then weighted draws."""
    rng = random.Random(seed)
    names = families or list(FAMILIES)
    weights = [FAMILIES[n][1] for n in names]
    for i in range(count):
        name = names[i] if i < len(names) else rng.choices(names, weights)[0]
        yield FAMILIES[name][0](rng, ctx)


# ---------------------------------------------------------------------------------------------
# the baseline that must survive every run


def act(c: flight.FlightClient, name: str, body: dict) -> Any:
    res = list(c.do_action(flight.Action(name, json.dumps(body).encode())))
    return json.loads(res[0].body.to_pybytes())["response"] if res else None


def put(c: flight.FlightClient, locator: str, topic_uuid: str, batches: list) -> None:
    writer, _ = c.do_put(flight.FlightDescriptor.for_command(
        json.dumps({"resource_locator": locator, "topic_uuid": topic_uuid}).encode()), batches[0].schema)
    for b in batches:
        writer.write_batch(b)
    writer.close()


def seed_baseline(c: flight.FlightClient) -> None:
    act(c, "sequence_create", {"locator": BASE, "user_metadata": {"a": 7, "b": {"c": ["x", 1.5]}}})
    sess = act(c, "session_create", {"locator": BASE})["uuid"]
    tid = act(c, "topic_create", {"session_uuid": sess, "locator": BASE_TOPIC, "serialization_format": "default",
                                  "ontology_tag": TAG, "user_metadata": {"u": "v"}})["uuid"]
    put(c, BASE_TOPIC, tid, [ts_batch(10)])
    act(c, "session_finalize", {"session_uuid": sess})
    act(c, "sequence_notification_create", {"locator": BASE, "notification_type": "error", "msg": "baseline"})


def snapshot(c: flight.FlightClient) -> dict:
    """Everything a client can read about the baseline sequence."""
    seq = c.get_flight_info(flight.FlightDescriptor.for_command(json.dumps({"resource_locator": BASE}).encode()))
    app = json.loads(seq.app_metadata)
    tables = []
    for ep in seq.endpoints:
        tables.append(c.do_get(ep.ticket).read_all().to_pylist())
    notes = act(c, "sequence_notification_list", {"locator": BASE})["notifications"]
    return {"metadata": app["user_metadata"], "sessions": [(s["locator"], s["locked"], s["topics"])
                                                           for s in app["sessions"]],
            "endpoints": [json.loads(ep.app_metadata) for ep in seq.endpoints], "data": tables,
            "notifications": [(n["notification_type"], n["msg"]) for n in notes],
            "listed": BASE in [i.descriptor.path[0].decode() for i in c.list_flights()]}


def context(c: flight.FlightClient) -> dict:
    """What the generators need: a real ticket to mutate and fresh topics to upload to."""
    info = c.get_flight_info(flight.FlightDescriptor.for_command(json.dumps({"resource_locator": BASE_TOPIC}).encode()))
    counter = iter(range(10 ** 9))

    def put_target() -> tuple[str, str] | None:
        n = next(counter)
        seq = f"fzput{n}"
        try:
            act(c, "sequence_create", {"locator": seq, "user_metadata": {}})
            sess = act(c, "session_create", {"locator": seq})["uuid"]
            tid = act(c, "topic_create", {"session_uuid": sess, "locator": f"{seq}/t", "serialization_format":
                                          "default", "ontology_tag": TAG, "user_metadata": {}})["uuid"]
        except (pa.ArrowException, flight.FlightError):
            return None
        return f"{seq}/t", tid

    return {"ticket": info.endpoints[0].ticket.ticket, "put_target": put_target}


@dataclass
class Tally:
    """Outcomes by family, and every violation found."""

    by_family: dict = field(default_factory=dict)
    violations: list = field(default_factory=list)

    def record(self, case: Case, out: Outcome) -> None:
        fam = self.by_family.setdefault(case.family, {})
        fam[out.status] = fam.get(out.status, 0) + 1
        problems = []
        if out.status in ("INTERNAL", "UNKNOWN") or out.status.startswith("CLIENT:"):
            problems.append(f"status {out.status}")
        if case.expect == "refuse" and out.status != "INVALID_ARGUMENT":
            problems.append(f"expected INVALID_ARGUMENT, got {out.status}")
        if case.expect == "ok" and out.status != "OK":
            problems.append(f"expected success, got {out.status}")
        found = leaks(out.message)
        if found:
            problems.append(f"message leaks {found[:3]}")
        if len(server_part(out.message)) > MAX_MESSAGE:
            problems.append(f"message of {len(server_part(out.message))} characters")
        if problems:
            self.violations.append((case.describe(), out.status, server_part(out.message)[:300], problems))
