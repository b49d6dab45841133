"""Sequence / topic / user-metadata filters compiled to SQLAlchemy Core
(docs/query.md#user-metadata).

Clauses are expressed over ``topic_t JOIN sequence_t``; every value is a bind parameter.
User metadata is matched with SQL/JSON path (lax mode) over ``COALESCE(user_metadata, '{}')``:
each key segment is quoted as a JSON-path string, ``*`` / ``**`` / ``[*]`` / ``[N]`` become the
matching JSON-path accessors, and the comparison is a filter ``? (...)`` whose operands are passed
in the ``vars`` JSON object.  Matching is existential (any element / any wildcard hit), JSON types
are never coerced and a JSON ``null`` counts as absent.  ``[!]`` (all elements) is evaluated with
a NOT EXISTS over the array's elements.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, JSONPATH

from ..catalog.tables import sequence_t, topic_t
from .glob import compile_glob
from .parse import Cond, FieldFilter, MdFilter, MdStep, Query, Section

EMPTY_JSON = sa.text("'{}'::jsonb")


def topic_path():
    """Topic path without the sequence prefix and without a leading '/' (``seq/a/b`` -> ``a/b``)."""
    return sa.func.substr(topic_t.c.locator_name, sa.func.length(sequence_t.c.locator_name) + 2)


def _strip_slash(v: Any) -> Any:
    return v[1:] if isinstance(v, str) and v.startswith("/") else v


def _plain(col, c: Cond, normalise=None):
    norm = normalise or (lambda v: v)
    v = c.value
    if c.op == "$eq":
        return col == norm(v)
    if c.op == "$neq":
        return col != norm(v)
    if c.op == "$lt":
        return col < v
    if c.op == "$leq":
        return col <= v
    if c.op == "$gt":
        return col > v
    if c.op == "$geq":
        return col >= v
    if c.op == "$between":
        return sa.and_(col >= v[0], col <= v[1])
    if c.op == "$outside":
        return sa.or_(col < v[0], col > v[1])
    if c.op == "$in":  # one array parameter, whatever the list length (not one per value)
        values = [norm(x) for x in v]
        elem = sa.BigInteger if all(isinstance(x, int) for x in values) else sa.Text
        return col == sa.any_(sa.literal(values, ARRAY(elem)))
    if c.op == "$match":
        return col.op("~")(sa.literal(c.glob.pg_regex(), sa.Text))
    if c.op == "$ex":
        return col.isnot(None)
    if c.op == "$nex":
        return col.is_(None)
    raise AssertionError(c.op)


def _field_clause(section: str, f: FieldFilter):
    c = f.cond
    if section == "sequence":
        if f.field == "name":
            if c.op == "$match" and c.value.startswith("/"):
                c = Cond(c.op, c.value[1:], compile_glob(c.value[1:])) if len(c.value) > 1 else c
            return _plain(sequence_t.c.locator_name, c, _strip_slash)
        return _plain(sequence_t.c.creation_unix_tstamp, c)
    if f.field == "name" and f.legacy and c.op in ("$eq", "$neq", "$in", "$match"):
        # the older dialect names a topic by its whole locator `seq/topic`: either form matches
        by_path = _field_clause(section, FieldFilter(f.field, c, f.where))
        whole = _plain(topic_t.c.locator_name, c, _strip_slash)
        return sa.and_(by_path, whole) if c.op == "$neq" else sa.or_(by_path, whole)
    if f.field == "name":
        path = topic_path()
        if c.op == "$match":
            # accept patterns written for the path with or without its leading '/':
            # the upstream comparison ('/a/b' ~ p) OR the stripped one ('a/b' ~ p-without-'/')
            up = (sa.literal("/", sa.Text) + path).op("~")(sa.literal(c.glob.pg_regex(), sa.Text))
            if c.value.startswith("/") and len(c.value) > 1:
                stripped = compile_glob(c.value[1:]).pg_regex()
            else:
                stripped = c.glob.pg_regex()
            return sa.or_(up, path.op("~")(sa.literal(stripped, sa.Text)))
        return _plain(path, c, _strip_slash)
    col = {"created_at_ns": topic_t.c.creation_unix_tstamp, "ontology_tag": topic_t.c.ontology_tag,
           "serialization_format": topic_t.c.serialization_format}[f.field]
    return _plain(col, c)


# ---------------------------------------------------------------------------------------------
# user metadata


def _jp_string(s: str) -> str:
    """A JSON-path string literal (same escaping as JSON)."""
    return json.dumps(s, ensure_ascii=False)


def _jp_steps(steps: tuple[MdStep, ...]) -> str:
    out = ["$"]
    for s in steps:
        if s.kind == "key":
            out.append("." + _jp_string(s.arg))
        elif s.kind == "any_member":
            out.append(".*")
        elif s.kind == "any_depth":
            out.append(".**")
        elif s.kind == "index":
            out.append(f"[{s.arg}]")
        elif s.kind == "any_elem":
            out.append("[*]")
        else:
            raise AssertionError(s.kind)
    return "".join(out)


def _jp_filter(c: Cond) -> tuple[str, dict]:
    """(filter expression on @, vars) for a comparison operator."""
    v = c.value
    if c.op == "$eq":
        return "@ == $v", {"v": v}
    if c.op == "$neq":
        return "@ != null && @ != $v", {"v": v}
    simple = {"$lt": "<", "$leq": "<=", "$gt": ">", "$geq": ">="}
    if c.op in simple:
        return f"@ {simple[c.op]} $v", {"v": v}
    if c.op == "$between":
        return "@ >= $a && @ <= $b", {"a": v[0], "b": v[1]}
    if c.op == "$outside":
        return "@ < $a || @ > $b", {"a": v[0], "b": v[1]}
    if c.op == "$match":
        return f"@ like_regex {_jp_string(c.glob.pg_regex())} flag \"s\"", {}
    raise AssertionError(c.op)


def _exists(target, path: str, vars_: dict | None = None):
    args = [target, sa.cast(sa.literal(path, sa.Text), JSONPATH)]
    if vars_:
        args.append(sa.cast(sa.literal(json.dumps(vars_), sa.Text), JSONB))
    return sa.func.jsonb_path_exists(*args)


_SCALAR = '(@.type() == "number" || @.type() == "string" || @.type() == "boolean")'


def _md_in(target, steps: tuple[MdStep, ...], values: list):
    """$in: some scalar along the path (arrays unwrapped, lax mode) equals one of ``values``,
    passed as one jsonb[] parameter (a JSON-path ``||`` chain overflows PostgreSQL's stack for
    long lists).  jsonb equality compares numbers numerically and never equals across types,
    like the JSON-path ``==`` of the other operators."""
    found = sa.func.jsonb_path_query(target, sa.cast(sa.literal(f"{_jp_steps(steps)} ? {_SCALAR}", sa.Text), JSONPATH)) \
        .table_valued(sa.column("value", JSONB)).render_derived(name="md_in")
    wanted = sa.cast(sa.literal([json.dumps(v) for v in values], ARRAY(sa.Text)), ARRAY(JSONB))
    return sa.exists(sa.select(sa.literal(1)).select_from(found).where(found.c.value == sa.any_(wanted)))


def _md_exists(target, steps: tuple[MdStep, ...], c: Cond):
    """SQL boolean: the (non-$nex) condition holds somewhere along the path."""
    if c.op == "$ex":
        return _exists(target, _jp_steps(steps) + '.type() ? (@ != "null")')
    if c.op == "$in":
        return _md_in(target, steps, c.value)
    expr, vars_ = _jp_filter(c)
    return _exists(target, f"{_jp_steps(steps)} ? ({expr})", vars_)


def md_clause(column, f: MdFilter):
    target = sa.func.coalesce(column, EMPTY_JSON)
    cond = Cond("$ex") if f.cond.op == "$nex" else f.cond
    steps = f.steps
    if any(s.kind == "all_elem" for s in steps):
        i = next(k for k, s in enumerate(steps) if s.kind == "all_elem")
        clause = _all_elements(target, steps[:i], steps[i + 1:], cond)
    else:
        clause = _md_exists(target, steps, cond)
    return sa.not_(clause) if f.cond.op == "$nex" else clause


def _all_elements(target, prefix, suffix, c: Cond):
    """Some array reached by ``prefix`` is non-empty and every element satisfies ``suffix c``."""
    arrays = sa.func.jsonb_path_query(target, sa.cast(sa.literal(_jp_steps(prefix), sa.Text), JSONPATH)) \
        .table_valued(sa.column("value", JSONB)).render_derived(name="md_arr")
    elems = sa.func.jsonb_array_elements(arrays.c.value).table_valued(sa.column("value", JSONB)).render_derived(name="md_elem")
    elem_ok = _md_exists(elems.c.value, suffix, c)
    has_bad = sa.exists(sa.select(sa.literal(1)).select_from(elems).where(sa.not_(elem_ok)))
    return sa.exists(
        sa.select(sa.literal(1)).select_from(arrays).where(
            sa.func.jsonb_typeof(arrays.c.value) == "array",
            sa.func.jsonb_array_length(arrays.c.value) > 0,
            sa.not_(has_bad)))


# ---------------------------------------------------------------------------------------------


def section_clauses(name: str, sec: Section) -> list:
    out = [_field_clause(name, f) for f in sec.fields]
    col = sequence_t.c.user_metadata if name == "sequence" else topic_t.c.user_metadata
    out.extend(md_clause(col, m) for m in sec.metadata)
    return out


def where_clauses(q: Query) -> list:
    """All sequence/topic clauses of the query (empty list = unrestricted)."""
    return section_clauses("sequence", q.sequence) + section_clauses("topic", q.topic)


def topics_from():
    return topic_t.join(sequence_t, topic_t.c.sequence_id == sequence_t.c.sequence_id)
