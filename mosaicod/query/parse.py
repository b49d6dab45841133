"""Query JSON -> validated AST (docs/query.md#request, docs/query.md#operators).

Every error is a ``bad_request`` naming the offending part, e.g.
``query.topic.created_at_ns: operator $match is not supported here (use one of ...)``.
Values are typed as the spec says: JSON integers that fit int64 are Integer, other numbers
Float, strings Text, booleans Boolean; Integer and Float compare as numbers everywhere.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from .. import errors
from ..errors import shown
from .glob import Glob, GlobError, compile_glob

OPERATORS = ("$eq", "$neq", "$lt", "$leq", "$gt", "$geq", "$between", "$outside", "$in",
             "$match", "$ex", "$nex")
ORDERING = ("$lt", "$leq", "$gt", "$geq", "$between", "$outside")
MAX_LIST_EQ = 1024  # MOSAICOD_MAX_SIZE_PLAIN_LIST_EQ upstream
MAX_IN_VALUES = 100_000
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1

TEXT_OPS = ("$eq", "$neq", "$in", "$match", "$ex", "$nex")
INT_OPS = ("$eq", "$neq", "$lt", "$leq", "$gt", "$geq", "$between", "$outside", "$in", "$ex", "$nex")

# system fields: canonical name -> (value kind, allowed operators); aliases below
SEQUENCE_FIELDS = {"name": ("text", TEXT_OPS), "created_at_ns": ("int", INT_OPS)}
TOPIC_FIELDS = {"name": ("text", TEXT_OPS), "created_at_ns": ("int", INT_OPS),
                "ontology_tag": ("text", TEXT_OPS), "serialization_format": ("text", TEXT_OPS)}
ALIASES = {"locator": "name", "created_at": "created_at_ns"}
# the older dialect's key for `name`: under it `$match` means "contains" (pattern `*v*`)
LEGACY_NAME_KEY = "locator"


def bad(where: str, detail: str) -> errors.MosaicoError:
    return errors.bad_request(f"{shown(where)}: {detail}")


def _q(value) -> str:
    """A quoted input value inside a message (cut to 100 characters)."""
    return repr(shown(value, 100)) if isinstance(value, str) else shown(value, 100)


# ---------------------------------------------------------------------------------------------
# conditions


@dataclass(frozen=True)
class Cond:
    """One operator applied to one field: ``op`` and its normalised operand."""

    op: str
    value: Any = None  # scalar | list (in/between/outside, array literal for eq/neq) | None
    glob: Glob | None = None  # $match only

    @property
    def is_array(self) -> bool:
        return self.op in ("$eq", "$neq") and isinstance(self.value, list)


def kind_of(v: Any) -> str:
    """'bool' | 'number' | 'text' | 'other' (bool is checked first: True is an int in Python)."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "text"
    return "other"


def _scalar(where: str, v: Any) -> Any:
    k = kind_of(v)
    if k == "other":
        got = "null" if v is None else {"dict": "an object", "list": "a list"}.get(type(v).__name__, "another type")
        raise bad(where, f"expected a number, string or boolean operand, got {got}")
    if k == "number":
        if isinstance(v, int) and not INT64_MIN <= v <= INT64_MAX:
            try:
                v = float(v)  # beyond int64: a Float operand
            except OverflowError:
                raise bad(where, f"the number {shown(v, 40)} is out of range (at most about ±1.8e308)") from None
        if isinstance(v, float) and math.isnan(v):
            raise bad(where, "NaN is not a valid operand (it never compares equal or ordered)")
    return v


def _same_kind(where: str, values: list) -> str:
    kinds = {kind_of(v) for v in values}
    if len(kinds) > 1:
        raise bad(where, f"all values must have the same type, got {sorted(kinds)}")
    return kinds.pop()


def parse_cond(where: str, raw: Any, *, allow_arrays: bool = False) -> Cond:
    """Parse ``{"$op": operand}`` (or the bare ``"$ex"`` / ``"$nex"``) into a Cond."""
    if isinstance(raw, str):
        if raw in ("$ex", "$nex"):
            return Cond(raw)
        raise bad(where, f"expected an operator object like {{\"$eq\": value}}, got the string {_q(raw)}")
    if not isinstance(raw, dict):
        raise bad(where, f"expected an operator object like {{\"$eq\": value}}, got {type(raw).__name__}")
    if len(raw) != 1:
        raise bad(where, f"expected exactly one operator, got {len(raw)} ({', '.join(map(str, raw)) or 'none'})")
    op, v = next(iter(raw.items()))
    if op not in OPERATORS:
        raise bad(where, f"unknown operator {_q(op)} (known: {', '.join(OPERATORS)})")
    w = f"{where}.{op}"
    if op in ("$ex", "$nex"):
        if v is not None:
            raise bad(w, "takes no operand (send null)")
        return Cond(op)
    if op == "$match":
        if not isinstance(v, str):
            raise bad(w, f"the pattern must be a string, got {kind_of(v) if v is not None else 'null'}")
        try:
            return Cond(op, v, compile_glob(v))
        except GlobError as exc:
            raise bad(w, str(exc)) from None
    if op in ("$between", "$outside"):
        if not isinstance(v, list) or len(v) != 2:
            raise bad(w, "expects a list of exactly 2 values [min, max]")
        vals = [_scalar(w, x) for x in v]
        k = _same_kind(w, vals)
        if k == "bool":
            raise bad(w, "booleans have no order; use $eq")
        if vals[0] > vals[1]:
            raise bad(w, f"empty range: min {vals[0]!r} is greater than max {vals[1]!r}")
        return Cond(op, vals)
    if op == "$in":
        if not isinstance(v, list) or not v:
            raise bad(w, "expects a non-empty list of values")
        if len(v) > MAX_IN_VALUES:
            raise bad(w, f"at most {MAX_IN_VALUES} values are allowed, got {len(v)}")
        vals = [_scalar(w, x) for x in v]
        _same_kind(w, vals)
        return Cond(op, vals)
    if isinstance(v, list):
        if op not in ("$eq", "$neq") or not allow_arrays:
            raise bad(w, "a list operand is only allowed with $eq/$neq on an ontology list field")
        if len(v) > MAX_LIST_EQ:
            raise bad(w, f"list literal longer than {MAX_LIST_EQ} values")
        vals = [_scalar(w, x) for x in v]
        if vals:
            _same_kind(w, vals)
        return Cond(op, vals)
    val = _scalar(w, v)
    if op in ORDERING and kind_of(val) == "bool":
        raise bad(w, "booleans have no order; use $eq or $neq")
    return Cond(op, val)


def _substring(where: str, c: Cond) -> Cond:
    """The older dialect's `$match`: the value anywhere in the name (its glob wrapped in `*`; a
    leading '/' stays first, to be dropped as for `name`)."""
    value = c.value
    pattern = f"/*{value[1:]}*" if value.startswith("/") else f"*{value}*"
    try:
        return Cond(c.op, pattern, compile_glob(pattern))
    except GlobError as exc:
        raise bad(f"{where}.$match", str(exc)) from None


def cond_kind(c: Cond) -> str | None:
    """Kind of the operand values ('number', 'text', 'bool') or None for $ex/$nex."""
    if c.op in ("$ex", "$nex"):
        return None
    if c.op == "$match":
        return "text"
    if isinstance(c.value, list):
        return kind_of(c.value[0]) if c.value else None
    return kind_of(c.value)


# ---------------------------------------------------------------------------------------------
# user metadata keys


_MD_KEY_OK = re.compile(r"^[A-Za-z0-9 _\-*\[\].?!]+$")
_MD_SEG = re.compile(r"^(?P<name>[^\[\]]*)(?P<subs>(\[[^\[\]]*\])*)$")


MAX_INDEX = 2 ** 31 - 1
_INDEX = re.compile(r"[0-9]+")


def _index(where: str, digits: str) -> int:
    """An array subscript [N]: at most 2^31-1 (PostgreSQL's and Arrow's list index range)."""
    if len(digits) > 10 or int(digits) > MAX_INDEX:
        raise bad(where, f"array index [{shown(digits, 20)}] is too large (at most {MAX_INDEX})")
    return int(digits)


@dataclass(frozen=True)
class MdStep:
    """One step of a user-metadata path: a member name, ``*`` (any member), ``**`` (any depth),
    or an array selector ``[*]`` / ``[?]`` (any element), ``[!]`` (all elements), ``[N]``."""

    kind: str  # "key" | "any_member" | "any_depth" | "index" | "any_elem" | "all_elem"
    arg: Any = None


def parse_md_key(where: str, key: str) -> tuple[MdStep, ...]:
    if not isinstance(key, str) or not key:
        raise bad(where, "user-metadata key must be a non-empty string")
    if "--" in key or "***" in key or not _MD_KEY_OK.match(key):
        raise bad(where, "invalid user-metadata key: allowed are letters, digits, space, '_', '-', "
                         "'.' between keys, '*'/'**' wildcards and [*] [?] [!] [N] selectors "
                         "(no '--', no '***')")
    steps: list[MdStep] = []
    for seg in key.split("."):
        m = _MD_SEG.match(seg)
        if not m or (not m["name"] and not m["subs"]):
            raise bad(where, f"invalid segment {_q(seg)} in user-metadata key {_q(key)}")
        name = m["name"]
        if name == "*":
            steps.append(MdStep("any_member"))
        elif name == "**":
            steps.append(MdStep("any_depth"))
        elif "*" in name:
            raise bad(where, f"'*' must be a whole key segment, got {_q(seg)}")
        elif name:
            if "?" in name or "!" in name:
                raise bad(where, f"invalid segment {_q(seg)}: '?' and '!' are only valid as [?] / [!]")
            steps.append(MdStep("key", name))
        elif not steps:
            raise bad(where, f"key {_q(key)} cannot start with an array selector")
        for sub in re.findall(r"\[([^\[\]]*)\]", m["subs"] or ""):
            if sub in ("*", "?"):
                steps.append(MdStep("any_elem"))
            elif sub == "!":
                steps.append(MdStep("all_elem"))
            elif _INDEX.fullmatch(sub):
                steps.append(MdStep("index", _index(where, sub)))
            else:
                raise bad(where, f"invalid array selector [{shown(sub, 20)}] in {_q(key)} (use [*], [?], [!] or [N])")
    if sum(1 for s in steps if s.kind == "all_elem") > 1:
        raise bad(where, f"at most one [!] selector is allowed in {_q(key)}")
    return tuple(steps)


# ---------------------------------------------------------------------------------------------
# ontology keys


@dataclass(frozen=True)
class Seg:
    name: str
    spec: Any = None  # None | "?" | "!" | int


_ONTO_SEG = re.compile(r"^(?P<name>[^\[\]]+?)(\[(?P<spec>\?|!|[0-9]+)\])?$")


def parse_onto_key(where: str, key: str) -> tuple[str, tuple[Seg, ...]]:
    tag, dot, rest = key.partition(".")
    if not dot or not tag or not rest:
        raise bad(where, f"ontology key {_q(key)} must be '<ontology_tag>.<field>[.<field>...]'")
    segs = []
    for part in rest.split("."):
        m = _ONTO_SEG.match(part)
        if not m:
            raise bad(where, f"invalid field segment {_q(part)} in {_q(key)} "
                             "(a name, optionally followed by one of [?], [!] or [N])")
        spec = m["spec"]
        segs.append(Seg(m["name"], _index(where, spec) if spec and spec.isdigit() else spec))
    if sum(1 for s in segs if s.spec is not None) > 1:
        raise bad(where, f"at most one list specifier ([?], [!], [N]) is allowed in {_q(key)}")
    return tag, tuple(segs)


# ---------------------------------------------------------------------------------------------
# the query


@dataclass(frozen=True)
class FieldFilter:
    field: str  # canonical system field
    cond: Cond
    where: str
    legacy: bool = False  # given under the older dialect's key (`locator`)


@dataclass(frozen=True)
class MdFilter:
    key: str
    steps: tuple[MdStep, ...]
    cond: Cond
    where: str


@dataclass(frozen=True)
class OntoFilter:
    key: str
    tag: str
    path: tuple[Seg, ...]
    cond: Cond
    where: str

    @property
    def column_name(self) -> str:
        """Name of the statistics column (list specifiers dropped)."""
        return ".".join(s.name for s in self.path)


@dataclass
class Section:
    fields: list[FieldFilter] = field(default_factory=list)
    metadata: list[MdFilter] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.fields or self.metadata)


@dataclass
class Query:
    sequence: Section
    topic: Section
    ontology: list[OntoFilter] | None  # None = section absent


def _section(name: str, raw: Any, fields: dict) -> Section:
    where = f"query.{name}"
    sec = Section()
    if raw is None:
        return sec
    if not isinstance(raw, dict):
        raise bad(where, f"expected an object, got {type(raw).__name__}")
    seen: set[str] = set()
    for key, val in raw.items():
        w = f"{where}.{key}"
        if key == "user_metadata":
            if not isinstance(val, dict):
                raise bad(w, f"expected an object of '<key.path>': {{operator}} entries, got {type(val).__name__}")
            for mk, mv in val.items():
                mw = f"{w}.{mk}"
                steps = parse_md_key(mw, mk)
                sec.metadata.append(MdFilter(mk, steps, parse_cond(mw, mv), mw))
            continue
        canon = ALIASES.get(key, key)
        if canon not in fields:
            known = ", ".join(list(fields) + ["user_metadata"])
            raise bad(w, f"unknown field {_q(key)} (known: {known})")
        if canon in seen:
            raise bad(w, f"field {canon!r} given twice (via an alias)")
        seen.add(canon)
        kind, ops = fields[canon]
        cond = parse_cond(w, val)
        if key == LEGACY_NAME_KEY and cond.op == "$match":
            cond = _substring(w, cond)
        if cond.op not in ops:
            raise bad(w, f"operator {cond.op} is not supported for this field (use one of {', '.join(ops)})")
        k = cond_kind(cond)
        if k is not None:
            vals = cond.value if isinstance(cond.value, list) else [cond.value]
            if kind == "text" and k != "text":
                raise bad(w, f"wrong operand type: expected a string, got {k}")
            if kind == "int" and not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
                raise bad(w, "wrong operand type: expected an integer (nanoseconds since the epoch)")
        sec.fields.append(FieldFilter(canon, cond, w, legacy=key == LEGACY_NAME_KEY))
    return sec


def parse_ontology_filters(raw: Any, where: str = "query.ontology") -> list[OntoFilter]:
    if not isinstance(raw, dict):
        raise bad(where, f"expected an object of '<tag>.<field>': {{operator}} entries, got {type(raw).__name__}")
    out = []
    for key, val in raw.items():
        if key == "include_timestamp_range":
            continue  # removed in 0.6, still in the daemon docs: accepted and ignored
        w = f"{where}.{key}"
        tag, path = parse_onto_key(w, key)
        out.append(OntoFilter(key, tag, path, parse_cond(w, val, allow_arrays=True), w))
    return out


def parse_query(body: Any) -> Query:
    if not isinstance(body, dict):
        raise bad("query", f"expected a JSON object, got {type(body).__name__}")
    unknown = set(body) - {"sequence", "topic", "ontology"}
    if unknown:
        raise bad("query", f"unknown section(s) {sorted(unknown)} (known: sequence, topic, ontology)")
    seq = _section("sequence", body.get("sequence"), SEQUENCE_FIELDS)
    top = _section("topic", body.get("topic"), TOPIC_FIELDS)
    onto = parse_ontology_filters(body["ontology"]) if "ontology" in body and body["ontology"] is not None else None
    return Query(seq, top, onto)
