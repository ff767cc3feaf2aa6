"""Semantic version constraints, as `skopeo sync` evaluates `images-by-semver`.

skopeo parses every tag with Masterminds/semver v3's NewVersion and keeps the
tags its Constraints.Check accepts; tags that are not versions are skipped.
This module gives the same answers (written from the documented and observed
behaviour of that library, not from its code):

Versions (tags)
    ``[v]MAJOR[.MINOR[.PATCH]][-PRERELEASE][+BUILD]``: a missing minor or
    patch is 0 ("1.2" is 1.2.0, "v3" is 3.0.0), leading zeros are accepted
    ("01.2" is 1.2.0) except in numeric prerelease identifiers ("1.0.0-rc.01"
    is not a version), numbers above 2**64-1 are not versions, and an upper
    case "V" is not a prefix. Build metadata never changes a comparison.

Constraints
    Terms ``OP VERSION``, ANDed when separated by whitespace or a comma, ORed
    with ``||``. Operators: ``=`` (or none), ``!=``, ``>``, ``<``, ``>=``
    (``=>``), ``<=`` (``=<``), ``~`` (``~>``), ``^``. The version of a term
    may be partial or hold wildcards (``x``, ``X``, ``*``): "1.2", "1.x",
    "1.2.*", "*". A hyphen range ``A - B`` (spaces around the hyphen) is
    ``>= A, <= B``.

    * ``=1.2.x``, ``1.2``: ``~`` of it (1.2.0 <= v < 1.3.0); ``1``, ``1.x``:
      1.0.0 <= v < 2.0.0; ``*``: anything.
    * ``~1.2.3``: 1.2.3 <= v < 1.3.0; ``~1``: 1.0.0 <= v < 2.0.0.
    * ``^1.2.3``: 1.2.3 <= v < 2.0.0; ``^0.2.3``: 0.2.3 <= v < 0.3.0;
      ``^0.0.3``: exactly 0.0.3.
    * ``>1.2``: 1.3.0 and up (greater than every 1.2.z); ``<=1.2``: up to
      every 1.2.z; ``>=1.2`` and ``<1.2`` compare with 1.2.0.
    * ``!=1.2``: not any 1.2.z; ``!=1.2.3``: not 1.2.3.

    Prereleases: a version with a prerelease ("1.3.0-rc1") satisfies an AND
    group only when some term of that group has a prerelease itself, and then
    it is compared by semver precedence like any version (``>=1.0.0-0``
    takes every prerelease from 1.0.0-0 up, of any later MAJOR.MINOR.PATCH
    too; npm would restrict it to 1.0.0 prereleases, Masterminds does not).

    The corner cases follow the library where it is odd but deliberate:
    ``^*`` means 0.0.0 alone, ``^0.0`` and ``<=*`` mean 0.0.z, ``!=*``
    means everything but 0.0.0; a wildcard ends the version ("1.x.3" is
    "1.x"), and after a hyphen range the next term needs no separator
    ("1 - 2>=1.5").

Differences, all in constraints Masterminds rejects (so that no constraint
skopeo accepts means anything else here): a hyphen range after a term and a
space (">=1.0 2 - 3") and hyphen ranges touching ``||`` without spaces
("1 - 2||3 - 4") are accepted here; Masterminds rejects both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Constraint", "SemverError", "Version", "parse_constraint", "parse_version"]

_MAX = 2**64 - 1  # the library's numbers are uint64
_WS = " \t\n\f\r"  # what Go's \s matches (no Unicode spaces)

_IDENTS = r"[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*"
_VERSION_RE = re.compile(rf"v?([0-9]+)(?:\.([0-9]+))?(?:\.([0-9]+))?(?:-({_IDENTS}))?(?:\+({_IDENTS}))?")
# Digits or a wildcard; after the first wildcard the rest of the version is ignored, whatever
# it holds of these characters ("1.x.1x" is "1.x"), as Masterminds does.
_PART = r"[0-9xX*|]+"
_TERM_VERSION_RE = re.compile(rf"v?({_PART})(?:\.({_PART}))?(?:\.({_PART}))?(?:-({_IDENTS}))?(?:\+({_IDENTS}))?")
# Longest operators first; no operator at all means "=".
_OP_RE = re.compile(r"!=|>=|=>|<=|=<|~>|>|<|=|~|\^")
_CANONICAL_OP = {"": "=", "=>": ">=", "=<": "<=", "~>": "~"}
_WILDCARDS = frozenset("xX*")
_HYPHEN_RE = re.compile(rf"[{_WS}]+-[{_WS}]+")


class SemverError(ValueError):
    """A constraint that cannot be parsed; the message says where."""


# ---------------------------------------------------------------- versions


def _u64(digits: str) -> int | None:
    """The value of a string of ASCII digits, None above 2**64-1 (checked before int() sees
    thousands of digits, which Python refuses)."""
    significant = digits.lstrip("0")
    if len(significant) > 20:
        return None
    n = int(significant or "0")
    return n if n <= _MAX else None


def _numeric(ident: str) -> bool:
    return ident.isascii() and ident.isdigit() and _u64(ident) is not None


def _compare_ident(a: str, b: str) -> int:
    if a == b:
        return 0
    if not a:  # a shorter prerelease sorts first
        return -1
    if not b:
        return 1
    na, nb = _numeric(a), _numeric(b)
    if na and nb:
        return 1 if (_u64(a) or 0) > (_u64(b) or 0) else -1
    if na != nb:  # numeric identifiers sort before alphanumeric ones
        return -1 if na else 1
    return 1 if a > b else -1  # ASCII order, as the spec says


def _compare_prerelease(a: str, b: str) -> int:
    pa, pb = a.split("."), b.split(".")
    for i in range(max(len(pa), len(pb))):
        d = _compare_ident(pa[i] if i < len(pa) else "", pb[i] if i < len(pb) else "")
        if d:
            return d
    return 0


def _bad_prerelease(pre: str) -> bool:
    # Numeric identifiers take no leading zero (the regexes already forbid empty ones).
    return any(p.isdigit() and len(p) > 1 and p[0] == "0" for p in pre.split("."))


@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    prerelease: str = ""

    def compare(self, other: Version) -> int:
        """-1, 0 or 1, by semver precedence (build metadata is not kept, so never counts)."""
        a, b = (self.major, self.minor, self.patch), (other.major, other.minor, other.patch)
        if a != b:
            return -1 if a < b else 1
        if self.prerelease == other.prerelease:
            return 0
        if not self.prerelease:  # a release sorts after its prereleases
            return 1
        if not other.prerelease:
            return -1
        return _compare_prerelease(self.prerelease, other.prerelease)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}" + (f"-{self.prerelease}" if self.prerelease else "")


def parse_version(text: str) -> Version | None:
    """The version a tag names ("v1.2.3", "1.2", "2.0.0-rc1"), or None when it names none."""
    m = _VERSION_RE.fullmatch(text)
    if m is None:
        return None
    nums = [_u64(g) if g is not None else 0 for g in m.group(1, 2, 3)]
    pre = m.group(4) or ""
    if _bad_prerelease(pre):
        return None
    major, minor, patch = nums
    if major is None or minor is None or patch is None:
        return None
    return Version(major, minor, patch, pre)


# ---------------------------------------------------------------- terms


@dataclass(frozen=True)
class _Term:
    op: str  # =, !=, >, <, >=, <=, ~, ^
    version: Version  # missing and wildcard parts are 0
    # The first part that was missing or a wildcard: "major" ("*"), "minor" ("1", "1.x"),
    # "patch" ("1.2", "1.2.x"), or None when all three were given.
    wild: str | None

    def check(self, v: Version) -> bool:
        c, wild = self.version, self.wild
        op = self.op
        if op == "=":
            if wild is None:
                return v.compare(c) == 0
            op = "~"
        if op == "~":
            if v.compare(c) < 0:
                return False
            if (c.major, c.minor, c.patch) == (0, 0, 0) and wild in (None, "major"):
                return True  # ~0.0.0 and ~*: anything
            return v.major == c.major and (wild == "minor" or v.minor == c.minor)
        if op == "^":
            if v.compare(c) < 0:
                return False
            if c.major > 0 or wild == "minor":
                return v.major == c.major
            if v.major > 0:
                return False
            if c.minor > 0 or wild == "patch":
                return v.minor == c.minor
            return v.minor == 0 and v.patch == c.patch
        if op == ">=":
            return v.compare(c) >= 0
        if op == "<":
            return v.compare(c) < 0
        if op == ">":
            if wild is None or wild == "major" and v.major == c.major:
                return v.compare(c) > 0
            if v.major != c.major:
                return v.major > c.major
            return wild == "patch" and v.minor > c.minor  # >1.x, >1: a higher major only
        if op == "<=":
            if wild is None:
                return v.compare(c) <= 0
            if v.major != c.major:
                return v.major < c.major
            return wild == "minor" or v.minor <= c.minor
        # !=
        if wild is None:
            return v.compare(c) != 0
        if v.major != c.major:
            return True
        if wild == "minor":
            return False
        if v.minor != c.minor:
            return True
        if wild == "patch":
            return v.prerelease != c.prerelease
        return v.patch != c.patch or v.compare(c) != 0  # "!=*": everything but 0.0.0

    def __str__(self) -> str:
        return f"{self.op}{self.version}" + (f" ({self.wild} wildcard)" if self.wild else "")


def _term_version(m: re.Match[str]) -> tuple[Version, str | None]:
    parts = m.group(1, 2, 3)
    pre = m.group(4) or ""
    shown = _shorten(m.group(0))
    if _bad_prerelease(pre):
        raise SemverError(f"{shown!r}: a numeric prerelease identifier takes no leading zero")
    nums: list[int] = []
    wild: str | None = None
    for name, part in zip(("major", "minor", "patch"), parts):
        if part is None or part in _WILDCARDS:
            wild = name
            break
        if not part.isdigit():
            raise SemverError(f"{shown!r}: {_shorten(part)!r} is neither a number nor a wildcard (x, X, *)")
        n = _u64(part)
        if n is None:
            raise SemverError(f"{shown!r}: {_shorten(part)} is too large for a version number")
        nums.append(n)
    nums += [0] * (3 - len(nums))  # whatever follows a wildcard is ignored, as in Masterminds
    return Version(nums[0], nums[1], nums[2], pre), wild


def _shorten(text: str, limit: int = 40) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in _WS:
        i += 1
    return i


def _parse_group(seg: str, whole: str) -> tuple[_Term, ...]:
    """One ||-alternative: terms separated by whitespace or a comma, all of which must hold."""
    terms: list[_Term] = []
    i = _skip_ws(seg, 0)
    if i == len(seg):
        raise SemverError("empty alternative" if "||" in whole else "empty constraint")
    while True:
        op_m = _OP_RE.match(seg, i)
        op = op_m.group(0) if op_m else ""
        j = _skip_ws(seg, op_m.end()) if op_m else i
        vm = _TERM_VERSION_RE.match(seg, j)
        if vm is None:
            rest = _shorten(seg[j:])
            where = f" after {op!r}" if op else ""
            raise SemverError(f"expected a version{where}, found {rest!r}" if rest else f"expected a version{where}")
        version, wild = _term_version(vm)
        k = vm.end()
        hy = _HYPHEN_RE.match(seg, k)
        if hy is not None:
            # A hyphen range "A - B": >= A, <= B.
            if op:
                raise SemverError(f"a hyphen range takes no operator: {_shorten(seg[i:])!r}")
            um = _TERM_VERSION_RE.match(seg, hy.end())
            if um is None:
                raise SemverError(f"expected a version after ' - ' in {_shorten(seg[i:])!r}")
            upper, upper_wild = _term_version(um)
            terms.append(_Term(">=", version, wild))
            terms.append(_Term("<=", upper, upper_wild))
            k = um.end()
            ranged = True
        else:
            terms.append(_Term(_CANONICAL_OP.get(op, op), version, wild))
            ranged = False
        # A separator (whitespace, or a comma with optional whitespace), or the end.
        n = _skip_ws(seg, k)
        if n == len(seg):
            return tuple(terms)
        if seg[n] == ",":
            n = _skip_ws(seg, n + 1)
            if n == len(seg):
                raise SemverError("a comma must be followed by another term")
        elif n == k and not ranged:  # a hyphen range needs no separator after it (Masterminds)
            raise SemverError(f"unexpected {_shorten(seg[k:])!r} after {_shorten(seg[i:k])!r}")
        i = n


# ---------------------------------------------------------------- constraints


@dataclass(frozen=True)
class Constraint:
    """A parsed constraint: alternatives (||) of groups of terms that must all hold."""

    text: str
    groups: tuple[tuple[_Term, ...], ...]

    def check(self, v: Version) -> bool:
        for group in self.groups:
            if v.prerelease and not any(t.version.prerelease for t in group):
                continue  # prereleases only where the group names one
            if all(t.check(v) for t in group):
                return True
        return False

    def matches_tag(self, tag: str) -> bool:
        """Whether a tag is a version (parse_version) that satisfies the constraint."""
        v = parse_version(tag)
        return v is not None and self.check(v)


def parse_constraint(text: str) -> Constraint:
    """Parse a constraint such as ">= 1.2.0, < 2 || ~3.1"; SemverError says what is wrong."""
    if not isinstance(text, str):
        raise SemverError("expected a string")
    groups = tuple(_parse_group(seg, text) for seg in text.split("||"))
    return Constraint(text, groups)
