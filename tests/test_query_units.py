"""Unit tests of the query parser, the $match glob and the row predicate (no server)."""

from __future__ import annotations

import math
import re

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mosaicod.errors import MosaicoError
from mosaicod.query.glob import GlobError, compile_glob
from mosaicod.query.parse import parse_md_key, parse_onto_key, parse_ontology_filters, parse_query
from mosaicod.query.rowfilter import Unresolved, compile_predicate


@pytest.mark.parametrize("pattern,text,ok", [
    ("abc", "abc", True), ("abc", "abcd", False), ("a*c", "abbbc", True), ("a*c", "ac", True),
    ("a?c", "abc", True), ("a?c", "ac", False), ("a?c", "a c", True), ("#1", "51", True),
    ("#1", "x1", False), ("[a-c]x", "bx", True), ("[a-c]x", "dx", False), ("[^a-c]x", "dx", True),
    ("a.b", "a.b", True), ("a.b", "axb", False), ("a+(b)", "a+(b)", True), ("**", "", True),
    ("*", "line\nbreak", True), ("a$", "a$", True), ("^a", "^a", True), ("é?", "éx", True),
    ("[-a]", "-", True), ("a|b", "a", False),
])
def test_glob_semantics_agree_everywhere(pattern, text, ok):
    g = compile_glob(pattern)
    assert g.matches(text) is ok
    assert pc.match_substring_regex(pa.array([text]), g.re2_regex())[0].as_py() is ok
    assert (re.fullmatch(g.pg_regex()[1:-1], text, re.S) is not None) is ok


@pytest.mark.parametrize("pattern,msg", [("", "empty"), ("x" * 257, "limit is 256"), ("[b-a]", "invalid range"),
                                         ("[ab", "not closed"), ("[]", "empty"), ("[a\\]", "may not contain")])
def test_glob_rejects(pattern, msg):
    with pytest.raises(GlobError, match=re.escape(msg)):
        compile_glob(pattern)


def test_glob_has_no_catastrophic_backtracking():
    g = compile_glob("*a" * 60 + "b")
    text = "a" * 5000
    assert g.matches(text) is False  # set-of-states simulation: linear in the text
    assert pc.match_substring_regex(pa.array([text]), g.re2_regex())[0].as_py() is False


@given(st.text(alphabet="ab*?#[]-^1", max_size=12), st.text(alphabet="ab1-^", max_size=12))
@settings(max_examples=200, deadline=None)
def test_glob_simulation_equals_re2(pattern, text):
    try:
        g = compile_glob(pattern)
    except GlobError:
        return
    assert g.matches(text) == pc.match_substring_regex(pa.array([text]), g.re2_regex())[0].as_py()


def test_parse_aliases_and_values():
    q = parse_query({"sequence": {"locator": {"$eq": "a"}, "created_at": {"$between": [1, 2]}},
                     "ontology": {"include_timestamp_range": True, "IMU.a.x": {"$in": [1, 2.5]}}})
    assert [f.field for f in q.sequence.fields] == ["name", "created_at_ns"]
    assert q.ontology[0].cond.value == [1, 2.5]
    assert parse_query({"sequence": {"name": "$ex"}}).sequence.fields[0].cond.op == "$ex"
    big = parse_query({"ontology": {"T.x": {"$eq": 2 ** 70}}}).ontology[0].cond.value
    assert isinstance(big, float)


@pytest.mark.parametrize("body,needle", [
    ([], "expected a JSON object"),
    ({"sequence": {"name": {"$eq": "a"}, "locator": {"$eq": "b"}}}, "given twice"),
    ({"sequence": {"created_at_ns": {"$eq": 1.5}}}, "expected an integer"),
    ({"sequence": {"created_at_ns": {"$match": "1*"}}}, "operator $match is not supported"),
    ({"topic": {"user_metadata": {"a": {"$eq": [1]}}}}, "list operand"),
    ({"ontology": {"T.x": {"$eq": float("nan")}}}, "NaN"),
    ({"ontology": {"T.x": {"$ex": 1}}}, "takes no operand"),
    ({"ontology": {"T.x[?].y[!]": {"$eq": 1}}}, "at most one list specifier"),
    ({"ontology": {".x": {"$eq": 1}}}, "must be '<ontology_tag>.<field>"),
])
def test_parse_errors(body, needle):
    with pytest.raises(MosaicoError) as ei:
        parse_query(body)
    assert needle in ei.value.message


def test_md_keys():
    kinds = [s.kind for s in parse_md_key("k", "a.*.b[*].c[2].**")]
    assert kinds == ["key", "any_member", "key", "any_elem", "key", "index", "any_depth"]
    for bad in ("a--b", "a***", "a.b$", "a*b", "", "a[x]"):
        with pytest.raises(MosaicoError):
            parse_md_key("k", bad)


def test_onto_keys():
    tag, segs = parse_onto_key("w", "Robot.poses[!].position.x")
    assert tag == "Robot" and [(s.name, s.spec) for s in segs] == [("poses", "!"), ("position", None), ("x", None)]


SCHEMA = pa.schema([("timestamp_ns", pa.int64()), ("v", pa.float32()),
                    ("l", pa.list_(pa.int64())),
                    ("ls", pa.list_(pa.struct([("x", pa.float64()), ("tag", pa.string())]))),
                    ("ll", pa.list_(pa.list_(pa.int8()))), ("b", pa.binary()),
                    ("t", pa.timestamp("ms", "UTC")), ("d", pa.date32())])
BATCH = pa.RecordBatch.from_pylist([
    {"timestamp_ns": 0, "v": 1.0, "l": [1, 2, 3], "ls": [{"x": 1.0, "tag": "a"}], "t": 0, "d": 0},
    {"timestamp_ns": 1, "v": math.nan, "l": [], "ls": [], "t": 1500, "d": 19723},
    {"timestamp_ns": 2, "v": None, "l": None, "ls": None, "t": None, "d": None},
    {"timestamp_ns": 3, "v": 5.0, "l": [7, None], "ls": [{"x": 2.0, "tag": "b"}, {"x": None, "tag": "c"}],
     "t": 86_400_000, "d": 1},
], schema=SCHEMA)


def mask(onto: dict) -> list[bool]:
    return compile_predicate(SCHEMA, parse_ontology_filters(onto)).mask(BATCH).tolist()


@pytest.mark.parametrize("onto,expected", [
    ({"T.v": {"$neq": 1.0}}, [False, True, False, True]),  # NaN != 1, null never
    ({"T.v": {"$lt": 100.0}}, [True, False, False, True]),
    ({"T.l[?]": {"$eq": 7}}, [False, False, False, True]),
    ({"T.l[!]": {"$geq": 1}}, [True, False, False, False]),  # null element fails "all"; [] is false
    ({"T.l[2]": {"$eq": 3}}, [True, False, False, False]),
    ({"T.l[1]": {"$eq": 2.0}}, [True, False, False, False]),
    ({"T.l[?]": {"$lt": 1.5}}, [True, False, False, False]),
    ({"T.l": {"$eq": [1, 2, 3]}}, [True, False, False, False]),
    ({"T.l": {"$eq": []}}, [False, True, False, False]),
    ({"T.l": {"$neq": [1, 2, 3]}}, [False, True, False, True]),
    ({"T.ls[?].tag": {"$match": "[bc]"}}, [False, False, False, True]),
    ({"T.ls[!].x": {"$gt": 0.5}}, [True, False, False, False]),
    ({"T.ls[1].tag": {"$in": ["c"]}}, [False, False, False, True]),
    ({"T.t": {"$geq": "1970-01-01T00:00:01.5Z"}}, [False, True, False, True]),
    ({"T.t": {"$eq": "1500"}}, [False, True, False, False]),
    ({"T.d": {"$between": ["1970-01-02", "2024-01-01"]}}, [False, True, False, True]),
    ({"T.v": {"$ex": None}, "T.timestamp_ns": {"$gt": 0}}, [False, True, True, True]),
])
def test_row_predicate(onto, expected):
    assert mask(onto) == expected


@pytest.mark.parametrize("onto,needle", [
    ({"T.ll[?]": {"$eq": 1}}, "lists of lists"),
    ({"T.b": {"$eq": "x"}}, "not queryable"),
    ({"T.ls[?]": {"$eq": 1}}, "is a struct"),
    ({"T.ls.x": {"$eq": 1}}, "is a list"),
    ({"T.v": {"$eq": [1]}}, "needs a list field"),
    ({"T.t": {"$match": "1*"}}, "not supported"),
])
def test_row_predicate_errors(onto, needle):
    with pytest.raises(MosaicoError) as ei:
        compile_predicate(SCHEMA, parse_ontology_filters(onto))
    assert needle in ei.value.message


def test_missing_field_is_unresolved_not_an_error():
    with pytest.raises(Unresolved):
        compile_predicate(SCHEMA, parse_ontology_filters({"T.nope": {"$eq": 1}}))
