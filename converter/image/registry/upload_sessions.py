"""Upload sessions of large blobs, remembered on disk so a run after a crash continues.

An upload session's Location changes after every PATCH (distribution puts an
HMAC'd `_state` with the offset in it); resuming means GET on the last
Location, which answers 204 with `Range: 0-<last byte>`. If a PATCH died
half-way the registry has bytes the state does not know about and refuses
the session; then the blob starts over with a fresh POST. The files live in
~/.cache/zconv/uploads, one per (registry, repository, digest).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading

import requests

from converter.image.model import DEFAULT_CHUNK_SIZE as DEFAULT_CHUNK_SIZE  # re-exported: the registry layer's default


def range_end(resp: requests.Response) -> int | None:
    """Offset of the next byte to send, from an upload session's `Range: 0-N` header."""
    rng = resp.headers.get("Range")
    if not rng:
        return None
    m = re.match(r"^(?:bytes=)?0-(\d{1,19})$", rng.strip())
    if not m:
        return None
    end = int(m.group(1))
    # distribution says "0-0" for an empty session too; we never leave a 1-byte session
    return 0 if end == 0 else end + 1


class UploadSessions:
    """The on-disk memory of unfinished uploads to one registry (no lock: one file per blob, atomic renames)."""

    def __init__(self, api_host: str) -> None:
        self.api_host = api_host

    def path(self, repo: str, digest: str) -> str:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        key = hashlib.sha256(f"{self.api_host}/{repo}@{digest}".encode()).hexdigest()
        return os.path.join(base, "zconv", "uploads", f"{key}.json")

    def remember(self, repo: str, digest: str, location: str, offset: int) -> None:
        path = self.path(repo, digest)
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(tmp, "w") as f:
                json.dump({"location": location, "offset": offset}, f)
            os.replace(tmp, path)
        except OSError:
            pass  # best effort: without it a crashed upload starts over

    def forget(self, repo: str, digest: str) -> None:
        try:
            os.unlink(self.path(repo, digest))
        except OSError:
            pass

    def location(self, repo: str, digest: str) -> str | None:
        """The Location an earlier run saved, if any."""
        try:
            with open(self.path(repo, digest), "rb") as f:
                doc = json.loads(f.read(64 * 1024))
            loc = doc["location"]
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return None
        return loc if isinstance(loc, str) else None
