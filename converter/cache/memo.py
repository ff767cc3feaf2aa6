"""What earlier runs learned about layers and blobs (memo.db in the cache directory).

layers: (source layer digest, encoder identity, options) -> the converted
        layer's digest, size, DiffID, media type and writer annotations.
        When the destination already holds that blob, the layer is not read.
blobs:  (registry host, repository, digest) seen pushed, as containers/image's
        blob-info cache does, so a later push of the same blob to another
        repository of that registry can mount it instead of uploading it.

The memo is a hint, never trusted for bytes: a memo hit is used only when the
destination confirms it holds the blob (has_blob, or a mount that succeeded).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.cache.frames import connect

log = logging.getLogger("zconv")

_SCHEMA = """
create table if not exists layers (key text primary key, result text not null, used real not null);
create table if not exists blobs (host text not null, repo text not null, digest text not null, seen real not null,
                                  primary key (host, digest, repo));
"""
MAX_LAYERS = 100_000
MAX_BLOBS = 200_000


@dataclass(frozen=True)
class MemoLayer:
    digest: str
    size: int
    diff_id: str
    media_type: str
    annotations: dict[str, str]
    chunked: bool
    reason: str | None
    tar_size: int = 0

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MemoLayer:
        d = json.loads(text)
        return cls(**d)


class LayerMemo:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        path = self.root / "memo.db"
        try:
            self._db = connect(path)
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            log.warning("layer memo %s: unreadable (%s); starting a new one", path, e)
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            self._db = connect(path)
            self._db.executescript(_SCHEMA)

    @staticmethod
    def key(source_digest: str, encoder: str, options: dict[str, Any]) -> str:
        return json.dumps([source_digest, encoder, options], sort_keys=True)

    def get(self, key: str) -> MemoLayer | None:
        with self._lock:
            try:
                row = self._db.execute("select result from layers where key = ?", (key,)).fetchone()
                if row is None:
                    return None
                self._db.execute("update layers set used = ? where key = ?", (time.time(), key))
                return MemoLayer.from_json(row[0])
            except (sqlite3.DatabaseError, ValueError, TypeError) as e:
                log.warning("layer memo: entry unusable (%s)", e)
                return None

    def put(self, key: str, layer: MemoLayer) -> None:
        with self._lock:
            try:
                self._db.execute("insert or replace into layers values (?, ?, ?)", (key, layer.to_json(), time.time()))
            except sqlite3.DatabaseError as e:
                log.warning("layer memo: cannot record (%s)", e)

    def remember_blob(self, host: str, repo: str, digest: str) -> None:
        with self._lock:
            try:
                self._db.execute("insert or replace into blobs values (?, ?, ?, ?)", (host, repo, digest, time.time()))
            except sqlite3.DatabaseError as e:
                log.warning("layer memo: cannot record (%s)", e)

    def repositories(self, host: str, digest: str, limit: int = 5) -> list[str]:
        """Repositories of `host` where `digest` was seen, most recent first."""
        with self._lock:
            try:
                rows = self._db.execute(
                    "select repo from blobs where host = ? and digest = ? order by seen desc limit ?",
                    (host, digest, limit),
                ).fetchall()
            except sqlite3.DatabaseError:
                return []
        return [r[0] for r in rows]

    def forget_blob(self, host: str, repo: str, digest: str) -> None:
        with self._lock:
            try:
                self._db.execute("delete from blobs where host = ? and repo = ? and digest = ?", (host, repo, digest))
            except sqlite3.DatabaseError:
                pass

    def info(self) -> dict[str, int]:
        with self._lock:
            layers = self._db.execute("select count(*) from layers").fetchone()[0]
            blobs = self._db.execute("select count(*) from blobs").fetchone()[0]
        return {"layers": layers, "blob_locations": blobs}

    def close(self) -> None:
        with self._lock:
            try:
                # Bounded like the frames: oldest rows go first.
                self._db.execute(
                    "delete from layers where key in (select key from layers order by used desc limit -1 offset ?)",
                    (MAX_LAYERS,),
                )
                self._db.execute(
                    "delete from blobs where rowid in (select rowid from blobs order by seen desc limit -1 offset ?)",
                    (MAX_BLOBS,),
                )
            except sqlite3.DatabaseError:
                pass
            self._db.close()

    def clear(self) -> None:
        with self._lock:
            self._db.execute("delete from layers")
            self._db.execute("delete from blobs")
