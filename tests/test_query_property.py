"""Property test: the engine (SQL + statistics pruning + exact Parquet check) against a
brute-force evaluator over the same Python data, for random filters (hypothesis)."""

from __future__ import annotations

import math
import random

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosaicod.query import run_query_with_stats
from mosaicod.query.glob import compile_glob

from .conftest import create_database, drop_database
from .query_catalog import add_sequence, add_topic, open_catalog

SCHEMA = pa.schema([
    pa.field("timestamp_ns", pa.int64(), nullable=False),
    pa.field("v", pa.float64()),
    pa.field("n", pa.int64()),
    pa.field("s", pa.string()),
    pa.field("l", pa.list_(pa.int64())),
    pa.field("st", pa.struct([("a", pa.int32()), ("b", pa.string())])),
])
WORDS = ["alpha", "beta", "gamma", "delta", "Alpha", "a1", "b22", ""]
BIG = 2 ** 60  # int64 values above 2**53 exercise the float64 statistics rounding


def make_rows(rng: random.Random, n: int, t0: int) -> list[dict]:
    rows = []
    for i in range(n):
        v = rng.choice([None, math.nan, rng.uniform(-10, 10), float(rng.randint(-5, 5))])
        rows.append({
            "timestamp_ns": t0 + rng.randint(0, 300),
            "v": v,
            "n": rng.choice([None, rng.randint(-20, 20), BIG + rng.randint(0, 1000)]),
            "s": rng.choice([None] + WORDS),
            "l": rng.choice([None, [], [rng.randint(-5, 5) for _ in range(rng.randint(1, 4))]]),
            "st": rng.choice([None, {"a": rng.randint(-3, 3), "b": rng.choice(WORDS)},
                              {"a": None, "b": None}]),
        })
    return rows


def build(rng: random.Random):
    seqs = {}
    for k in range(10):
        md = {"k": rng.randint(0, 5), "f": rng.choice([0.5, 1.5, 2.5]), "w": rng.choice(WORDS[:4]),
              "tags": rng.sample(WORDS[:5], 2)}
        if k % 4 == 0:
            del md["f"]
        chunks = [make_rows(rng, rng.randint(0, 12), 1000 + 150 * c) for c in range(3)]  # overlapping
        seqs[f"s{k}_{rng.choice(['x', 'y'])}"] = (md, chunks)
    return seqs


@pytest.fixture(scope="module")
def world(pg_admin_url, tmp_path_factory):
    db = create_database(pg_admin_url)
    engine, store, cat = open_catalog(db, str(tmp_path_factory.mktemp("pstore")))
    seqs = build(random.Random(7))
    for name, (md, chunks) in seqs.items():
        sess = add_sequence(cat, name, md)
        add_topic(cat, store, name, sess, "data/p", "P", {}, SCHEMA,
                  [pa.Table.from_pylist(c, SCHEMA) for c in chunks if c])
    yield engine, store, seqs
    engine.dispose()
    drop_database(pg_admin_url, db)


# -- brute force ----------------------------------------------------------------------------------

def cmp(op, v, lit) -> bool:
    if v is None:
        return False
    if op == "$eq":
        return v == lit
    if op == "$neq":
        return v != lit
    if op == "$lt":
        return v < lit
    if op == "$leq":
        return v <= lit
    if op == "$gt":
        return v > lit
    if op == "$geq":
        return v >= lit
    if op == "$between":
        return lit[0] <= v <= lit[1]
    if op == "$outside":
        return v < lit[0] or v > lit[1]
    if op == "$in":
        return any(v == x for x in lit)
    if op == "$match":
        return compile_glob(lit).matches(v)
    raise AssertionError(op)


def row_ok(row: dict, key: str, op: str, lit) -> bool:
    field = key.split(".", 1)[1]
    if field.startswith("l["):
        spec = field[2:-1]
        lst = row["l"]
        if lst is None:
            return False
        if spec == "?":
            return any(cmp(op, e, lit) for e in lst)
        if spec == "!":
            return bool(lst) and all(cmp(op, e, lit) for e in lst)
        i = int(spec)
        return i < len(lst) and cmp(op, lst[i], lit)
    if field.startswith("st."):
        st_ = row["st"]
        return st_ is not None and cmp(op, st_[field[3:]], lit)
    return cmp(op, row[field], lit)


def md_ok(md: dict, key: str, op: str, lit) -> bool:
    present = key in md and md[key] is not None
    if op == "$ex":
        return present
    if op == "$nex":
        return not present
    if not present:
        return False
    vals = md[key] if isinstance(md[key], list) else [md[key]]  # lax mode unwraps arrays

    def same_type(v):
        sample = lit[0] if isinstance(lit, list) else lit
        return isinstance(v, str) == isinstance(sample, str)

    return any(same_type(v) and cmp(op, v, lit) for v in vals)


def brute(seqs, seq_filter, md_filters, onto):
    out = {}
    for name, (md, chunks) in seqs.items():
        if seq_filter and not cmp(seq_filter[0], name, seq_filter[1]):
            continue
        if not all(md_ok(md, k, op, lit) for k, op, lit in md_filters):
            continue
        rows = [r for c in chunks for r in c]
        if onto is None or any(all(row_ok(r, k, op, lit) for k, op, lit in onto) for r in rows):
            if onto is not None and not onto:
                continue
            out[name] = [f"{name}/data/p"]
    return out


# -- strategies -----------------------------------------------------------------------------------

NUM_OPS = ["$eq", "$neq", "$lt", "$leq", "$gt", "$geq", "$between", "$outside", "$in"]
TEXT_OPS = NUM_OPS + ["$match"]
GLOBS = ["a*", "*a", "?eta", "[a-c]*", "*#", "[^a]*", "alpha", "*l*a*", "A*"]


def operand(draw, op, pool):
    if op in ("$between", "$outside"):
        a, b = sorted([draw(st.sampled_from(pool)), draw(st.sampled_from(pool))])
        return [a, b]
    if op == "$in":
        return draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))
    if op == "$match":
        return draw(st.sampled_from(GLOBS))
    return draw(st.sampled_from(pool))


@st.composite
def onto_filter(draw):
    field = draw(st.sampled_from(["v", "n", "s", "l[?]", "l[!]", "l[0]", "l[2]", "st.a", "st.b"]))
    if field in ("s", "st.b"):
        op = draw(st.sampled_from(TEXT_OPS))
        return f"P.{field}", op, operand(draw, op, WORDS)
    op = draw(st.sampled_from(NUM_OPS))
    pool = [-5, -1, 0, 1, 2, 5, -2.5, 0.5, 9.9]
    if field == "n":
        pool = pool + [BIG, BIG + 500, BIG + 1000]
    return f"P.{field}", op, operand(draw, op, pool)


@st.composite
def md_filter(draw):
    key = draw(st.sampled_from(["k", "f", "w", "tags", "nokey"]))
    if key in ("w", "tags"):
        op = draw(st.sampled_from(TEXT_OPS + ["$ex", "$nex"]))
        pool = WORDS[:5]
    else:
        op = draw(st.sampled_from(NUM_OPS + ["$ex", "$nex"]))
        pool = [0, 1, 2, 3, 5, 0.5, 1.5, 2.5]
    return key, op, (None if op in ("$ex", "$nex") else operand(draw, op, pool))


@st.composite
def queries(draw):
    seq_filter = draw(st.one_of(st.none(), st.tuples(st.just("$match"), st.sampled_from(["s*_x", "s?_y", "*[0-4]_*"]))))
    md = draw(st.lists(md_filter(), max_size=2, unique_by=lambda f: f[0]))
    onto = draw(st.one_of(st.none(), st.lists(onto_filter(), min_size=1, max_size=2, unique_by=lambda f: f[0])))
    return seq_filter, md, onto


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=queries())
def test_engine_equals_brute_force(world, q):
    engine, store, seqs = world
    seq_filter, md, onto = q
    body = {}
    if seq_filter or md:
        body["sequence"] = {}
        if seq_filter:
            body["sequence"]["name"] = {seq_filter[0]: seq_filter[1]}
        if md:
            body["sequence"]["user_metadata"] = {k: {op: lit} for k, op, lit in md}
    if onto is not None:
        body["ontology"] = {k: {op: lit} for k, op, lit in onto}
    if not body:
        return
    got, stats = run_query_with_stats(engine, store, body)
    got = {it["sequence"]: [t["locator"] for t in it["topics"]] for it in got["items"]}
    assert got == brute(seqs, seq_filter, md, onto), body
    assert stats.chunks_read <= stats.chunks_candidate
