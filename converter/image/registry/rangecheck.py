"""Does a registry answer HTTP Range requests correctly? (partial pulls of zstd:chunked need it)"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from converter.image.model import RangeCheck, short
from converter.image.registry.blobs import read_body
from converter.image.registry.core import ClientCore

if TYPE_CHECKING:
    pass


class RangeCheckMixin(ClientCore):
    def check_range_requests(
        self, repo: str, digest: str, size: int, read_local: Callable[[int, int], bytes] | None = None
    ) -> RangeCheck:
        """Does the registry answer HTTP Range requests correctly for this blob?

        Partial pulls of zstd:chunked layers (containers/storage) ask for many
        ranges at once; a registry that ignores them makes clients fall back
        to a full download. Checks one single range and one multi-range
        request; with `read_local` the returned bytes are compared too.
        """
        what = f"{self.host}/{repo}@{short(digest)}"
        if size < 2:
            return RangeCheck(True, f"{what}: blob too small to check")
        a = size // 3
        b = min(size - 1, a + 4095)
        problems: list[str] = []
        resp = self.get_blob_ranges(repo, digest, f"{a}-{b}", what)
        with resp:
            if resp.status_code == 200:
                return RangeCheck(
                    False,
                    f"{what}: registry ignores HTTP Range requests (answered 200 with the whole blob); partial pulls will download whole layers",
                )
            if resp.status_code != 206:
                self._raise_for_blob(resp, repo, digest)
            data = read_body(resp, b - a + 2, what)
            cr = resp.headers.get("Content-Range", "")
            if cr.replace(" ", "") not in (f"bytes{a}-{b}/{size}", f"bytes={a}-{b}/{size}"):
                problems.append(f"Content-Range {cr[:80]!r} for bytes {a}-{b}")
            if len(data) != b - a + 1:
                problems.append(f"got {len(data)} bytes for a {b - a + 1}-byte range")
            elif read_local is not None and data != read_local(a, b - a + 1):
                problems.append(f"bytes {a}-{b} differ from the blob's content")
        # multi-range, as containers/storage sends for chunked pulls
        c = max(0, size - 100)
        resp = self.get_blob_ranges(repo, digest, f"0-9,{c}-{size - 1}", what)
        with resp:
            body = read_body(resp, 1 << 20, what)
            ctype = resp.headers.get("Content-Type", "")
            if resp.status_code == 200:
                problems.append("multi-range requests answered with the whole blob")
            elif resp.status_code != 206:
                problems.append(f"multi-range request answered HTTP {resp.status_code}")
            elif read_local is not None:
                want = [read_local(0, min(10, size)), read_local(c, size - c)]
                if "multipart/byteranges" in ctype:
                    if not all(w in body for w in want):
                        problems.append("multi-range response does not hold the requested bytes")
                elif body not in (read_local(0, size - c + 10 if c <= 10 else 0),):
                    # a server may coalesce overlapping ranges into one part
                    if not (c <= 10 and body == read_local(0, size)):
                        problems.append(f"multi-range response is not multipart ({ctype[:80] or 'no Content-Type'})")
        if problems:
            return RangeCheck(
                False,
                f"{what}: registry answers HTTP Range requests incorrectly: {'; '.join(problems)}; partial pulls will fall back to full downloads",
            )
        return RangeCheck(True, f"{what}: HTTP Range requests answered correctly")
