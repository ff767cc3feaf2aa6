"""A local, content-addressed store of compressed payload frames.

Layout of the cache directory:

    index.db          SQLite (WAL): frame key -> (pack, offset, length, frame digest)
    packs/<id>.pack   append-only files of frames; one writer per pack

Why packs and an index, not a file per frame or frames inside SQLite:
measured on this machine for 20,000 frames of ~3 KB (per frame, write /
read): a file per frame 572 / 76 us, SQLite BLOBs 279 / 133 us, packs with a
SQLite index 32 / 17 us (read includes the digest check). For 200 KB
frames SQLite BLOBs took 2.7 / 3.4 ms against 0.57 / 0.58 ms for packs. A
Debian root filesystem is mostly small files, so a file per frame would make
a warm run slower than a cold one; packs keep the per-frame cost below that
of compressing it.

Safety: a frame is written to the pack before its index row, so a run
killed in between leaves unreferenced bytes, never a row pointing at
nothing. Every frame read back is checked against the sha256 of the frame
stored in its row (and its length); any mismatch, short read or missing pack
drops the row and the caller compresses the chunk again. Two processes never
share a pack (each creates its own), and SQLite serialises the index.
Pruning evicts whole packs, least recently used first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

log = logging.getLogger("zconv")

DEFAULT_MAX_SIZE = 2 << 30
PACK_MAX = 128 << 20  # a writer starts a new pack past this size
_SCHEMA = """
create table if not exists frames (
    key blob primary key,   -- sha256(encoder NUL chunk sha256)
    pack integer not null,
    off integer not null,
    len integer not null,
    fsum blob not null      -- sha256 of the stored frame, first 16 bytes
) without rowid;
create index if not exists frames_pack on frames(pack);
create table if not exists packs (id integer primary key autoincrement, used real not null);  -- ids never reused
create table if not exists meta (k text primary key, v text not null);
"""


def default_cache_dir() -> Path:
    env = os.environ.get("ZCONV_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "zconv"


def frame_key(encoder: str, digest: bytes) -> bytes:
    return hashlib.sha256(encoder.encode() + b"\0" + digest).digest()


def _fsum(frame: bytes) -> bytes:
    return hashlib.sha256(frame).digest()[:16]


class _Unused(Exception):
    pass


@dataclass
class SourceStats:
    """Frames (payload chunks and tar-header frames), their uncompressed and compressed bytes."""

    frames: int = 0
    bytes: int = 0  # uncompressed chunk bytes
    frame_bytes: int = 0

    def add(self, size: int, frame: int) -> None:
        self.frames += 1
        self.bytes += size
        self.frame_bytes += frame

    def to_json(self) -> dict[str, int]:
        return {"frames": self.frames, "bytes": self.bytes, "frame_bytes": self.frame_bytes}


def many(db: sqlite3.Connection, sql: str, rows: list) -> None:
    """executemany in one transaction (in autocommit mode every row would be its own: 2 s per 16,000 rows)."""
    db.execute("begin immediate")
    try:
        db.executemany(sql, rows)
    except BaseException:
        db.execute("rollback")
        raise
    db.execute("commit")


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), timeout=60, isolation_level=None, check_same_thread=False)
    db.execute("pragma journal_mode=wal")
    db.execute("pragma synchronous=normal")
    return db


class FrameCache:
    """The frame cache in one directory; thread-safe, shareable between processes."""

    def __init__(self, root: str | os.PathLike, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.root = Path(root)
        self.max_size = max_size
        self._lock = threading.Lock()
        self._pack_id: int | None = None
        self._pack: Any = None
        self._pack_size = 0
        self._fds: dict[int, int] = {}
        self._used: set[int] = set()  # packs written by this run
        self._hit: dict[int, list[bytes]] = {}  # pack -> keys of frames this run took from it
        self._hit_bytes: dict[int, int] = {}
        self.hits = SourceStats()
        self.stored = SourceStats()
        self.misses = 0
        self.dropped = 0
        (self.root / "packs").mkdir(parents=True, exist_ok=True)
        self._db = self._open_db()

    # ------------------------------------------------------------------ setup

    def _open_db(self) -> sqlite3.Connection:
        path = self.root / "index.db"
        try:
            db = connect(path)
            db.executescript(_SCHEMA)
            db.execute("select count(*) from frames").fetchone()
            return db
        except sqlite3.DatabaseError as e:
            # A damaged index cannot be trusted for anything: start over.
            log.warning("frame cache %s: index unreadable (%s); cache cleared", self.root, e)
            self._wipe()
            db = connect(path)
            db.executescript(_SCHEMA)
            return db

    def _wipe(self) -> None:
        for name in ("index.db", "index.db-wal", "index.db-shm"):
            try:
                (self.root / name).unlink()
            except FileNotFoundError:
                pass
        shutil.rmtree(self.root / "packs", ignore_errors=True)
        (self.root / "packs").mkdir(parents=True, exist_ok=True)

    def _pack_path(self, pack: int) -> Path:
        return self.root / "packs" / f"{pack}.pack"

    def _new_pack(self) -> None:
        if self._pack is not None:
            self._pack.close()
        cur = self._db.execute("insert into packs(used) values (?)", (time.time(),))
        self._pack_id = int(cur.lastrowid)  # type: ignore[arg-type]
        # "xb": a pack id is never reused, and never shared with another writer.
        self._pack = open(self._pack_path(self._pack_id), "xb")
        self._pack_size = 0
        self._used.add(self._pack_id)

    # ------------------------------------------------------------------ FrameStore

    def get_frames(self, encoder: str, digests: list[bytes]) -> dict[bytes, bytes]:
        keys = {frame_key(encoder, d): d for d in digests}
        out: dict[bytes, bytes] = {}
        bad: list[bytes] = []
        with self._lock:
            rows: list[tuple] = []
            klist = list(keys)
            try:
                for i in range(0, len(klist), 500):
                    part = klist[i : i + 500]
                    q = f"select key, pack, off, len, fsum from frames where key in ({','.join('?' * len(part))})"
                    rows += self._db.execute(q, part).fetchall()
            except sqlite3.DatabaseError as e:
                log.warning("frame cache %s: lookup failed (%s); compressing instead", self.root, e)
                return {}
            for key, pack, off, ln, fsum in rows:
                frame = self._read(pack, off, ln)
                if frame is None or _fsum(frame) != fsum:
                    bad.append(key)
                    continue
                out[keys[key]] = frame
                self._hit.setdefault(pack, []).append(key)
                self._hit_bytes[pack] = self._hit_bytes.get(pack, 0) + ln
                self.hits.add(zstandard.frame_content_size(frame), ln)
            if bad:
                self.dropped += len(bad)
                log.warning(
                    "frame cache %s: %d damaged entr%s dropped", self.root, len(bad), "y" if len(bad) == 1 else "ies"
                )
                self._delete_keys(bad)
            self.misses += len(keys) - len(out)
        return out

    def _read(self, pack: int, off: int, ln: int) -> bytes | None:
        fd = self._fds.get(pack)
        if fd is None:
            try:
                fd = os.open(self._pack_path(pack), os.O_RDONLY)
            except OSError:
                return None
            self._fds[pack] = fd
        try:
            data = os.pread(fd, ln, off)
        except OSError:
            return None
        return data if len(data) == ln else None

    def _delete_keys(self, keys: list[bytes]) -> None:
        try:
            many(self._db, "delete from frames where key = ?", [(k,) for k in keys])
        except sqlite3.DatabaseError:
            pass

    def put_frames(self, encoder: str, frames: list[tuple[bytes, bytes]]) -> None:
        with self._lock:
            try:
                if self._pack is None or self._pack_size >= PACK_MAX:
                    self._new_pack()
                rows = []
                for digest, frame in frames:
                    rows.append((frame_key(encoder, digest), self._pack_id, self._pack_size, len(frame), _fsum(frame)))
                    self._pack.write(frame)
                    self._pack_size += len(frame)
                self._pack.flush()  # bytes first, rows second: a row never points past the data
                for _, frame in frames:
                    self.stored.add(zstandard.frame_content_size(frame), len(frame))
                many(self._db, "insert or ignore into frames values (?, ?, ?, ?, ?)", rows)
            except (OSError, sqlite3.DatabaseError) as e:
                log.warning("frame cache %s: cannot store frames (%s)", self.root, e)
                return

    # ------------------------------------------------------------------ end of run

    def close(self, prune: bool = True) -> None:
        """Mark the packs this run used, record its stats, prune to max_size."""
        with self._lock:
            try:
                now = time.time()
                self._refresh_hits()
                many(self._db, "update packs set used = ? where id = ?", [(now, p) for p in self._used])
                total = self.hits.frames + self.misses
                if not total and not self.stored.frames:
                    prune = False  # a run that did not use the cache (cache info): keep its record
                    raise _Unused
                stats = {
                    "finished": now,
                    "lookups": total,
                    "hits": self.hits.frames,
                    "hit_bytes": self.hits.bytes,
                    "hit_rate": round(self.hits.frames / total, 4) if total else None,
                    "dropped": self.dropped,
                }
                self._db.execute("insert or replace into meta values ('last_run', ?)", (json.dumps(stats),))
            except _Unused:
                pass
            except (OSError, sqlite3.DatabaseError) as e:
                log.warning("frame cache %s: cannot record use (%s)", self.root, e)
            if self._pack is not None:
                self._pack.close()
                self._pack = None
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
        if prune:
            self.prune(self.max_size)
        self._db.close()

    def _refresh_hits(self) -> None:
        """Make the packs this run read from recently used, per frame rather than per pack.

        A pack most of whose bytes were hit is marked used. From a pack only a
        little of which was hit, those frames move to this run's pack, so one
        hot frame does not keep a whole cold pack from being pruned.
        """
        files = self._pack_files()
        for pack, keys in self._hit.items():
            if pack in self._used:
                continue
            if self._hit_bytes[pack] * 4 >= files.get(pack, 0):
                self._used.add(pack)
                continue
            moved = []
            for i in range(0, len(keys), 500):
                part = keys[i : i + 500]
                q = f"select key, off, len, fsum from frames where pack = ? and key in ({','.join('?' * len(part))})"
                for key, off, ln, fsum in self._db.execute(q, [pack, *part]).fetchall():
                    frame = self._read(pack, off, ln)
                    if frame is not None and _fsum(frame) == fsum:
                        moved.append((key, frame, fsum))
            if not moved:
                continue
            if self._pack is None or self._pack_size >= PACK_MAX:
                self._new_pack()
            rows = []
            for key, frame, _ in moved:
                rows.append((self._pack_id, self._pack_size, len(frame), key))
                self._pack.write(frame)
                self._pack_size += len(frame)
            self._pack.flush()
            many(self._db, "update frames set pack = ?, off = ?, len = ? where key = ?", rows)

    def info(self) -> dict[str, Any]:
        with self._lock:
            entries, fbytes = self._db.execute("select count(*), coalesce(sum(len), 0) from frames").fetchone()
            row = self._db.execute("select v from meta where k = 'last_run'").fetchone()
        return {
            "dir": str(self.root),
            "entries": entries,
            "frame_bytes": fbytes,
            "disk_bytes": self.disk_size(),
            "max_size": self.max_size,
            "last_run": json.loads(row[0]) if row else None,
        }

    def _pack_files(self) -> dict[int, int]:
        """Pack id -> size on disk."""
        out = {}
        for p in (self.root / "packs").iterdir():
            if p.suffix == ".pack" and p.stem.isdigit():
                try:
                    out[int(p.stem)] = p.stat().st_size
                except FileNotFoundError:
                    pass
        return out

    def disk_size(self) -> int:
        db = sum(os.path.getsize(self.root / n) for n in ("index.db", "index.db-wal") if (self.root / n).exists())
        return db + sum(self._pack_files().values())

    def prune(self, max_size: int) -> int:
        """Evict least recently used packs until the cache fits in `max_size`; returns bytes freed."""
        freed = 0
        with self._lock:
            try:
                self._db.execute("pragma wal_checkpoint(truncate)")  # the log counts until folded in
                files = self._pack_files()
                known = dict(self._db.execute("select id, used from packs").fetchall())
                for pid in [p for p in files if p not in known]:  # orphans of a damaged index
                    freed += files.pop(pid)
                    self._pack_path(pid).unlink(missing_ok=True)
                for pid in [p for p in known if p not in files and p != self._pack_id]:
                    self._db.execute("delete from frames where pack = ?", (pid,))
                    self._db.execute("delete from packs where id = ?", (pid,))
                    known.pop(pid)
                total = self.disk_size()
                for pid in sorted(known, key=lambda p: known[p]):
                    if total <= max_size:
                        break
                    size = files.get(pid, 0)
                    self._db.execute("begin immediate")
                    self._db.execute("delete from frames where pack = ?", (pid,))
                    self._db.execute("delete from packs where id = ?", (pid,))
                    self._db.execute("commit")
                    self._pack_path(pid).unlink(missing_ok=True)
                    total -= size
                    freed += size
                self._db.execute("pragma wal_checkpoint(truncate)")
            except sqlite3.DatabaseError as e:
                log.warning("frame cache %s: prune failed (%s)", self.root, e)
        return freed

    def clear(self) -> None:
        with self._lock:
            self._db.close()
            self._wipe()
            self._db = connect(self.root / "index.db")
            self._db.executescript(_SCHEMA)
