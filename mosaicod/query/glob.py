"""`$match` patterns: a restricted glob (docs/query.md#match-patterns).

Syntax: ``*`` any run of characters (runs collapse), ``?`` exactly one character, ``#`` one
ASCII digit, ``[...]`` a character class (``^`` first negates, ``a-z`` ranges), everything else
literal; the pattern must match the whole value.  Patterns are at most 256 characters.

A pattern is compiled once into tokens, which are then rendered as an anchored regular
expression for PostgreSQL (``~`` / ``like_regex``) and for RE2 (pyarrow), or evaluated directly
by :meth:`Glob.matches`, a set-of-states simulation that runs in O(len(text) * len(pattern)) —
no backtracking, so no pattern can be catastrophic.  Class contents are re-emitted with every
member escaped, so the three evaluators agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PATTERN_LENGTH = 256


class GlobError(ValueError):
    """The pattern is not a valid glob (the message says why)."""


@dataclass(frozen=True)
class _Class:
    negate: bool
    ranges: tuple[tuple[str, str], ...]

    def contains(self, ch: str) -> bool:
        hit = any(lo <= ch <= hi for lo, hi in self.ranges)
        return hit != self.negate


# token kinds: ("lit", ch) | ("any",) | ("digit",) | ("star",) | ("class", _Class)
Token = tuple


def _escape(ch: str) -> str:
    """Escape one literal character for PostgreSQL AREs and RE2 alike (both treat a backslash
    before ASCII punctuation as that literal character)."""
    if ch.isascii() and not ch.isalnum() and ch not in " _":
        if ord(ch) < 32 or ord(ch) == 127:
            return f"\\x{ord(ch):02x}"
        return "\\" + ch
    return ch


@dataclass(frozen=True)
class Glob:
    pattern: str
    tokens: tuple[Token, ...]

    # -- rendering --------------------------------------------------------------------------
    def _body(self) -> str:
        out = []
        for tok in self.tokens:
            kind = tok[0]
            if kind == "lit":
                out.append(_escape(tok[1]))
            elif kind == "any":
                out.append(".")
            elif kind == "digit":
                out.append("[0-9]")
            elif kind == "star":
                out.append(".*")
            else:
                cls: _Class = tok[1]
                parts = ["[", "^" if cls.negate else ""]
                for lo, hi in cls.ranges:
                    parts.append(_escape_in_class(lo))
                    if hi != lo:
                        parts.append("-" + _escape_in_class(hi))
                parts.append("]")
                out.append("".join(parts))
        return "".join(out)

    def pg_regex(self) -> str:
        """Anchored ARE for PostgreSQL ``~`` (``.`` matches newlines there by default)."""
        return "^" + self._body() + "$"

    def re2_regex(self) -> str:
        """Anchored RE2 regex for ``pyarrow.compute.match_substring_regex``."""
        return "(?s)^" + self._body() + "$"

    # -- direct evaluation -------------------------------------------------------------------
    def matches(self, text: str) -> bool:
        toks = self.tokens
        n = len(toks)

        def closure(states: set[int]) -> set[int]:
            todo = list(states)
            while todo:
                i = todo.pop()
                if i < n and toks[i][0] == "star" and i + 1 not in states:
                    states.add(i + 1)
                    todo.append(i + 1)
            return states

        states = closure({0})
        for ch in text:
            nxt: set[int] = set()
            for i in states:
                if i >= n:
                    continue
                tok = toks[i]
                kind = tok[0]
                if kind == "star":
                    nxt.add(i)
                elif kind == "any" or (kind == "lit" and tok[1] == ch) \
                        or (kind == "digit" and "0" <= ch <= "9") \
                        or (kind == "class" and tok[1].contains(ch)):
                    nxt.add(i + 1)
            if not nxt:
                return False
            states = closure(nxt)
        return n in states


def _escape_in_class(ch: str) -> str:
    if ch in "\\]^-[":
        return "\\" + ch
    if ord(ch) < 32 or ord(ch) == 127:
        return f"\\x{ord(ch):02x}"
    return ch


def compile_glob(pattern: str) -> Glob:
    """Validate and tokenise a `$match` pattern; raises GlobError with the reason."""
    if not isinstance(pattern, str):
        raise GlobError("the pattern must be a string")
    if not pattern:
        raise GlobError("the pattern is empty")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise GlobError(f"the pattern is {len(pattern)} characters long, the limit is {MAX_PATTERN_LENGTH}")
    toks: list[Token] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if not toks or toks[-1][0] != "star":
                toks.append(("star",))
            i += 1
        elif ch == "?":
            toks.append(("any",))
            i += 1
        elif ch == "#":
            toks.append(("digit",))
            i += 1
        elif ch == "[":
            cls, i = _parse_class(pattern, i)
            toks.append(("class", cls))
        else:
            toks.append(("lit", ch))
            i += 1
    return Glob(pattern, tuple(toks))


def _parse_class(p: str, start: int) -> tuple[_Class, int]:
    i = start + 1
    negate = False
    if i < len(p) and p[i] == "^":
        negate = True
        i += 1
    members: list[str] = []
    while i < len(p) and p[i] != "]":
        if p[i] in "[\\":
            raise GlobError(f"character class at position {start} may not contain {p[i]!r}")
        members.append(p[i])
        i += 1
    if i >= len(p):
        raise GlobError(f"character class opened at position {start} is not closed with ']'")
    if not members:
        raise GlobError(f"character class at position {start} is empty")
    ranges: list[tuple[str, str]] = []
    j = 0
    while j < len(members):
        if j + 2 < len(members) and members[j + 1] == "-":
            lo, hi = members[j], members[j + 2]
            if lo > hi:
                raise GlobError(f"invalid range {lo}-{hi} in the character class at position {start}")
            ranges.append((lo, hi))
            j += 3
        else:
            ranges.append((members[j], members[j]))
            j += 1
    return _Class(negate, tuple(ranges)), i + 1
