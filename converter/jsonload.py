"""The one JSON loader for everything that comes from outside (layouts, archives, registries, TOCs).

`load_json` parses with limits and turns every way a document can be hostile
or broken into one BadInputError line naming `where`:

* size: more than `max_size` bytes is refused before anything is parsed;
* nesting: deeper than `max_depth` arrays/objects is refused before parsing,
  by a scan of the brackets outside strings (regular expressions and a
  running sum in C loops, no Python code per byte and no recursion), so a deep document can never
  raise RecursionError in the parser or in code that walks the result later;
* text: the bytes must be UTF-8; `\\uD800`-style escapes that leave a lone
  surrogate are refused (such a string cannot be encoded again and would
  raise UnicodeEncodeError when it is printed or written);
* numbers: NaN/Infinity and numbers with thousands of digits are not JSON we
  accept;
* anything else the parser rejects: "not valid JSON (reason)".

Field types are checked by the code that uses the fields (model.Descriptor
and friends): this module knows nothing about what the document means.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from converter.errors import BadInputError

# Largest integer a size or offset may have (Go's int64: what consumers use).
MAX_INT64 = 2**63 - 1

# A JSON string: quote, then runs of non-special characters or escapes, quote.
# A string that is not closed runs to the end of the input (the document is
# invalid anyway): every match attempt then succeeds, so the scan stays
# linear even on input made of thousands of unclosed quotes.
_STRING_RE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
# An escape of a UTF-16 surrogate somewhere (cheap pre-check before walking the parsed tree).
_SURROGATE_ESCAPE_RE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LONE_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse_float(text: str) -> float:
    x = float(text)
    if x in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:20]} is out of range")
    return x


def nesting_depth(data: bytes) -> int:
    """Deepest nesting of arrays/objects in `data` (strings skipped); no recursion, no per-byte Python code."""
    brackets = _STRING_RE.sub(b"", data).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    # A running sum of +1/-1 over the brackets alone, in C loops (map, accumulate, max).
    return max(accumulate(map(_STEP.__getitem__, brackets)))


def _has_lone_surrogate(doc: Any) -> bool:
    """Walks the parsed document without recursion (its depth is already bounded)."""
    stack = [doc]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            if _LONE_SURROGATE_RE.search(x):
                return True
        elif isinstance(x, dict):
            for k, v in x.items():
                if _LONE_SURROGATE_RE.search(k):
                    return True
                stack.append(v)
        elif isinstance(x, list):
            stack.extend(x)
    return False


def load_json(data: bytes, where: str, *, max_size: int | None = None, max_depth: int = 64) -> Any:
    """Parse `data` as JSON within limits; BadInputError (one line naming `where`) otherwise."""
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if max_size is not None and len(data) > max_size:
        raise BadInputError(f"{where}: JSON document is larger than {max_size} bytes")
    depth = nesting_depth(data)
    if depth > max_depth:
        raise BadInputError(f"{where}: JSON nests deeper than {max_depth} levels")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInputError(f"{where}: not valid JSON (not UTF-8 at byte {e.start})") from None
    try:
        doc = json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float)
    except RecursionError:  # cannot happen after the depth check; kept so no input can escape as a traceback
        raise BadInputError(f"{where}: JSON nests too deeply") from None
    except ValueError as e:  # JSONDecodeError, and int() of a number with too many digits
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "integer string conversion" in msg:
            msg = "a number has too many digits"
        raise BadInputError(f"{where}: not valid JSON ({msg})") from None
    if _SURROGATE_ESCAPE_RE.search(data) and _has_lone_surrogate(doc):
        raise BadInputError(f"{where}: JSON has a string with a lone UTF-16 surrogate (\\uD800-\\uDFFF)")
    return doc


def load_json_object(data: bytes, where: str, *, max_size: int | None = None, max_depth: int = 64) -> dict[str, Any]:
    """`load_json` for documents that must be a JSON object."""
    doc = load_json(data, where, max_size=max_size, max_depth=max_depth)
    if not isinstance(doc, dict):
        raise BadInputError(f"{where}: JSON document is not an object")
    return doc
