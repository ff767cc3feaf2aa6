"""Answers to a GET with many byte ranges (`Range: bytes=a-b,c-d`), mapped back onto what was asked.

A server may answer such a request in three ways (RFC 9110 §14, §15.3.7):

* 206 `multipart/byteranges`: one part per range, each with its own
  Content-Range. Parts may come in another order, and a server may merge
  ranges that overlap or lie close together into one part;
* 206 with one Content-Range: one range asked, or every range merged;
* 200 with the whole blob: no range support (or, for Go's http.ServeContent,
  ranges that add up to more than the blob).

Everything read is bounded by what was asked: the bytes of the parts by the
asked lengths plus a little slack for merged gaps, the part headers and the
preamble by fixed limits, the number of parts by the number of ranges. A part
outside the blob, outside the span of the asked ranges, or in none of them is
refused; so is an answer that leaves an asked byte uncovered. Every refusal is
one RegistryError naming `what` (the blob's URL).

The parser only needs a `read(n)` that returns up to n bytes (b"" at the
end); the HTTP layer supplies it, with its deadline and error mapping.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from typing import Callable, Sequence

from converter.errors import RegistryError
from converter.image.registry.errors import printable

Read = Callable[[int], bytes]

#: Bytes of parts beyond the asked ones: a server may merge ranges whose gap is smaller than
#: a part's headers (RFC 9110 §14.6). A merged gap bigger than this is not worth taking.
SLACK_PER_RANGE = 1024
SLACK = 64 * 1024
#: Preamble before the first boundary line, and the header block of one part.
MAX_PREAMBLE = 4096
MAX_PART_HEADERS = 4096
MAX_HEADER_LINES = 32
#: RFC 2046 limits a boundary to 70 characters; some servers are longer, none this long.
MAX_BOUNDARY = 200
READ_BLOCK = 1 << 20

_CONTENT_RANGE = re.compile(r"bytes[ =]?\s*(\d{1,19})-(\d{1,19})/(\d{1,19}|\*)\s*", re.ASCII)
# bchars of RFC 2046 (CloudFront sends ":" unquoted, which strict MIME parsers refuse)
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{1,200}", re.ASCII)  # 200: MAX_BOUNDARY


def boundary_of(content_type: str) -> str | None:
    """The boundary parameter of a multipart/byteranges Content-Type, None if it has none usable."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/byteranges":
        return None
    for param in params.split(";"):
        name, eq, value = param.partition("=")
        if not eq or name.strip().lower() != "boundary":
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if _BOUNDARY.fullmatch(value) and not value.endswith(" "):
            return value
        return None
    return None


def is_multipart(content_type: str) -> bool:
    return content_type.partition(";")[0].strip().lower().startswith("multipart/")


def parse_content_range(value: str) -> tuple[int, int, int | None] | None:
    """(first, last, total) of "bytes first-last/total" (total None for "*"), None if malformed."""
    m = _CONTENT_RANGE.fullmatch(value.strip())
    if not m:
        return None
    first, last = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == "*" else int(m.group(3))
    if last < first or (total is not None and last >= total):
        return None
    return first, last, total


class Asked:
    """The ranges of one request, and the checks every part of its answer must pass."""

    def __init__(self, ranges: Sequence[tuple[int, int]], size: int | None, what: str) -> None:
        if not ranges or any(n <= 0 or off < 0 for off, n in ranges):
            raise ValueError("ranges must be non-empty (offset >= 0, length > 0)")
        self.ranges = list(ranges)
        self.size = size
        self.what = what
        self.lo = min(off for off, _ in ranges)
        self.hi = max(off + n for off, n in ranges)
        self.budget = sum(n for _, n in ranges) + SLACK + SLACK_PER_RANGE * len(ranges)
        self.max_parts = 2 * len(ranges) + 8
        # the asked ranges merged, sorted: a part must meet one of them
        merged: list[list[int]] = []
        for off, n in sorted(self.ranges):
            if merged and off <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], off + n)
            else:
                merged.append([off, off + n])
        self.union = [(a, b) for a, b in merged]
        self._starts = [a for a, _ in self.union]

    def fail(self, why: str) -> RegistryError:
        return RegistryError(f"{self.what}: unusable answer to a {len(self.ranges)}-range request: {why}")

    def check_part(self, content_range: str, label: str) -> tuple[int, int]:
        """(start, length) of a part from its Content-Range; refused unless it lies where it should."""
        parsed = parse_content_range(content_range)
        if parsed is None:
            raise self.fail(f"{label} has Content-Range {printable(content_range, 80)!r}")
        first, last, total = parsed
        if self.size is not None and total is not None and total != self.size:
            raise self.fail(f"{label} is of a {total}-byte blob, not {self.size} bytes")
        start, end = first, last + 1
        if start < self.lo or end > self.hi:
            raise self.fail(f"{label} holds bytes {first}-{last}, outside the ranges asked")
        i = bisect_left(self._starts, end)  # merged ranges starting before the part's end
        if i == 0 or self.union[i - 1][1] <= start:
            raise self.fail(f"{label} holds bytes {first}-{last}, in none of the ranges asked")
        return start, end - start

    def spend(self, n: int) -> None:
        self.budget -= n
        if self.budget < 0:
            raise self.fail("its parts hold more bytes than were asked")


class _Body:
    """A buffered reader over `read` for the line-oriented bits of a multipart body."""

    def __init__(self, read: Read, asked: Asked) -> None:
        self._read = read
        self._buf = b""
        self._asked = asked
        self.ended = False

    def _fill(self, want: int) -> bool:
        if self.ended:
            return False
        data = self._read(max(want, 8192) if want < READ_BLOCK else want)
        if not data:
            self.ended = True
            return False
        self._buf += data
        return True

    def line(self, limit: int, where: str) -> bytes:
        """One line without its CRLF (or LF); at most `limit` bytes."""
        while True:
            i = self._buf.find(b"\n", 0, limit + 2)
            if i >= 0:
                line, self._buf = self._buf[:i], self._buf[i + 1 :]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self._buf) > limit + 1:
                raise self._asked.fail(f"{where}: a line longer than {limit} bytes")
            if not self._fill(limit + 2 - len(self._buf)):
                raise self._asked.fail(f"{where}: the answer ended early")

    def exact(self, n: int, where: str) -> bytes:
        chunks = []
        if self._buf:
            take = self._buf[:n]
            self._buf = self._buf[n:]
            chunks.append(take)
            n -= len(take)
        while n:
            data = self._read(min(n, READ_BLOCK))
            if not data:
                self.ended = True
                raise self._asked.fail(f"{where}: the answer ended early (truncated part)")
            chunks.append(data)
            n -= len(data)
        return b"".join(chunks)


def read_multipart(read: Read, boundary: str, asked: Asked) -> list[tuple[int, bytes]]:
    """The parts of a multipart/byteranges body: [(start, bytes)], in the order they came."""
    body = _Body(read, asked)
    delim = b"--" + boundary.encode("ascii")
    # preamble: anything up to the first boundary line (nginx sends an empty line first)
    seen = 0
    while True:
        ln = body.line(MAX_PREAMBLE, "before the first part")
        seen += len(ln) + 2
        if ln.rstrip(b" \t") == delim:
            break
        if seen > MAX_PREAMBLE:
            raise asked.fail(f"no boundary line within {MAX_PREAMBLE} bytes (boundary {printable(boundary, 80)!r})")
    parts: list[tuple[int, bytes]] = []
    while True:
        label = f"part {len(parts) + 1}"
        if len(parts) >= asked.max_parts:
            raise asked.fail(f"more than {asked.max_parts} parts")
        content_range = None
        used = lines = 0
        while True:
            ln = body.line(MAX_PART_HEADERS, label)
            used += len(ln) + 2
            lines += 1
            if used > MAX_PART_HEADERS or lines > MAX_HEADER_LINES:
                raise asked.fail(f"{label}: headers over {MAX_PART_HEADERS} bytes or {MAX_HEADER_LINES} lines")
            if not ln:
                break
            name, colon, value = ln.partition(b":")
            if not colon:
                raise asked.fail(f"{label}: malformed header line {printable(ln.decode('latin-1'), 80)!r}")
            if name.strip().lower() == b"content-range":
                if content_range is not None:
                    raise asked.fail(f"{label}: two Content-Range headers")
                content_range = value.decode("latin-1").strip()
        if content_range is None:
            raise asked.fail(f"{label} has no Content-Range")
        start, n = asked.check_part(content_range, label)
        asked.spend(n)
        parts.append((start, body.exact(n, label)))
        # the part's bytes end with CRLF, then the next delimiter: "--boundary" or "--boundary--"
        ln = body.line(MAX_PREAMBLE, f"after {label}")
        if ln:
            raise asked.fail(
                f"{label}: {n} bytes are not followed by a boundary (the part is longer than its Content-Range)"
            )
        ln = body.line(MAX_BOUNDARY + 16, f"after {label}").rstrip(b" \t")
        if ln == delim + b"--":
            return parts
        if ln != delim:
            raise asked.fail(f"{label} is not followed by the boundary")


def read_single(read: Read, content_range: str, asked: Asked) -> list[tuple[int, bytes]]:
    """The one part of a 206 answer that is not multipart."""
    start, n = asked.check_part(content_range, "the answer")
    asked.spend(n)
    data = _Body(read, asked).exact(n, "the answer")
    return [(start, data)]


def read_through(read: Read, asked: Asked) -> list[tuple[int, bytes]]:
    """The asked bytes of a whole blob (a 200 answer), read in order and never held whole.

    Stops after the last asked byte: the rest of the blob is not read.
    """
    pos = 0
    parts: list[tuple[int, bytes]] = []
    for a, b in asked.union:
        while pos < a:
            got = read(min(a - pos, READ_BLOCK))
            if not got:
                raise asked.fail(f"the whole blob came back, {pos} bytes long, shorter than the ranges asked")
            pos += len(got)
        chunks = []
        while pos < b:
            got = read(min(b - pos, READ_BLOCK))
            if not got:
                raise asked.fail(f"the whole blob came back, {pos} bytes long, shorter than the ranges asked")
            chunks.append(got)
            pos += len(got)
        parts.append((a, b"".join(chunks)))
    return parts


def assemble(asked: Asked, parts: list[tuple[int, bytes]], missing_ok: bool = False) -> list[bytes | None]:
    """The bytes of every asked range, in the order asked, from parts in any order that may overlap.

    A range no part covers whole is an error, or None with `missing_ok`.
    """
    by_start = sorted(parts, key=lambda p: p[0])
    order = sorted(range(len(asked.ranges)), key=lambda i: asked.ranges[i][0])
    out: list[bytes | None] = [None] * len(asked.ranges)
    active: list[tuple[int, bytes]] = []
    j = 0
    for i in order:
        off, n = asked.ranges[i]
        end = off + n
        while j < len(by_start) and by_start[j][0] < end:
            active.append(by_start[j])
            j += 1
        # asked offsets only grow: a part ending before this range serves no later one
        active = [p for p in active if p[0] + len(p[1]) > off]
        whole = next((p for p in active if p[0] <= off and p[0] + len(p[1]) >= end), None)
        if whole is not None:
            out[i] = whole[1][off - whole[0] : end - whole[0]]
            continue
        buf = bytearray(n)
        covered: list[tuple[int, int]] = []
        for s, data in active:
            a, b = max(off, s), min(end, s + len(data))
            if a < b:
                buf[a - off : b - off] = data[a - s : b - s]
                covered.append((a, b))
        at = off
        for a, b in sorted(covered):
            if a > at:
                break
            at = max(at, b)
        if at < end:
            if missing_ok:
                continue
            raise asked.fail(f"bytes {at}-{end - 1} (asked as {off}-{end - 1}) are in no part")
        out[i] = bytes(buf)
    return out
