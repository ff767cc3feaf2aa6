"""OCI image layouts: directories (oci:PATH[:TAG]) and their tars (oci-archive:PATH[:TAG]).

Reading: index.json names the top-level manifests/indexes; a tag is the
`org.opencontainers.image.ref.name` annotation of an index.json entry; blobs
live in blobs/<alg>/<hex>. An archive is read in place: its members are
located once and each blob is streamed from its offset in the tar, so
nothing is extracted.

Reading opens every file of a layout (index.json, oci-layout, blobs) through
fsutil.open_regular: FIFOs, devices and directories are refused before they
are opened, and a symlink leaving the layout is reported. Archive members
must be regular files; links are followed only inside the archive.

Writing never touches the destination before commit(): blobs go into a
staging directory next to it (same filesystem, so moving them is a rename).
commit() takes the layout's lock (LayoutLock: an flock on
<layout>/.zconv-lock, so concurrent writers each keep their tags), removes
what killed runs left behind, reads index.json, writes oci-layout, moves the
blobs in and writes index.json last, atomically. An archive is a layout
staged the same way, then tarred into a temp file renamed over the
destination.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import time
from typing import Any, BinaryIO, Iterable, Sequence

from converter.errors import BadInputError, UsageError, ZconvError
from converter.fsutil import open_regular, write_file_atomic
from converter.image.model import (
    MAX_MANIFEST_SIZE,
    OCI_INDEX,
    REF_NAME_ANNOTATION,
    Descriptor,
    ImageSink,
    ImageSource,
    VerifyingReader,
    canonical_json,
    copy_verified,
    parse_tag_or_digest,
    short,
    split_digest,
    verify_bytes,
)
from converter.jsonload import load_json

LAYOUT_FILE = "oci-layout"
LAYOUT_CONTENT = b'{"imageLayoutVersion":"1.0.0"}'
MAX_LAYOUT_FILE_SIZE = 64 * 1024
INDEX_FILE = "index.json"


LOCK_FILE = ".zconv-lock"
OWNER_FILE = ".zconv-owner"
# How long a writer waits for another one to finish with the same layout.
LOCK_TIMEOUT = float(os.environ.get("ZCONV_LOCK_TIMEOUT", "600"))
# A staging directory without an owner file is a run killed right after creating it.
_ORPHAN_AGE = 60.0

log = logging.getLogger("zconv")


def _stage_prefix(path: str) -> str:
    return f".{os.path.basename(path)}.zconv-"


class _Stage:
    """A fresh directory beside `path`, so finished files move into place by rename.

    The run that made it holds an exclusive flock on its owner file for as
    long as it lives; a staging directory whose owner file can be locked by
    someone else belongs to a run that was killed, and is removed by
    `remove_stale_stages`.
    """

    def __init__(self, path: str, description: str) -> None:
        parent = os.path.dirname(path)
        try:
            os.makedirs(parent, exist_ok=True)
            self.path = tempfile.mkdtemp(dir=parent, prefix=_stage_prefix(path))
            # Locked before it gets its name: a cleaner never sees an owner file that is not locked yet.
            tmp = os.path.join(self.path, OWNER_FILE + ".new")
            self._owner: int | None = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._owner, fcntl.LOCK_EX)
            os.rename(tmp, os.path.join(self.path, OWNER_FILE))
        except OSError as e:
            raise ZconvError(f"{description}: cannot create a staging directory in {parent}: {e.strerror}") from None

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self.release()

    def release(self) -> None:
        if self._owner is not None:
            os.close(self._owner)
            self._owner = None


def remove_stale_stages(path: str) -> list[str]:
    """Remove the staging directories of killed runs beside `path`; returns what was removed."""
    parent = os.path.dirname(path)
    prefix = _stage_prefix(path)
    removed: list[str] = []
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix)]
    except OSError:
        return removed
    for name in names:
        full = os.path.join(parent, name)
        try:
            st = os.lstat(full)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        try:
            fd = os.open(os.path.join(full, OWNER_FILE), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            if time.time() - st.st_mtime > _ORPHAN_AGE:
                shutil.rmtree(full, ignore_errors=True)
                removed.append(full)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live run
        else:
            shutil.rmtree(full, ignore_errors=True)
            removed.append(full)
        finally:
            os.close(fd)
    return removed


class LayoutLock:
    """Exclusive lock of a layout directory: an flock on `<layout>/.zconv-lock`.

    Held by a writer from reading index.json to renaming the new one into
    place, so two runs writing into the same layout both end with their tags.
    The directory is created if needed; the lock file is removed on release
    (a waiter that then holds a lock on the removed file notices that the
    path no longer names it and starts over). A second writer waits, with a
    message, up to LOCK_TIMEOUT seconds, then fails with one line.
    """

    def __init__(self, path: str, description: str, timeout: float | None = None) -> None:
        self.path = path
        self.description = description
        self.timeout = LOCK_TIMEOUT if timeout is None else timeout
        self._fd: int | None = None
        self.created_dir = False

    def acquire(self) -> None:
        lock_path = os.path.join(self.path, LOCK_FILE)
        deadline = time.monotonic() + self.timeout
        told = False
        while True:
            try:
                os.mkdir(self.path)
                self.created_dir = True
            except FileExistsError:
                if not os.path.isdir(self.path):
                    raise UsageError(f"{self.description}: exists and is not a directory") from None
            except OSError as e:
                raise ZconvError(f"{self.description}: cannot create the layout directory: {e.strerror}") from None
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
            except FileNotFoundError:
                continue  # the directory was removed meanwhile (a failed first write): start over
            except OSError as e:
                raise ZconvError(f"{self.description}: cannot create the lock file {lock_path}: {e.strerror}") from None
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if not told:
                            log.warning(f"{self.description}: another zconv run is writing this layout; waiting for it")
                            told = True
                        if time.monotonic() > deadline:
                            raise ZconvError(
                                f"{self.description}: the layout is busy (another zconv run holds {lock_path} "
                                f"for more than {self.timeout:.0f} s)"
                            ) from None
                        time.sleep(0.05)
                try:
                    same = os.stat(lock_path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                self._fd = fd
                return
            os.close(fd)  # the previous holder removed the file: lock the new one

    def release(self, remove_dir: bool = False) -> None:
        if self._fd is None:
            return
        try:
            if remove_dir:
                shutil.rmtree(self.path, ignore_errors=True)
            else:
                try:
                    os.unlink(os.path.join(self.path, LOCK_FILE))
                except FileNotFoundError:
                    pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> LayoutLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def blob_relpath(digest: str) -> str:
    algo, hexpart = split_digest(digest)
    return f"blobs/{algo}/{hexpart}"


def _parse_layout_index(data: bytes, where: str) -> list[Descriptor]:
    doc = load_json(data, f"{where}: index.json", max_size=MAX_MANIFEST_SIZE)
    if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
        raise BadInputError(f"{where}: index.json has no manifests list")
    if doc.get("schemaVersion") != 2:
        raise BadInputError(f"{where}: index.json has unsupported schemaVersion {doc.get('schemaVersion')!r:.40}")
    return [Descriptor.from_dict(m, f"{where} index.json entry {i}") for i, m in enumerate(doc["manifests"])]


class _LayoutReader(ImageSource):
    """Common logic of layout sources; subclasses say how to open a file of the layout."""

    def __init__(self, tag: str | None, description: str) -> None:
        self.description = description
        self.reference_tag = tag
        self._entries: list[Descriptor] = []

    # -- to implement
    def _open(self, relpath: str) -> BinaryIO:  # raises FileNotFoundError
        raise NotImplementedError

    def _load(self) -> None:
        try:
            with self._open(INDEX_FILE) as f:
                data = f.read(MAX_MANIFEST_SIZE + 1)
        except FileNotFoundError:
            raise BadInputError(f"{self.description}: not an OCI layout (index.json is missing)") from None
        if len(data) > MAX_MANIFEST_SIZE:
            raise BadInputError(f"{self.description}: index.json is larger than {MAX_MANIFEST_SIZE} bytes")
        self._entries = _parse_layout_index(data, self.description)

    def list_tags(self) -> list[str]:
        return sorted({d.ref_name for d in self._entries if d.ref_name})

    def _match(self, tag: str) -> Descriptor | None:
        name, digest = parse_tag_or_digest(tag)
        if digest is not None:
            for d in self._entries:
                if d.digest == digest:
                    return d
            # Any manifest in the layout may be named by digest.
            return None
        assert name is not None  # parse_tag_or_digest gives a tag whenever it gives no digest
        hits = [d for d in self._entries if d.ref_name == name]
        if not hits:
            # podman/buildah archives name entries "localhost/app:1" or "docker.io/library/x:tag".
            hits = [d for d in self._entries if d.ref_name and d.ref_name.rsplit("/", 1)[-1].endswith(":" + name)]
            if len(hits) > 1:
                raise BadInputError(
                    f"{self.description}: tag {name!r} matches several images "
                    f"({', '.join(sorted(d.ref_name or '' for d in hits))}); name one exactly"
                )
        if len(hits) > 1:
            raise BadInputError(f"{self.description}: index.json has several entries named {name!r}")
        return hits[0] if hits else None

    def resolve(self, tag: str) -> Descriptor:
        d = self._match(tag)
        if d is None:
            tags = self.list_tags()
            have = f"tags here: {', '.join(tags)}" if tags else "no tagged images here"
            raise BadInputError(f"{self.description}: no image tagged {tag!r} ({have})")
        return d

    def targets(self) -> list[tuple[str | None, Descriptor]]:
        if self.reference_tag is not None:
            return [(self.reference_tag, self.resolve(self.reference_tag))]
        if not self._entries:
            raise BadInputError(f"{self.description}: index.json lists no images")
        return [(d.ref_name, d) for d in self._entries]

    def get_manifest(self, desc: Descriptor) -> bytes:
        if desc.size > MAX_MANIFEST_SIZE:
            raise BadInputError(
                f"{self.description}: manifest {short(desc.digest)} is {desc.size} bytes, over the {MAX_MANIFEST_SIZE} limit"
            )
        try:
            with self._open(blob_relpath(desc.digest)) as f:
                data = f.read(desc.size + 1)
        except FileNotFoundError:
            raise BadInputError(f"{self.description}: manifest {desc.digest} is missing from the layout") from None
        return verify_bytes(data, desc, f"{self.description}: manifest {short(desc.digest)}")

    def open_blob(self, desc: Descriptor) -> VerifyingReader:
        try:
            f = self._open(blob_relpath(desc.digest))
        except FileNotFoundError:
            raise BadInputError(f"{self.description}: blob {desc.digest} is missing from the layout") from None
        return VerifyingReader(f, desc.digest, desc.size, f"{self.description}: blob {short(desc.digest)}")


class LayoutSource(_LayoutReader):
    def __init__(self, path: str, tag: str | None = None, description: str | None = None) -> None:
        super().__init__(tag, description or f"oci:{path}")
        self.path = path
        self._warned: set[str] = set()
        if not os.path.isdir(path):
            raise BadInputError(f"{self.description}: no such directory")
        self._check_layout_file()
        self._load()

    def _check_layout_file(self) -> None:
        """oci-layout, when there, must be a small regular file holding a JSON object."""
        try:
            with self._open(LAYOUT_FILE) as f:
                data = f.read(MAX_LAYOUT_FILE_SIZE + 1)
        except FileNotFoundError:
            return  # older tools did not always write it; index.json decides
        doc = load_json(data, f"{self.description}: {LAYOUT_FILE}", max_size=MAX_LAYOUT_FILE_SIZE)
        if not isinstance(doc, dict):
            raise BadInputError(f"{self.description}: {LAYOUT_FILE} is not a JSON object")

    def _open(self, relpath: str) -> BinaryIO:
        """Every file of the layout is opened here: regular files only (a FIFO or device never is)."""
        root = None if relpath in self._warned else self.path
        self._warned.add(relpath)
        return open_regular(os.path.join(self.path, relpath), f"{self.description}: {relpath}", root)

    def read_blob_ranges(self, desc: Descriptor, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        return [self.read_blob_range(desc, offset, length) for offset, length in ranges]  # seeks

    def read_blob_range(self, desc: Descriptor, offset: int, length: int) -> bytes:
        self.check_range(desc, offset, length)
        try:
            with self._open(blob_relpath(desc.digest)) as f:
                f.seek(offset)
                data = f.read(length)
        except FileNotFoundError:
            raise BadInputError(f"{self.description}: blob {desc.digest} is missing from the layout") from None
        if len(data) != length:
            raise BadInputError(f"{self.description}: blob {short(desc.digest)} is truncated")
        return data


# ------------------------------------------------------------------ tar archives


class _MemberStream:
    """Reads [start, start+size) of a file with its own handle (several may be open at once)."""

    def __init__(self, path: str, start: int, size: int) -> None:
        self._f = open(path, "rb")
        self._f.seek(start)
        self._left = size

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self._left:
            n = self._left
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> _MemberStream:
        return self

    def __exit__(self, *a: Any) -> None:
        self.close()


class TarIndex:
    """Member name -> (data offset, size) of an uncompressed tar, for random access.

    Names are normalised (no leading "./"). Only regular members can be
    opened: a link is followed only inside the archive and only to a regular
    member (docker save links duplicate layers), and a link that points out
    of the archive, a device, a FIFO or a directory is refused with one line
    when it is opened. Names climbing out with ".." are refused when the
    archive is read: docker/podman/skopeo never write them.
    """

    def __init__(self, path: str, description: str) -> None:
        self.path = path
        self.description = description
        self.members: dict[str, tuple[int, int]] = {}
        self.symlinks: dict[str, str] = {}  # name -> target, relative to the member's directory
        self.hardlinks: dict[str, str] = {}  # name -> target, relative to the archive root
        self.others: dict[str, str] = {}  # name -> what it is ("a FIFO", ...)
        try:
            with open_regular(path, description) as f:
                head = f.read(4)
                size = os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            raise BadInputError(f"{description}: no such file") from None
        if head[:2] == b"\x1f\x8b" or head == b"\x28\xb5\x2f\xfd":
            raise BadInputError(f"{description}: archive is compressed; decompress it first (gunzip / zstd -d)")
        try:
            with tarfile.open(path, "r:") as tf:
                for m in tf:
                    name = _norm_member(m.name, description)
                    if name is None:
                        continue
                    self.members.pop(name, None)
                    self.symlinks.pop(name, None)
                    self.hardlinks.pop(name, None)
                    self.others.pop(name, None)
                    if m.isreg():
                        if m.sparse:
                            raise BadInputError(f"{description}: member {m.name!r} is a sparse file")
                        self.members[name] = (m.offset_data, m.size)
                    elif m.issym():
                        self.symlinks[name] = m.linkname
                    elif m.islnk():
                        self.hardlinks[name] = m.linkname
                    else:
                        self.others[name] = _MEMBER_KINDS.get(m.type, f"of tar type {m.type!r}")
        except tarfile.TarError as e:
            raise BadInputError(f"{description}: not a valid tar archive ({e})") from None
        for name, (off, n) in self.members.items():
            if off + n > size:
                raise BadInputError(f"{description}: archive is truncated (member {name!r} ends past the end)")

    def _resolve(self, name: str) -> str:
        """The regular member `name` designates, following links inside the archive."""
        start = name
        for _ in range(16):
            if name in self.members:
                return name
            if name in self.others:
                raise BadInputError(f"{self.description}: member {start!r} is {self.others[name]}, not a regular file")
            if name in self.symlinks:
                target = self.symlinks[name]
                joined = os.path.normpath(os.path.join(os.path.dirname(name), target))
            elif name in self.hardlinks:
                target = self.hardlinks[name]
                joined = os.path.normpath(target)
            else:
                raise FileNotFoundError(start)
            if target.startswith("/") or joined == ".." or joined.startswith("../"):
                raise BadInputError(
                    f"{self.description}: member {start!r} is a link out of the archive (to {target!r})"
                )
            name = _norm_member(joined, self.description) or ""
        raise BadInputError(f"{self.description}: member {start!r} is a link chain that does not end")

    def open(self, name: str) -> BinaryIO:
        name = self._resolve(_norm_member(name, self.description) or "")
        off, size = self.members[name]
        return _MemberStream(self.path, off, size)  # type: ignore[return-value]  # a file-like reader

    def has(self, name: str) -> bool:
        return any(name in d for d in (self.members, self.symlinks, self.hardlinks, self.others))

    def size(self, name: str) -> int:
        return self.members[self._resolve(_norm_member(name, self.description) or "")][1]


_MEMBER_KINDS = {
    tarfile.DIRTYPE: "a directory",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.CONTTYPE: "a contiguous file",
}


def _norm_member(name: str, description: str) -> str | None:
    n = name
    while n.startswith("./"):
        n = n[2:]
    n = n.rstrip("/")
    if not n or n == ".":
        return None
    if n.startswith("/") or ".." in n.split("/"):
        raise BadInputError(f"{description}: member name {name!r} climbs out of the archive")
    return n


class OciArchiveSource(_LayoutReader):
    def __init__(self, path: str, tag: str | None = None, description: str | None = None) -> None:
        super().__init__(tag, description or f"oci-archive:{path}")
        self.path = path
        self._tar = TarIndex(path, self.description)
        if not self._tar.has(INDEX_FILE):
            raise BadInputError(f"{self.description}: not an OCI archive (index.json is missing)")
        self._load()

    def _open(self, relpath: str) -> BinaryIO:
        return self._tar.open(relpath)


# ------------------------------------------------------------------ writing


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def layout_index_bytes(entries: Iterable[Descriptor]) -> bytes:
    return canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [d.to_dict() for d in entries]})


class LayoutSink(ImageSink):
    def __init__(self, path: str, tag: str | None = None, description: str | None = None) -> None:
        self.path = os.path.abspath(path)
        self.description = description or f"oci:{path}"
        self.reference_tag = tag
        if os.path.exists(self.path):
            if not os.path.isdir(self.path):
                raise UsageError(f"{self.description}: exists and is not a directory")
            names = set(os.listdir(self.path)) - {LOCK_FILE}
            if names and INDEX_FILE not in names and LAYOUT_FILE not in names:
                raise UsageError(f"{self.description}: directory exists, is not empty and is not an OCI layout")
        self._stage_dir = _Stage(self.path, self.description)
        self._stage = self._stage_dir.path
        self._tags: list[tuple[str | None, Descriptor]] = []
        self._staged: set[str] = set()
        self._done = False

    def temp_dir(self) -> str:
        return self._stage

    def _final(self, digest: str) -> str:
        return os.path.join(self.path, blob_relpath(digest))

    def _staged_path(self, digest: str) -> str:
        return os.path.join(self._stage, blob_relpath(digest))

    def has_blob(self, desc: Descriptor) -> bool:
        if desc.digest in self._staged:
            return True
        try:
            st = os.stat(self._final(desc.digest))
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == desc.size

    def put_blob(self, desc: Descriptor, stream: BinaryIO) -> None:
        if self.has_blob(desc):
            while stream.read(1 << 20):  # the caller may rely on the stream being consumed (verification)
                pass
            return
        fd, tmp = tempfile.mkstemp(dir=self._stage, prefix=".blob-")
        try:
            with os.fdopen(fd, "wb") as f:
                copy_verified(stream, f, desc, self.description)
            self._place(desc, tmp)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def put_blob_file(self, desc: Descriptor, path: str) -> None:
        # The caller computed the digest while writing the file; check the size.
        size = os.path.getsize(path)
        if size != desc.size:
            raise ZconvError(
                f"{self.description}: blob {short(desc.digest)} file has {size} bytes, expected {desc.size}"
            )
        if self.has_blob(desc):
            os.unlink(path)
            return
        if os.path.dirname(os.path.abspath(path)) == self._stage or os.stat(path).st_dev == os.stat(self._stage).st_dev:
            self._place(desc, path)
        else:
            with open(path, "rb") as f:
                self.put_blob(desc, f)
            os.unlink(path)

    def _place(self, desc: Descriptor, tmp: str) -> None:
        dst = self._staged_path(desc.digest)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
        self._staged.add(desc.digest)

    def put_manifest(self, desc: Descriptor, data: bytes) -> None:
        verify_bytes(data, desc, f"{self.description}: manifest {short(desc.digest)}")
        if self.has_blob(desc):
            return
        fd, tmp = tempfile.mkstemp(dir=self._stage, prefix=".blob-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        self._place(desc, tmp)

    def tag(self, tag: str | None, desc: Descriptor) -> None:
        self._tags.append((tag, desc))

    def _entries(self, existing: list[Descriptor]) -> list[Descriptor]:
        new: list[Descriptor] = []
        for tag, desc in self._tags:
            drop = [REF_NAME_ANNOTATION]
            d = desc.with_annotations({REF_NAME_ANNOTATION: tag} if tag else {}, drop=drop)
            new.append(d)
        new_tags = {d.ref_name for d in new if d.ref_name}
        new_untagged = {d.digest for d in new if not d.ref_name}
        kept = [
            d
            for d in existing
            if not (d.ref_name and d.ref_name in new_tags) and not (not d.ref_name and d.digest in new_untagged)
        ]
        return kept + new

    def _read_index(self) -> list[Descriptor]:
        index_path = os.path.join(self.path, INDEX_FILE)
        try:
            with open_regular(index_path, f"{self.description}: {INDEX_FILE}") as f:
                data = f.read(MAX_MANIFEST_SIZE + 1)
        except FileNotFoundError:
            return []
        return _parse_layout_index(data, self.description)

    def _write_layout(self, existing: list[Descriptor]) -> None:
        """oci-layout first (the directory is a layout from then on), the blobs, index.json last."""
        root = self.path
        if not os.path.exists(os.path.join(root, LAYOUT_FILE)):
            write_file_atomic(os.path.join(root, LAYOUT_FILE), LAYOUT_CONTENT)
        for digest in sorted(self._staged):
            dst = os.path.join(root, blob_relpath(digest))
            try:
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.replace(self._staged_path(digest), dst)
            except OSError as e:
                raise ZconvError(
                    f"{self.description}: cannot move blob {short(digest)} into place: {e.strerror}"
                ) from None
        for algo in {split_digest(d)[0] for d in self._staged}:
            _fsync_dir(os.path.join(root, "blobs", algo))
        write_file_atomic(os.path.join(root, INDEX_FILE), layout_index_bytes(self._entries(existing)))
        _fsync_dir(root)

    def _remove_leftovers(self) -> None:
        """Under the lock: staging directories of killed runs, and their half-written index files."""
        for stale in remove_stale_stages(self.path):
            log.debug("removed %s, left by a killed run", stale)
        try:
            names = os.listdir(self.path)
        except OSError:
            return
        for name in names:
            if name.startswith((f".tmp-{INDEX_FILE}-", f".tmp-{LAYOUT_FILE}-")):
                try:
                    os.unlink(os.path.join(self.path, name))
                except OSError:
                    pass

    def commit(self) -> None:
        if self._done:
            return
        lock = LayoutLock(self.path, self.description)
        lock.acquire()
        written = False
        try:
            self._remove_leftovers()
            existing = self._read_index()
            self._write_layout(existing)
            written = True
        finally:
            # A layout this run created and could not finish is removed again (nothing else was in it).
            lock.release(remove_dir=lock.created_dir and not written)
        self._stage_dir.remove()
        self._done = True

    def abort(self) -> None:
        if not self._done:
            self._stage_dir.remove()
            self._done = True

    def close(self) -> None:
        self.abort()


def _tar_layout(root: str, out: BinaryIO) -> None:
    """Tar a layout directory deterministically (sorted names, zero times and owners)."""

    def add(tf: tarfile.TarFile, rel: str) -> None:
        full = os.path.join(root, rel)
        ti = tarfile.TarInfo(rel)
        ti.mtime = 0
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        if os.path.isdir(full):
            ti.type = tarfile.DIRTYPE
            ti.mode = 0o755
            tf.addfile(ti)
            for name in sorted(os.listdir(full)):
                if not name.startswith("."):
                    add(tf, f"{rel}/{name}")
        else:
            ti.mode = 0o644
            ti.size = os.path.getsize(full)
            with open(full, "rb") as f:
                tf.addfile(ti, f)

    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for name in (LAYOUT_FILE, INDEX_FILE):
            add(tf, name)
        add(tf, "blobs")


class OciArchiveSink(ImageSink):
    """Writes a whole new archive (an existing one at PATH is replaced on commit, like skopeo)."""

    def __init__(self, path: str, tag: str | None = None, description: str | None = None) -> None:
        self.path = os.path.abspath(path)
        self.description = description or f"oci-archive:{path}"
        self.reference_tag = tag
        if os.path.isdir(self.path):
            raise UsageError(f"{self.description}: is a directory (use oci:{path} for a layout directory)")
        self._work_dir = _Stage(self.path, self.description)
        self._work = self._work_dir.path
        self._layout = LayoutSink(os.path.join(self._work, "layout"), tag, self.description)
        self._done = False

    def temp_dir(self) -> str:
        return self._layout.temp_dir()

    def has_blob(self, desc: Descriptor) -> bool:
        return self._layout.has_blob(desc)

    def put_blob(self, desc: Descriptor, stream: BinaryIO) -> None:
        self._layout.put_blob(desc, stream)

    def put_blob_file(self, desc: Descriptor, path: str) -> None:
        self._layout.put_blob_file(desc, path)

    def put_manifest(self, desc: Descriptor, data: bytes) -> None:
        self._layout.put_manifest(desc, data)

    def tag(self, tag: str | None, desc: Descriptor) -> None:
        self._layout.tag(tag, desc)

    def commit(self) -> None:
        if self._done:
            return
        remove_stale_stages(self.path)  # work directories of killed runs (each holds its temp archive)
        self._layout.commit()
        fd, tmp = tempfile.mkstemp(dir=self._work, prefix=".archive-")
        try:
            with os.fdopen(fd, "wb") as f:
                _tar_layout(os.path.join(self._work, "layout"), f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        finally:
            self._work_dir.remove()
        self._done = True

    def abort(self) -> None:
        if not self._done:
            self._layout.abort()
            self._work_dir.remove()
            self._done = True

    def close(self) -> None:
        self.abort()
