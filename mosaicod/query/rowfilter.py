"""Exact row predicate of ontology filters over Arrow record batches (docs/query.md#ontology-filters).

``compile_predicate(schema, filters)`` resolves every ``<tag>.<path>`` against one topic schema
(struct navigation, at most one list specifier ``[?]`` any / ``[!]`` all / ``[N]`` index, plain
lists compared whole with an array literal), type-checks the operand, and returns a
``RowPredicate`` whose ``mask(batch)`` is the AND of all expressions on the same row.  Nulls never
match; NaN only satisfies ``$neq``.  Temporal columns compare with ISO-8601 strings or integers
(in the column's unit).  ``$ex`` / ``$nex`` carry no row condition (upstream: they act at the
statistics stage only).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import shown
from .parse import Cond, OntoFilter, bad, cond_kind


class Unresolved(Exception):
    """The path does not exist in this schema (not an error unless no schema has it)."""

    def __init__(self, where: str, message: str):
        super().__init__(message)
        self.where = where
        self.message = message


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def leaf_class(t: pa.DataType) -> str | None:
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "text"
    if pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t):
        return "temporal"
    return None


@dataclass(frozen=True)
class Resolved:
    top: str
    pre: tuple[str, ...]  # struct fields below the top-level column (before the list)
    spec: Any  # None | "?" | "!" | int | "plain" (whole list compared with an array literal)
    post: tuple[str, ...]  # struct fields inside the list elements
    leaf_type: pa.DataType
    leaf: str  # number | bool | text | temporal


def resolve(schema: pa.Schema, f: OntoFilter) -> Resolved:
    segs = f.path
    shown = f.key
    idx = schema.get_field_index(segs[0].name)
    if idx < 0:
        raise Unresolved(f.where, f"field {segs[0].name!r} does not exist "
                         f"(fields of {f.tag}: {', '.join(schema.names)})")
    t = schema.field(idx).type
    pre: list[str] = []
    post: list[str] = []
    spec = None
    prefix = f"{f.tag}.{segs[0].name}"
    for i, seg in enumerate(segs):
        if i > 0:
            if _is_list(t):
                raise bad(f.where, f"`{prefix}` is a list: select elements with [?], [!] or [N] "
                                   f"before `.{seg.name}`")
            if not pa.types.is_struct(t):
                raise Unresolved(f.where, f"`{prefix}` has no field {seg.name!r} (it is a {t}, not a struct)")
            fi = t.get_field_index(seg.name)
            if fi < 0:
                names = ", ".join(t.field(k).name for k in range(t.num_fields))
                raise Unresolved(f.where, f"`{prefix}` has no field {seg.name!r} (fields: {names})")
            t = t.field(fi).type
            (post if spec is not None else pre).append(seg.name)
            prefix += "." + seg.name
        if seg.spec is not None:
            if not _is_list(t):
                raise bad(f.where, f"`{prefix}` is not a list ({t}); remove the [{seg.spec}] specifier")
            spec = seg.spec
            t = t.value_type
            prefix += f"[{seg.spec}]"
            if _is_list(t):
                raise bad(f.where, f"`{prefix}`: lists of lists are not queryable")
    if pa.types.is_struct(t):
        names = ", ".join(t.field(k).name for k in range(t.num_fields))
        raise bad(f.where, f"`{shown}` is a struct, not a value; query one of its fields ({names})")
    if _is_list(t):
        if spec is not None:
            raise bad(f.where, f"`{shown}`: lists of lists are not queryable")
        spec = "plain"
        t = t.value_type
        if _is_list(t) or pa.types.is_struct(t):
            raise bad(f.where, f"`{shown}` is a list of {'lists' if _is_list(t) else 'structs'}; "
                               "select elements with [?], [!] or [N] and name a field")
    leaf = leaf_class(t)
    if leaf is None:
        raise bad(f.where, f"`{shown}` has type {t}, which is not queryable")
    return Resolved(segs[0].name, tuple(pre), spec, tuple(post), t, leaf)


# ---------------------------------------------------------------------------------------------
# operand checks and literal conversion


_OPS_BY_LEAF = {
    "number": ("$eq", "$neq", "$lt", "$leq", "$gt", "$geq", "$between", "$outside", "$in", "$ex", "$nex"),
    "text": ("$eq", "$neq", "$lt", "$leq", "$gt", "$geq", "$between", "$outside", "$in", "$match", "$ex", "$nex"),
    "bool": ("$eq", "$neq", "$in", "$ex", "$nex"),
    "temporal": ("$eq", "$neq", "$lt", "$leq", "$gt", "$geq", "$between", "$outside", "$in", "$ex", "$nex"),
}
_UNIT_NS = {"s": 10 ** 9, "ms": 10 ** 6, "us": 10 ** 3, "ns": 1}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_FRACTION = re.compile(r"^(.*T?\d\d:\d\d:\d\d)\.(\d+)(.*)$")


def canonical_temporal_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_timestamp(t):
        return pa.timestamp("ns", t.tz)
    if pa.types.is_date(t):
        return pa.date32()
    return pa.time64("ns")


def _split_fraction(text: str) -> tuple[str, int]:
    """('...HH:MM:SS.ffffff...', extra nanoseconds beyond microseconds)."""
    m = _FRACTION.match(text)
    if not m:
        return text, 0
    frac = m.group(2)
    us, rest = frac[:6], frac[6:9].ljust(3, "0") if len(frac) > 6 else "000"
    return f"{m.group(1)}.{us.ljust(6, '0')}{m.group(3)}", int(rest)


def temporal_literal(where: str, v: Any, t: pa.DataType) -> pa.Scalar:
    """Convert an operand (ISO-8601 string, or integer / decimal string in the column's unit)
    to a scalar of ``canonical_temporal_type(t)``."""
    ct = canonical_temporal_type(t)
    as_int = None
    if isinstance(v, int) and not isinstance(v, bool):
        as_int = v
    elif isinstance(v, str) and re.fullmatch(r"-?[0-9]{1,30}", v.strip()):
        as_int = int(v)
    if as_int is not None:
        if pa.types.is_timestamp(t) or pa.types.is_time(t):
            return _temporal_scalar(where, v, as_int * _UNIT_NS[t.unit], ct)
        if pa.types.is_date64(t):
            return _temporal_scalar(where, v, as_int // 86_400_000, ct)
        return _temporal_scalar(where, v, as_int, ct)
    if not isinstance(v, str):
        raise bad(where, f"wrong operand type for a {t} field: expected an ISO-8601 string or an integer")
    text = v.strip()
    try:
        if pa.types.is_date(t):
            return pa.scalar(dt.date.fromisoformat(text), ct)
        if pa.types.is_time(t):
            base, extra = _split_fraction(text)
            tm = dt.time.fromisoformat(base)
            ns = ((tm.hour * 60 + tm.minute) * 60 + tm.second) * 10 ** 9 + tm.microsecond * 1000 + extra
            return pa.scalar(ns, ct)
        base, extra = _split_fraction(text.replace("Z", "+00:00").replace("z", "+00:00"))
        d = dt.datetime.fromisoformat(base)
    except ValueError:
        raise bad(where, f"{v!r} is not a valid ISO-8601 value for a {t} field") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)  # naive literals are UTC (naive columns too)
    delta = d - _EPOCH
    ns = (delta.days * 86_400 + delta.seconds) * 10 ** 9 + delta.microseconds * 1000 + extra
    return _temporal_scalar(where, v, ns, ct)


def _temporal_scalar(where: str, v: Any, value: int, ct: pa.DataType) -> pa.Scalar:
    """``value`` as a scalar of ``ct``; refused when out of the type's range (int64 ns, int32 days)."""
    lo, hi = (-(2 ** 31), 2 ** 31 - 1) if pa.types.is_date32(ct) else _I64
    if not lo <= value <= hi:
        raise bad(where, f"{shown(v, 60)} is out of range for a {ct} field")
    return pa.scalar(value, ct)


def check_operand(f: OntoFilter, r: Resolved) -> Cond:
    """Type-check the condition against the resolved leaf; returns the condition with temporal
    literals converted to Arrow scalars."""
    c = f.cond
    where = f.where
    if c.op in ("$ex", "$nex"):
        return c
    if r.spec == "plain":
        if not c.is_array:
            raise bad(where, f"`{f.key}` is a list: compare elements with [?], [!] or [N], "
                             "or the whole list with $eq/$neq and a list literal")
    elif c.is_array:
        raise bad(where, f"a list literal needs a list field, but `{f.key}` is a single {r.leaf_type} value")
    if c.op not in _OPS_BY_LEAF[r.leaf]:
        raise bad(where, f"operator {c.op} is not supported on `{f.key}` ({r.leaf_type}); "
                         f"use one of {', '.join(_OPS_BY_LEAF[r.leaf])}")
    k = cond_kind(c)
    want = {"number": ("number",), "bool": ("bool",), "text": ("text",),
            "temporal": ("text", "number")}[r.leaf]
    if k is not None and k not in want:
        raise bad(where, f"wrong operand type: `{f.key}` is {r.leaf_type}, got a {k} operand")
    if r.leaf == "temporal":
        if isinstance(c.value, list):
            return Cond(c.op, [temporal_literal(where, x, r.leaf_type) for x in c.value])
        return Cond(c.op, temporal_literal(where, c.value, r.leaf_type))
    return c


# ---------------------------------------------------------------------------------------------
# evaluation


def _field(arr: pa.Array, name: str) -> pa.Array:
    return pc.struct_field(arr, [arr.type.get_field_index(name)])


def _np(mask) -> np.ndarray:
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def _prep(vals: pa.Array, leaf: str) -> pa.Array:
    if isinstance(vals, pa.ChunkedArray):
        vals = vals.combine_chunks()
    if leaf == "temporal":
        return pc.cast(vals, canonical_temporal_type(vals.type))
    if pa.types.is_float16(vals.type):
        return pc.cast(vals, pa.float32())
    if pa.types.is_string_view(vals.type):  # uploaded as a view: compute kernels want offsets
        return pc.cast(vals, pa.large_string())
    return vals


_I64 = (-(2 ** 63), 2 ** 63 - 1)


def _int_bound(fn, v: float):
    """Exact integer form of ``column OP v`` for an integer column and a float operand:
    (fn, int operand) or a constant True/False."""
    if math.isinf(v):
        big = v > 0
        if fn in (pc.less, pc.less_equal):
            return big
        if fn in (pc.greater, pc.greater_equal):
            return not big
        return fn is pc.not_equal
    if fn in (pc.equal, pc.not_equal):
        if v != math.floor(v):
            return fn is pc.not_equal
        return fn, int(v)
    if fn is pc.less:
        return pc.less, math.ceil(v)
    if fn is pc.less_equal:
        return pc.less_equal, math.floor(v)
    if fn is pc.greater:
        return pc.greater, math.floor(v)
    return pc.greater_equal, math.ceil(v)


def _cmp(fn, vals: pa.Array, v):
    if pa.types.is_integer(vals.type) and isinstance(v, float):
        r = _int_bound(fn, v)
        if isinstance(r, bool):
            return pc.if_else(vals.is_valid(), r, None)
        fn, v = r
        v = min(max(v, _I64[0]), _I64[1])
    s = v if isinstance(v, pa.Scalar) else pa.scalar(v)
    try:
        return fn(vals, s)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return fn(pc.cast(vals, pa.float64(), safe=False), pc.cast(s, pa.float64(), safe=False))


def _value_set(vals: pa.Array, values: list, leaf: str):
    """(array to test, value set) for $in with matching types."""
    if leaf == "temporal":
        return vals, pa.array(list(values), vals.type)
    if leaf == "number":
        if pa.types.is_integer(vals.type) and all(isinstance(x, int) for x in values):
            info = np.iinfo(vals.type.to_pandas_dtype())
            return vals, pa.array([x for x in values if info.min <= x <= info.max], vals.type)
        if pa.types.is_integer(vals.type):  # exact: only integral operands can match
            ints = [int(x) for x in values if float(x).is_integer()]
            info = np.iinfo(vals.type.to_pandas_dtype())
            return vals, pa.array([x for x in ints if info.min <= x <= info.max], vals.type)
        return pc.cast(vals, pa.float64()), pa.array([float(x) for x in values], pa.float64())
    return vals, pa.array(values, vals.type)


def apply_op(c: Cond, vals: pa.Array, leaf: str) -> np.ndarray:
    """Boolean mask (nulls -> False) of ``vals OP operand``."""
    n = len(vals)
    if c.op in ("$ex", "$nex"):
        return np.ones(n, dtype=bool)
    vals = _prep(vals, leaf)
    v = c.value
    compare = _COMPARISONS.get(c.op)
    if compare is not None:
        return _np(_cmp(compare, vals, v))
    if c.op == "$between":
        return _np(_cmp(pc.greater_equal, vals, v[0])) & _np(_cmp(pc.less_equal, vals, v[1]))
    if c.op == "$outside":
        return _np(_cmp(pc.less, vals, v[0])) | _np(_cmp(pc.greater, vals, v[1]))
    if c.op == "$in":
        tested, vs = _value_set(vals, v, leaf)
        if len(vs) == 0:
            return np.zeros(n, dtype=bool)
        return _np(pc.is_in(tested, value_set=vs))
    if c.op == "$match":
        return _np(pc.match_substring_regex(vals, pattern=c.glob.re2_regex()))
    raise AssertionError(c.op)


_COMPARISONS = {"$eq": pc.equal, "$neq": pc.not_equal, "$lt": pc.less, "$leq": pc.less_equal,
                "$gt": pc.greater, "$geq": pc.greater_equal}


def _whole_list_eq(flat: pa.Array, parents: np.ndarray, pos: np.ndarray, lengths: np.ndarray,
                   valid: np.ndarray, lit: list, leaf: str) -> np.ndarray:
    m = len(lit)
    same_len = valid & (lengths == m)
    if m == 0:
        return same_len
    flat = _prep(flat, leaf)
    if leaf == "temporal":
        lit_arr = pa.array(list(lit), flat.type)
    elif leaf == "number":
        lit_arr = pa.array([float(x) for x in lit]) if any(isinstance(x, float) for x in lit) else pa.array(lit)
    else:
        lit_arr = pa.array(lit, flat.type)
    inside = pos < m
    expected = pc.take(lit_arr, pa.array(np.minimum(pos, m - 1)))
    try:
        eq = _np(pc.equal(flat, expected))
    except pa.ArrowNotImplementedError:
        eq = _np(pc.equal(pc.cast(flat, pa.float64(), safe=False), pc.cast(expected, pa.float64(), safe=False)))
    hits = np.bincount(parents[inside & eq], minlength=len(lengths))
    return same_len & (hits == m)


@dataclass(frozen=True)
class Compiled:
    filt: OntoFilter
    res: Resolved
    cond: Cond

    def mask(self, batch: pa.RecordBatch) -> np.ndarray:
        r = self.res
        n = batch.num_rows
        if self.cond.op in ("$ex", "$nex"):
            return np.ones(n, dtype=bool)
        arr = batch.column(r.top)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        for name in r.pre:
            arr = _field(arr, name)
        if r.spec is None:
            return apply_op(self.cond, arr, r.leaf)
        flat = pc.list_flatten(arr)
        parents = np.asarray(pc.list_parent_indices(arr).to_numpy(zero_copy_only=False), dtype=np.int64)
        for name in r.post:
            flat = _field(flat, name)
        lengths = np.asarray(pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False),
                             dtype=np.int64)
        valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        starts = np.cumsum(lengths) - lengths
        pos = np.arange(len(flat), dtype=np.int64) - starts[parents] if len(flat) else np.zeros(0, np.int64)
        if r.spec == "plain":
            eq = _whole_list_eq(flat, parents, pos, lengths, valid, self.cond.value, r.leaf)
            return eq if self.cond.op == "$eq" else valid & ~eq
        em = apply_op(self.cond, flat, r.leaf)
        if r.spec == "?":
            return np.bincount(parents[em], minlength=n) > 0
        if r.spec == "!":
            hits = np.bincount(parents[em], minlength=n)
            return valid & (lengths > 0) & (hits == lengths)
        sel = pos == r.spec
        out = np.zeros(n, dtype=bool)
        out[parents[sel]] = em[sel]
        return out


@dataclass(frozen=True)
class RowPredicate:
    parts: tuple[Compiled, ...]

    @property
    def columns(self) -> list[str]:
        """Top-level columns the predicate reads."""
        seen: list[str] = []
        for p in self.parts:
            if p.cond.op not in ("$ex", "$nex") and p.res.top not in seen:
                seen.append(p.res.top)
        return seen

    def mask(self, batch: pa.RecordBatch) -> np.ndarray:
        out = np.ones(batch.num_rows, dtype=bool)
        for p in self.parts:
            out &= p.mask(batch)
            if not out.any():
                break
        return out


def compile_predicate(schema: pa.Schema, filters: list[OntoFilter]) -> RowPredicate:
    """Compile for one schema; raises Unresolved if a path is missing from it, bad_request on a
    type error."""
    parts = []
    for f in filters:
        r = resolve(schema, f)
        parts.append(Compiled(f, r, check_operand(f, r)))
    return RowPredicate(tuple(parts))

