"""converter/semver.py: the constraints of skopeo sync's images-by-semver (Masterminds/semver v3).

The expected answers below are those of Masterminds/semver v3 (NewVersion and
Constraints.Check, what skopeo calls), checked case by case against the Go
library when the table was written; the few constraints accepted here that
Masterminds rejects are in their own table, LENIENT.
"""

from __future__ import annotations

import itertools
import random

import pytest

from converter.semver import SemverError, Version, parse_constraint, parse_version

# ---------------------------------------------------------------- versions (tags)

VERSIONS = [
    ("1.2.3", (1, 2, 3, "")),
    ("v1.2.3", (1, 2, 3, "")),
    ("1.2", (1, 2, 0, "")),  # partial versions are coerced, as NewVersion does
    ("1", (1, 0, 0, "")),
    ("v2", (2, 0, 0, "")),
    ("01.02.03", (1, 2, 3, "")),  # leading zeros too
    ("1.3.0-rc1", (1, 3, 0, "rc1")),
    ("1.0.0-alpha.1", (1, 0, 0, "alpha.1")),
    ("1.0.0-0", (1, 0, 0, "0")),
    ("1.0.0--x", (1, 0, 0, "-x")),
    ("18446744073709551615.0.0", (2**64 - 1, 0, 0, "")),
]

NOT_VERSIONS = [
    "latest",
    "",
    "v",
    "V1.2.3",  # only a lower case v prefix
    "1.2.3.4",
    "1.",
    "1.2.3-",
    "1.2.3_x",
    "1.2.3-rc.01",  # numeric prerelease identifiers take no leading zero
    "18446744073709551616.0.0",  # above uint64
    "1" * 5000,  # (Python's int() refuses this many digits: never reached)
    "1.2.3\n",  # no trailing newline (Python's $ would allow one)
    "\uff11.2.3",  # no digits other than ASCII
    "sha256-abc",
]


@pytest.mark.parametrize(("text", "expected"), VERSIONS)
def test_parse_version(text, expected):
    v = parse_version(text)
    assert v is not None
    assert (v.major, v.minor, v.patch, v.prerelease) == expected


@pytest.mark.parametrize("text", NOT_VERSIONS)
def test_not_a_version(text):
    assert parse_version(text) is None
    assert not parse_constraint("*").matches_tag(text)
    assert not parse_constraint(">=0.0.0-0").matches_tag(text)


def test_precedence_is_semver_order():
    # The order of semver.org section 11, then releases.
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.1.0",
        "1.10.0",
        "2.0.0",
    ]
    vs = [parse_version(t) for t in ordered]
    assert all(isinstance(v, Version) for v in vs)
    for (i, a), (j, b) in itertools.product(enumerate(vs), repeat=2):
        assert a.compare(b) == (i > j) - (i < j), (ordered[i], ordered[j])


# ---------------------------------------------------------------- constraints

CHECKS = [
    # plain operators
    ("=1.2.3", "1.2.3", True),
    ("1.2.3", "1.2.4", False),
    ("!=1.2.3", "1.2.4", True),
    ("!=1.2.3", "1.2.3", False),
    (">1.2.3", "1.2.4", True),
    (">1.2.3", "1.2.3", False),
    ("<1.2.3", "1.2.2", True),
    ("<1.2.3", "1.2.3", False),
    (">=1.2.3", "1.2.3", True),
    (">=1.2.3", "1.2.2", False),
    ("<=1.2.3", "1.2.3", True),
    ("<=1.2.3", "1.2.4", False),
    ("=>1.2.3", "1.2.3", True),
    ("=<1.2.3", "1.2.4", False),
    ("> 1.2.3", "2.0.0", True),  # space after the operator
    # partial versions and wildcards
    ("1.2", "1.2.9", True),
    ("1.2", "1.3.0", False),
    ("1", "1.9.9", True),
    ("1", "2.0.0", False),
    ("1.x", "1.5.0", True),
    ("1.2.X", "1.2.7", True),
    ("1.2.*", "1.3.0", False),
    ("*", "9.9.9", True),
    ("x", "0.0.1", True),
    (">1.2", "1.2.9", False),  # greater than every 1.2.z
    (">1.2", "1.3.0", True),
    (">1", "1.9.0", False),
    (">1", "2.0.0", True),
    ("<=1.2", "1.2.9", True),
    ("<=1.2", "1.3.0", False),
    ("<=1.x", "1.9.9", True),
    ("<=1.x", "2.0.0", False),
    (">=1.2", "1.2.0", True),
    ("<1.2", "1.1.9", True),
    ("<1.2", "1.2.0", False),
    ("!=1.2", "1.2.5", False),
    ("!=1.2", "1.3.0", True),
    ("!=1.x", "1.9.0", False),
    ("!=1.x", "2.0.0", True),
    ("1.x.3", "1.5.0", True),  # a wildcard ends the version
    # tilde
    ("~1.2.3", "1.2.9", True),
    ("~1.2.3", "1.3.0", False),
    ("~1.2.3", "1.2.2", False),
    ("~1", "1.9.0", True),
    ("~1", "2.0.0", False),
    ("~>1.2", "1.2.5", True),
    ("~>1.2", "1.3.0", False),
    ("~0.0.0", "5.0.0", True),
    # caret
    ("^1.2.3", "1.9.9", True),
    ("^1.2.3", "2.0.0", False),
    ("^1.2.3", "1.2.2", False),
    ("^0.2.3", "0.2.9", True),
    ("^0.2.3", "0.3.0", False),
    ("^0.0.3", "0.0.3", True),
    ("^0.0.3", "0.0.4", False),
    ("^0", "0.9.0", True),
    ("^0", "1.0.0", False),
    ("^0.0", "0.0.7", True),
    ("^0.0", "0.1.0", False),
    # Masterminds' odd but real corner cases
    ("^*", "0.0.0", True),  # ^* is 0.0.0 alone
    ("^*", "0.0.5", False),
    ("^*", "1.0.0", False),
    ("<=*", "0.0.9", True),
    ("<=*", "0.1.0", False),
    ("!=*", "0.0.0", False),
    ("!=*", "0.0.1", True),
    # hyphen ranges
    ("1.2 - 1.4.5", "1.2.0", True),
    ("1.2 - 1.4.5", "1.4.5", True),
    ("1.2 - 1.4.5", "1.4.6", False),
    ("1.2 - 1.4.5", "1.1.9", False),
    ("1.2 - 1.4", "1.4.9", True),  # <= 1.4 takes every 1.4.z
    ("1.2 - 1.4", "1.5.0", False),
    ("1 - 2>=1.5", "1.6.0", True),  # no separator needed after a range
    (">=1.0, 2 - 3", "2.5.0", True),
    # AND, OR
    (">= 1.2.0, < 2", "1.9.9", True),
    (">= 1.2.0, < 2", "2.0.0", False),
    (">=1.2.0 <2", "1.1.0", False),
    (" >=1.2.0 ,\t<2 ", "1.5.0", True),
    ("<1.0.0 || >=3", "0.5.0", True),
    ("<1.0.0 || >=3", "2.0.0", False),
    ("<1.0.0||>=3", "3.1.0", True),
    ("1.2 - 1.4 || ^3", "3.9.0", True),
    ("1.2 - 1.4 || ^3", "2.0.0", False),
    # prefix, build metadata, partial and coerced tags
    ("v1.2.3", "1.2.3", True),
    (">= v1.2", "v1.3.0", True),
    ("1.2.3+build.7", "1.2.3", True),
    (">=1.2.3", "1.3", True),
    (">=1.2.3", "01.3.0", True),
    # prereleases: only where the (AND) group names one ...
    (">=1.2.0", "1.3.0-rc1", False),
    ("*", "1.0.0-rc1", False),
    ("<1.3.0", "1.3.0-rc1", False),
    ("1.3.0-rc1", "1.3.0-rc1", True),
    (">=1.3.0-rc1", "1.3.0-rc2", True),
    (">=1.3.0-rc2", "1.3.0-rc1", False),
    ("!=1.2.3-beta", "1.2.3-alpha", True),
    ("<1.0.0-0 || >=1.2.0", "1.1.0-rc1", False),
    (">=1.2.0 || >=1.0.0-0", "1.3.0-rc1", True),
    ("1.2.x-0", "1.2.5-rc1", True),
    # ... and then of any major.minor.patch (npm would say False to these two)
    (">=1.2.0-0", "1.3.0-rc1", True),
    ("~1.2.3-beta", "1.2.4-alpha", True),
    (">=1.0.0-0, <2", "1.5.0-beta", True),
    (">=1.0.0-0, <2", "2.0.0-beta", True),  # 2.0.0-beta < 2.0.0
    # prerelease precedence
    (">1.0.0-alpha.1", "1.0.0-alpha.beta", True),
    (">1.0.0-beta.2", "1.0.0-beta.11", True),
    ("<1.0.0-rc.1", "1.0.0-beta", True),
    ("<1.0.0-rc.1", "1.0.0-rc.1.1", False),
]


@pytest.mark.parametrize(("constraint", "tag", "expected"), CHECKS)
def test_check(constraint, tag, expected):
    assert parse_constraint(constraint).matches_tag(tag) is expected


INVALID = [
    ("", "empty constraint"),
    ("   ", "empty constraint"),
    (">=", "expected a version after '>='"),
    ("latest", "expected a version, found 'latest'"),
    ("1.2 -", "expected a version, found '-'"),
    ("1 -2", "expected a version, found '-2'"),
    (">= 1.2 - 2", "a hyphen range takes no operator"),
    ("1.2.3.4", "unexpected '.4'"),
    (">=1<2", "unexpected '<2'"),
    ("1,", "a comma must be followed by another term"),
    (",1", "expected a version, found ',1'"),
    ("1,,2", "expected a version, found ',2'"),
    ("1 ||", "empty alternative"),
    ("|| 1", "empty alternative"),
    ("1 | 2", "neither a number nor a wildcard"),
    (">=1.2.3-01", "no leading zero"),
    ("==1", "expected a version after '=', found '=1'"),
    ("> = 1", "expected a version after '>', found '= 1'"),
    ("V1.2", "expected a version, found 'V1.2'"),
    ("1.2-", "unexpected '-'"),
    ("1x", "neither a number nor a wildcard"),
    ("xx", "neither a number nor a wildcard"),
    ("18446744073709551616", "too large"),
    (">=" + "9" * 5000, "too large"),
    ("1.0.0 " + "x" * 3000, "neither a number nor a wildcard"),
    ("1.2 - 1.3 - 1.4", "expected a version, found '- 1.4'"),
]


@pytest.mark.parametrize(("constraint", "message"), INVALID)
def test_invalid_constraint(constraint, message):
    with pytest.raises(SemverError) as e:
        parse_constraint(constraint)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


# Masterminds rejects these (its hyphen-range rewriting eats the separator before the
# range, or runs into the || next to it); here they mean what they say.
LENIENT = [
    (">=1.0 2 - 3", "2.5.0", True),
    (">=1.0 2 - 3", "0.5.0", False),
    ("1 - 2||3 - 4", "3.5.0", True),
    ("1 - 2||3 - 4", "2.5.0", True),  # <= 2 takes every 2.y.z
    ("1 - 2||3 - 4", "5.0.0", False),
    ("1.0 - 1.5||3 - 4", "2.0.0", False),
]


@pytest.mark.parametrize(("constraint", "tag", "expected"), LENIENT)
def test_lenient_hyphen_ranges(constraint, tag, expected):
    assert parse_constraint(constraint).matches_tag(tag) is expected


def test_skopeo_example_tags():
    """The tags of the task: v-prefixed, a prerelease, a non-version."""
    tags = ["v1.0.0", "v1.2.3", "1.3.0-rc1", "1.4", "2.0.0", "latest", "v2.1.0-beta"]
    assert [t for t in tags if parse_constraint(">= 1.2.0, < 2").matches_tag(t)] == ["v1.2.3", "1.4"]
    assert [t for t in tags if parse_constraint(">= 1.2.0-0, < 2").matches_tag(t)] == ["v1.2.3", "1.3.0-rc1", "1.4"]
    assert [t for t in tags if parse_constraint("^1 || >=2.1.0-0").matches_tag(t)] == [
        "v1.0.0",
        "v1.2.3",
        "1.4",
        "v2.1.0-beta",
    ]


def test_garbage_is_a_semver_error_or_a_constraint():
    """Random strings over the constraint alphabet: a SemverError or a Constraint, nothing else."""
    rng = random.Random(7)
    alphabet = "0123456789.xX*-+v ,|<>=!~^a\t"
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 30)))
        try:
            c = parse_constraint(text)
        except SemverError as e:
            assert str(e) and "\n" not in str(e), text
            continue
        for tag in ("1.2.3", "0.0.0", "1.3.0-rc1", "latest"):
            assert isinstance(c.matches_tag(tag), bool)
