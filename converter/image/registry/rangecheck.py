"""Does a registry answer HTTP Range requests correctly? (partial pulls of zstd:chunked need it)"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from converter.errors import RegistryError
from converter.image.model import RangeCheck, short
from converter.image.registry import multipart
from converter.image.registry.blobs import read_body
from converter.image.registry.core import ClientCore
from converter.image.registry.errors import printable

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
        # multi-range, as containers/storage sends for chunked pulls: it takes the parts of a
        # multipart/byteranges answer one per range, in the order asked, without reading their
        # Content-Range, so merged or reordered parts break its pulls too
        if size < 200:
            ranges = [(0, 1), (size - 1, 1)]
        else:
            ranges = [(0, 10), (size // 2, 50), (size - 100, 100)]
        asked = multipart.Asked(ranges, size, what)
        resp = self.get_blob_ranges(repo, digest, ",".join(f"{o}-{o + n - 1}" for o, n in ranges), what)
        with resp:
            ctype = resp.headers.get("Content-Type", "")
            boundary = multipart.boundary_of(ctype)
            if resp.status_code == 200:
                problems.append("multi-range requests answered with the whole blob")
            elif resp.status_code != 206:
                problems.append(f"multi-range request answered HTTP {resp.status_code}")
            elif not multipart.is_multipart(ctype):
                problems.append(
                    f"multi-range request answered with one range ({printable(ctype, 80) or 'no Content-Type'}), not multipart/byteranges"
                )
            elif boundary is None:
                problems.append(f"multi-range response without a usable boundary ({printable(ctype, 120)})")
            else:
                try:
                    parts = multipart.read_multipart(lambda n: read_body(resp, n, what), boundary, asked)
                except RegistryError as e:
                    problems.append(str(e).removeprefix(f"{what}: "))
                else:
                    if [(start, len(data)) for start, data in parts] != ranges:
                        problems.append("multi-range response parts are not the ranges asked, one each, in order")
                    elif read_local is not None and any(data != read_local(o, len(data)) for o, data in parts):
                        problems.append("multi-range response does not hold the requested bytes")
        if problems:
            return RangeCheck(
                False,
                f"{what}: registry answers HTTP Range requests incorrectly: {'; '.join(problems)}; partial pulls will fall back to full downloads",
            )
        return RangeCheck(True, f"{what}: HTTP Range requests answered correctly")
