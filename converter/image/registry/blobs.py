"""Blobs: HEAD, cross-repository mount, uploads (one PUT, or PATCH chunks that resume), ranged GET, the blob stream.

Local blobs are checked while they go up: the bytes read from the file are
hashed as they are sent, and a file that is not what its digest says stops
the upload before the registry could commit it.
"""

from __future__ import annotations

import functools
import io
import re
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, Sequence
from urllib.parse import urlsplit

import oras.utils
import requests
import urllib3

from converter.errors import BadInputError, RegistryError
from converter.image.model import check_digest, new_hasher, short
from converter.image.registry import multipart
from converter.image.registry.core import ClientCore
from converter.image.registry.errors import (
    Transient,
    check_status,
    conn_error_text,
    error_codes,
    error_detail,
    printable,
)
from converter.image.registry.http import FileSlice, deadline_expired, resolve_url
from converter.image.registry.upload_sessions import range_end

if TYPE_CHECKING:
    pass

READ_BLOCK = 1024 * 1024
#: Longest Range header sent in one request: nginx refuses header lines over 8 KiB by default.
MAX_RANGE_HEADER = 6000


class LocalBlobCheck:
    """Hashes a local blob as it is read for upload; raises before the last byte leaves on a mismatch."""

    def __init__(self, digest: str, size: int, open_file: Callable[[], BinaryIO], what: str) -> None:
        self.digest = digest
        self.size = size
        self._open = open_file
        self.what = what
        self._h = new_hasher(digest)
        self.pos = 0

    def _rehash_to(self, offset: int) -> None:
        self._h = new_hasher(self.digest)
        self.pos = 0
        if offset:
            with self._open() as f:
                while self.pos < offset:
                    data = f.read(min(READ_BLOCK, offset - self.pos))
                    if not data:
                        raise BadInputError(
                            f"{self.what}: local blob file is shorter than the {self.size} bytes its descriptor declares"
                        )
                    self._h.update(data)
                    self.pos += len(data)

    def feed(self, offset: int, data: bytes, wanted: int) -> None:
        if offset != self.pos:
            self._rehash_to(offset)
        if len(data) < wanted:
            raise BadInputError(
                f"{self.what}: local blob file is shorter than the {self.size} bytes its descriptor declares; upload aborted"
            )
        self._h.update(data)
        self.pos += len(data)
        if self.pos == self.size:
            self.verify()

    def verify(self) -> None:
        got = f"{self.digest.split(':')[0]}:{self._h.hexdigest()}"
        if self.pos != self.size or got != self.digest:
            raise BadInputError(
                f"{self.what}: local blob file does not match its digest (it hashes to {got}); upload aborted before the registry committed it"
            )


class _CheckedSlice(FileSlice):
    """A FileSlice whose bytes go through a LocalBlobCheck (with their absolute offset)."""

    def __init__(self, f: BinaryIO, offset: int, length: int, check: LocalBlobCheck) -> None:
        self._abs = offset
        self._blob_check = check
        super().__init__(f, offset, length)

    def read(self, n: int | None = -1) -> bytes:
        left = self._left
        at = self._abs + (self._len - left)
        data = super().read(n)
        if left > 0:
            want = left if n is None or n < 0 or n > left else n
            self._blob_check.feed(at, data, want)
        return data


class BlobsMixin(ClientCore):
    """Blob operations of RegistryClient (self is the client)."""

    def blob_size(self, repo: str, digest: str, push: bool = False) -> int | None:
        """Size of the blob if the repository has it (HEAD), else None."""
        resp = self.request(
            "HEAD",
            f"/v2/{repo}/blobs/{digest}",
            repository=repo,
            scopes=self._push(repo) if push else self._pull(repo),
            what=f"{self.host}/{repo}: checking for blob {short(digest)}",
        )
        resp.close()
        if resp.status_code == 404:
            return None
        check_status(
            resp,
            200,
            what=f"{self.host}/{repo}",
            action=f"HEAD blob {short(digest)} failed",
            auth_failed=lambda r: self._auth_failed(r, repo, f"{self.host}/{repo}"),
        )
        try:
            return int(resp.headers.get("Content-Length", "-1"))
        except ValueError:
            return -1

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> str | None:
        """Cross-repository mount. "mounted", or an upload URL to use instead (or None)."""
        path = f"/v2/{repo}/blobs/uploads/?" + f"mount={digest}&from={requests.utils.quote(from_repo, safe='/')}"
        resp = self.request(
            "POST",
            path,
            repository=repo,
            scopes=self._push(repo, from_repo),
            headers={"Content-Length": "0"},
            what=f"{self.host}/{repo}: mount {short(digest)} from {from_repo}",
        )
        resp.close()
        if resp.status_code == 201:
            return "mounted"
        if resp.status_code == 202:
            return self._location(resp, repo)
        return None

    def _location(self, resp: requests.Response, repo: str) -> str:
        """The upload session's URL; relative ones resolved against the registry, non-http(s) refused."""
        loc = resp.headers.get("Location")
        if not loc:
            raise RegistryError(f"{self.host}/{repo}: upload session without a Location header")
        url = resolve_url(self.http.base_url + "/", loc, f"{self.host}/{repo}: upload Location")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RegistryError(f"{self.host}/{repo}: unusable upload Location {loc[:200]!r} (not an http(s) URL)")
        return url

    def _start_upload(self, repo: str) -> str:
        resp = self.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            repository=repo,
            scopes=self._push(repo),
            headers={"Content-Length": "0"},
            what=f"{self.host}/{repo}: starting a blob upload",
        )
        resp.close()
        check_status(
            resp,
            202,
            what=f"{self.host}/{repo}",
            action="cannot start a blob upload",
            auth_failed=lambda r: self._auth_failed(r, repo, f"{self.host}/{repo}"),
        )
        return self._location(resp, repo)

    def _cancel_upload(self, repo: str, location: str | None) -> None:
        """Best effort: DELETE the upload session so nothing half-sent lingers."""
        if not location:
            return
        try:
            self.request(
                "DELETE",
                location,
                repository=repo,
                scopes=self._push(repo),
                retry=False,
                what=f"{self.host}/{repo}: cancelling an upload",
            ).close()
        except (Transient, RegistryError):
            pass

    def push_blob(
        self,
        repo: str,
        digest: str,
        size: int,
        open_file: Callable[[], BinaryIO],
        *,
        mount_from: Iterable[str] = (),
        known_absent: bool = False,
    ) -> str:
        """Put a blob into `repo`; returns "skipped", "mounted" or "uploaded".

        `open_file` returns a fresh, seekable stream of the blob (it is reopened
        for retries). Small blobs go up in one PUT, large ones in PATCH chunks
        that resume after failures where the registry keeps the session. The
        bytes are checked against `digest` and `size` as they are sent.
        """
        check_digest(digest)
        what = f"{self.host}/{repo}: uploading blob {short(digest)}"
        if not known_absent and self.blob_size(repo, digest, push=True) is not None:
            self.count("skipped")
            return "skipped"
        location = None
        for src in dict.fromkeys(m for m in mount_from if m != repo):
            got = self.mount_blob(repo, digest, src)
            if got == "mounted":
                self.count("mounted")
                return "mounted"
            location = got or location
        resume_at = 0
        if location is None and size > self.chunk_size:
            found = self._earlier_session(repo, digest, size)
            if found is not None:
                resume_at, location = found
        check = LocalBlobCheck(digest, size, open_file, what)
        attempt = 0
        while True:
            try:
                if location is None:
                    location = self._start_upload(repo)
                if size <= self.chunk_size:
                    self._put_monolithic(repo, location, digest, size, open_file, check)
                else:
                    self._put_chunked(repo, location, digest, size, open_file, start=resume_at, check=check)
                    resume_at = 0
                self.count("uploaded")
                return "uploaded"
            except BadInputError:
                self.uploads.forget(repo, digest)
                self._cancel_upload(repo, location)
                raise
            except Transient as e:
                self._backoff(attempt, e, what)
                attempt += 1
                # The PUT may have landed and only its answer got lost.
                if self.blob_size(repo, digest, push=True) is not None:
                    self.uploads.forget(repo, digest)
                    self.count("uploaded")
                    return "uploaded"
                location = None
                resume_at = 0

    def _earlier_session(self, repo: str, digest: str, size: int) -> tuple[int, str] | None:
        """(offset, location) of an upload an earlier run left in the registry, if it is still usable."""
        loc = self.uploads.location(repo, digest)
        if loc is None:
            return None
        if not loc.startswith(f"{self.http.base_url}/"):
            self.uploads.forget(repo, digest)
            return None
        status = self._upload_offset(repo, loc)
        if status is None or not 0 < status[0] < size:
            self.uploads.forget(repo, digest)
            return None
        self.count("resumed")
        self._log(f"{self.host}/{repo}: blob {short(digest)}: continuing an earlier run's upload at byte {status[0]}")
        return status

    def _check_done(self, resp: requests.Response, repo: str, digest: str) -> None:
        resp.close()
        if resp.status_code in (201, 204):
            got = resp.headers.get("Docker-Content-Digest")
            if got and got != digest:
                raise RegistryError(f"{self.host}/{repo}: registry stored blob as {got[:80]}, expected {digest}")
            return
        codes = error_codes(resp)
        if resp.status_code not in (401, 403) and ("DIGEST_INVALID" in codes or "SIZE_INVALID" in codes):
            raise BadInputError(
                f"{self.host}/{repo}: registry rejected blob {short(digest)}: {error_detail(resp)} (source content does not match its digest)"
            )
        check_status(
            resp,
            what=f"{self.host}/{repo}",
            action=f"upload of blob {short(digest)} failed",
            auth_failed=lambda r: self._auth_failed(r, repo, f"{self.host}/{repo}"),
        )

    def _put_monolithic(
        self, repo: str, location: str, digest: str, size: int, open_file: Callable[[], BinaryIO], check: LocalBlobCheck
    ) -> None:
        url = oras.utils.append_url_params(location, {"digest": digest})
        files: list[BinaryIO] = []

        def body() -> Any:
            f = open_file()
            files.append(f)
            return _CheckedSlice(f, 0, size, check)

        try:
            resp = self.request(
                "PUT",
                url,
                repository=repo,
                scopes=self._push(repo),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                body=body,
                retry=False,
                what=f"{self.host}/{repo}: uploading blob {short(digest)}",
            )
        finally:
            for f in files:
                f.close()
        if resp.status_code in (404, 400) and "BLOB_UPLOAD_UNKNOWN" in error_codes(resp):
            raise Transient("upload session expired")
        self._check_done(resp, repo, digest)
        self.count("bytes_uploaded", size)

    def _upload_offset(self, repo: str, location: str) -> tuple[int, str] | None:
        """Where the registry's upload session stands (GET upload status), None if it is gone."""
        try:
            resp = self.request(
                "GET",
                location,
                repository=repo,
                scopes=self._push(repo),
                retry=False,
                what=f"{self.host}/{repo}: upload status",
            )
        except Transient:
            return None
        resp.close()
        if resp.status_code != 204:
            return None
        end = range_end(resp)
        if end is None:
            # "Range" absent: nothing received yet (some registries omit "0--1")
            end = 0
        return end, self._location(resp, repo) if resp.headers.get("Location") else location

    def _put_chunked(
        self,
        repo: str,
        location: str,
        digest: str,
        size: int,
        open_file: Callable[[], BinaryIO],
        start: int = 0,
        check: LocalBlobCheck | None = None,
    ) -> None:
        what = f"{self.host}/{repo}: uploading blob {short(digest)}"
        check = check or LocalBlobCheck(digest, size, open_file, what)
        offset = start
        attempt = 0
        with open_file() as f:
            while offset < size:
                n = min(self.chunk_size, size - offset)
                try:
                    resp = self.request(
                        "PATCH",
                        location,
                        repository=repo,
                        scopes=self._push(repo),
                        headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Range": f"{offset}-{offset + n - 1}",
                            "Content-Length": str(n),
                        },
                        body=functools.partial(_CheckedSlice, f, offset, n, check),
                        retry=False,
                        what=what,
                    )
                except Transient as e:
                    # Resume: ask the session where it stands; restart only if it is gone.
                    self._backoff(attempt, e, what)
                    attempt += 1
                    status = self._upload_offset(repo, location)
                    if status is None:
                        self.uploads.forget(repo, digest)
                        raise Transient(f"{e}; upload session lost") from None
                    offset, location = status
                    self.count("resumed")
                    self._log(f"{what}: resuming at byte {offset}")
                    continue
                resp.close()
                if resp.status_code == 416:
                    status = self._upload_offset(repo, location)
                    if status is None:
                        raise Transient("upload session lost after a range mismatch")
                    offset, location = status
                    continue
                if resp.status_code in (404, 400) and "BLOB_UPLOAD_UNKNOWN" in error_codes(resp):
                    raise Transient("upload session expired")
                check_status(
                    resp,
                    202,
                    what=what,
                    action="chunk upload failed",
                    auth_failed=lambda r: self._auth_failed(r, repo, what),
                )
                location = self._location(resp, repo)
                end = range_end(resp)
                offset = end if end is not None else offset + n
                self.count("bytes_uploaded", n)
                self.uploads.remember(repo, digest, location, offset)
        if check.pos != size:
            check._rehash_to(size)
        check.verify()
        url = oras.utils.append_url_params(location, {"digest": digest})
        resp = self.request(
            "PUT",
            url,
            repository=repo,
            scopes=self._push(repo),
            headers={"Content-Length": "0"},
            retry=False,
            what=what,
        )
        if resp.status_code not in (201, 204):
            self.uploads.forget(repo, digest)  # a refused final PUT ends the session
        self._check_done(resp, repo, digest)
        self.uploads.forget(repo, digest)

    def open_blob(self, repo: str, digest: str, size: int | None = None) -> BlobStream:
        """A streaming, digest-verifying reader of the blob (resumes with Range after drops)."""
        check_digest(digest)
        return BlobStream(self, repo, digest, size)

    def get_range(self, repo: str, digest: str, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of a blob; RegistryError if Range is not honoured."""
        if length == 0:
            return b""
        what = f"{self.host}/{repo}@{short(digest)}"
        resp = self.get_blob_ranges(repo, digest, f"{offset}-{offset + length - 1}", what)
        with resp:
            if resp.status_code == 206:
                data = read_body(resp, length + 1, what)
                if len(data) != length:
                    raise RegistryError(f"{what}: range request returned {len(data)} bytes, expected {length}")
                return data
            if resp.status_code == 200:
                # No Range support: skip to the offset (slow but correct).
                skip = offset
                while skip:
                    got = read_body(resp, min(skip, 1 << 20), what)
                    if not got:
                        break
                    skip -= len(got)
                data = read_body(resp, length, what)
                if len(data) != length:
                    raise RegistryError(f"{what}: blob shorter than requested range")
                return data
            self._raise_for_blob(resp, repo, digest)
        raise AssertionError("unreachable")

    def get_ranges(
        self, repo: str, digest: str, ranges: Sequence[tuple[int, int]], size: int | None = None
    ) -> list[bytes]:
        """The bytes of every (offset, length) of a blob, in the order asked, with one multi-range GET.

        The answer may be multipart/byteranges, one merged range, or the whole
        blob (read only up to the last asked byte); see multipart.py. A Range
        header too long for one request, or one a server or proxy refuses as
        too big (400, 413, 414, 431), is split in halves. `size`: the blob's
        size, which every part's Content-Range must name.

        Where a multi-range request gets the whole blob (S3 and other object
        stores behind registries ignore multi-range requests) or only its first
        range, later calls for the blob ask one range per request; where one
        range gets the whole blob too (no Range support), many ranges again, so
        that a call reads the blob once, not once per range.
        """
        out = [b""] * len(ranges)
        todo = [(i, r) for i, r in enumerate(ranges) if r[1] > 0]
        if todo:
            for i, data in zip([i for i, _ in todo], self._get_ranges(repo, digest, [r for _, r in todo], size)):
                out[i] = data
        return out

    def _range_modes(self) -> dict[tuple[str, str], str]:
        """(repo, digest) -> "single" (multi-range requests not answered with parts) or "none" (no ranges)."""
        modes: dict[tuple[str, str], str] | None = self.__dict__.get("_zconv_range_modes")
        if modes is None:
            modes = self.__dict__.setdefault("_zconv_range_modes", {})
        return modes

    def _get_ranges(self, repo: str, digest: str, ranges: list[tuple[int, int]], size: int | None) -> list[bytes]:
        modes = self._range_modes()
        if len(ranges) > 1 and modes.get((repo, digest)) == "single":
            return self._one_by_one(repo, digest, ranges, size)
        spec = ",".join(f"{off}-{off + n - 1}" for off, n in ranges)
        if len(spec) > MAX_RANGE_HEADER and len(ranges) > 1:
            return self._get_halves(repo, digest, ranges, size)
        what = f"{self.host}/{repo}@{short(digest)}"
        asked = multipart.Asked(ranges, size, what)
        resp = self.get_blob_ranges(repo, digest, spec, what)
        with resp:
            if resp.status_code in (200, 206):
                encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise asked.fail(f"Content-Encoding {printable(encoding, 40)!r} (offsets would not be the blob's)")

                def read(n: int) -> bytes:
                    return read_body(resp, n, what)

                ctype = resp.headers.get("Content-Type", "")
                if resp.status_code == 200:
                    if len(ranges) > 1:
                        modes.setdefault((repo, digest), "single")
                    else:
                        modes[(repo, digest)] = "none"
                    parts = multipart.read_through(read, asked)
                elif multipart.is_multipart(ctype):
                    boundary = multipart.boundary_of(ctype)
                    if boundary is None:
                        raise asked.fail(f"Content-Type {printable(ctype, 120)!r} has no usable boundary")
                    parts = multipart.read_multipart(read, boundary, asked)
                    _drain(resp)
                else:
                    parts = multipart.read_single(read, resp.headers.get("Content-Range", ""), asked)
                    got = multipart.assemble(asked, parts, missing_ok=True)
                    if len(ranges) > 1 and any(g is None for g in got):
                        # Only some of the ranges came back (servers that answer the first range only).
                        modes.setdefault((repo, digest), "single")
                        rest = [r for r, g in zip(ranges, got) if g is None]
                        more = iter(self._one_by_one(repo, digest, rest, size))
                        return [g if g is not None else next(more) for g in got]
                return [g for g in multipart.assemble(asked, parts) if g is not None]
            if resp.status_code in (400, 413, 414, 431) and len(ranges) > 1:
                resp.close()
                return self._get_halves(repo, digest, ranges, size)
            self._raise_for_blob(resp, repo, digest)
        raise AssertionError("unreachable")

    def _one_by_one(self, repo: str, digest: str, ranges: list[tuple[int, int]], size: int | None) -> list[bytes]:
        out: list[bytes] = []
        for i, r in enumerate(ranges):
            if self._range_modes().get((repo, digest)) == "none":
                # no Range support at all: the rest in one request, which reads the blob once
                return out + self._get_ranges(repo, digest, ranges[i:], size)
            out += self._get_ranges(repo, digest, [r], size)
        return out

    def _get_halves(self, repo: str, digest: str, ranges: list[tuple[int, int]], size: int | None) -> list[bytes]:
        half = len(ranges) // 2
        return self._get_ranges(repo, digest, ranges[:half], size) + self._get_ranges(repo, digest, ranges[half:], size)

    def _raise_for_blob(self, resp: requests.Response, repo: str, digest: str) -> None:
        check_status(
            resp,
            what=f"{self.host}/{repo}",
            action=f"GET blob {short(digest)} failed",
            auth_failed=lambda r: self._auth_failed(r, repo, f"{self.host}/{repo}"),
            name_unknown=f"{self.host}/{repo}: repository not found",
            not_found=f"{self.host}/{repo}: blob {digest} not found",
        )


def _drain(resp: requests.Response) -> None:
    """Read a short epilogue after the last part, so the connection can serve the next request."""
    try:
        resp.raw.read(4096)
    except (urllib3.exceptions.HTTPError, OSError, requests.exceptions.RequestException, ValueError):
        pass


def read_body(resp: requests.Response, n: int, what: str) -> bytes:
    """Up to `n` bytes of a streamed answer; a dropped or stalled connection is one RegistryError."""
    try:
        data = resp.raw.read(n)
    except (urllib3.exceptions.HTTPError, OSError, requests.exceptions.RequestException, ValueError) as e:
        if deadline_expired(resp):
            raise RegistryError(f"{what}: the answer stalled (no progress within the timeout)") from None
        raise RegistryError(f"{what}: reading the answer failed: {conn_error_text(e)}") from None
    if deadline_expired(resp):
        raise RegistryError(f"{what}: the answer stalled (no progress within the timeout)")
    return data


class BlobStream(io.RawIOBase):
    """GET of a blob, read incrementally; verifies size and digest at the end.

    A connection dropped mid-blob is resumed with `Range: bytes=N-` (within
    the retry budget) when the registry honours it.
    """

    def __init__(self, client: ClientCore, repo: str, digest: str, size: int | None) -> None:
        super().__init__()
        self._c = client
        self._repo = repo
        self._digest = digest
        self._size = size
        self._hash = new_hasher(digest)
        self._pos = 0
        self._what = f"{client.host}/{repo}@{short(digest)}"
        self._resp: requests.Response | None = None
        self._attempt = 0
        self._done = False
        # The GET is sent on the first read: a caller that ends up not reading (a blob
        # mounted instead) costs no download.

    def _open(self, offset: int) -> None:
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        resp = self._c.request(
            "GET",
            f"/v2/{self._repo}/blobs/{self._digest}",
            repository=self._repo,
            scopes=self._c._pull(self._repo),
            headers=headers,
            stream=True,
            what=self._what,
        )
        if offset and resp.status_code == 206:
            cr = resp.headers.get("Content-Range", "")
            m = re.match(r"bytes[ =](\d{1,19})-", cr)
            if not m or int(m.group(1)) != offset:
                resp.close()
                raise RegistryError(f"{self._what}: resumed download started at the wrong offset ({cr[:80]!r})")
        elif resp.status_code != 200 or offset:
            try:
                if offset and resp.status_code == 200:
                    raise RegistryError(
                        f"{self._what}: connection dropped at byte {offset} and the registry does not resume (no Range support)"
                    )
                self._c._raise_for_blob(resp, self._repo, self._digest)
            finally:
                resp.close()
        if self._size is None and not offset:
            cl = resp.headers.get("Content-Length")
            if cl and cl.isdigit():
                self._size = int(cl)
        self._resp = resp

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._done:
            return 0
        if self._resp is None:
            self._open(0)
        want = len(b)
        if self._size is not None:
            want = min(want, self._size - self._pos + 1)  # +1: notice extra bytes
        while True:
            try:
                data = self._resp.raw.read(max(1, want))  # type: ignore[union-attr]
                if deadline_expired(self._resp):  # type: ignore[arg-type]
                    raise OSError("stalled")
                break
            except (urllib3.exceptions.HTTPError, OSError, requests.exceptions.RequestException, ValueError) as e:
                stalled = deadline_expired(self._resp)  # type: ignore[arg-type]
                self._resp.close()  # type: ignore[union-attr]
                why = "stalled (no progress within the timeout)" if stalled else conn_error_text(e)
                self._c._backoff(self._attempt, Transient(f"download dropped at byte {self._pos}: {why}"), self._what)
                self._attempt += 1
                self._open(self._pos)
        if not data:
            if self._size is not None and self._pos < self._size:
                # connection closed early without an exception
                self._resp.close()  # type: ignore[union-attr]
                self._c._backoff(
                    self._attempt, Transient(f"download ended at byte {self._pos} of {self._size}"), self._what
                )
                self._attempt += 1
                self._open(self._pos)
                return self.readinto(b)
            self._finish()
            return 0
        n = len(data)
        self._pos += n
        if self._size is not None and self._pos > self._size:
            raise BadInputError(f"{self._what}: registry sent more than the {self._size} bytes the descriptor declares")
        self._hash.update(data)
        b[:n] = data
        return n

    def _finish(self) -> None:
        self._done = True
        got = f"{self._digest.split(':')[0]}:{self._hash.hexdigest()}"
        if got != self._digest:
            raise BadInputError(f"{self._what}: downloaded content has digest {got}, not the one requested")

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
        super().close()
