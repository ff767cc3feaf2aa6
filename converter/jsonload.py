"""One JSON loader with limits, for everything zconv reads from outside.

Size, nesting depth and text encoding are checked before or while parsing, so
hostile input ends in one BadInputError line, never RecursionError,
UnicodeDecodeError or a memory blow-up.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from converter.errors import BadInputError


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(rb"[\[\]{}]")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def _depth_ok(data: bytes, max_depth: int) -> bool:
    """Nesting depth of `data` at most `max_depth` (brackets inside strings ignored)."""
    brackets = b"".join(_BRACKETS.findall(_STRING.sub(b"", data)))
    return max(accumulate(_STEP[b] for b in brackets), default=0) <= max_depth


def load_json(data: bytes, where: str, *, max_size: int | None = None, max_depth: int = 64) -> Any:
    """Parse `data` as JSON; BadInputError naming `where` when it is not acceptable."""
    if max_size is not None and len(data) > max_size:
        raise BadInputError(f"{where}: JSON document is {len(data)} bytes, over the {max_size}-byte limit")
    if (data.count(b"[") + data.count(b"{")) > max_depth and not _depth_ok(data, max_depth):
        raise BadInputError(f"{where}: JSON nested deeper than {max_depth} levels")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInputError(f"{where}: not UTF-8 JSON ({e.reason} at byte {e.start})") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise BadInputError(f"{where}: JSON nested too deeply") from None
    except ValueError as e:
        raise BadInputError(f"{where}: invalid JSON: {e}") from None
