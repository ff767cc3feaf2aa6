"""Images as data: descriptors, manifests, indexes, media types, digests.

And the two interfaces every place an image can live implements:

* `ImageSource`: what the reference designates (tags -> top-level descriptors),
  manifest/index bytes by digest, blob streams that verify size and digest
  while they are read.
* `ImageSink`: blobs (skipping those already present), manifests by digest,
  and tags, which are written only by `commit()` so that no reader ever sees
  a tag that points at a manifest with missing blobs.

The transformation (converter/convert.py) only talks to these interfaces; a
new transport never touches it, and this module knows nothing of
zstd:chunked internals (the zstd layer media types and the index annotation
come from converter/chunked/format.py, the one place format knowledge lives).
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, Iterable, Mapping, Sequence

from converter.chunked.format import INDEX_ZSTD_ANNOTATION as INDEX_ZSTD_ANNOTATION  # re-exported: image code uses it
from converter.chunked.format import (
    LAYER_MEDIA_TYPE_GZIP,
    LAYER_MEDIA_TYPE_ND_ZSTD,
    LAYER_MEDIA_TYPE_TAR,
    LAYER_MEDIA_TYPE_ZSTD,
)
from converter.errors import BadInputError, UsageError
from converter.jsonload import MAX_INT64, load_json

# ---------------------------------------------------------------- media types

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
# The layer media types zstd:chunked cares about are format knowledge (chunked/format.py).
OCI_LAYER_TAR = LAYER_MEDIA_TYPE_TAR
OCI_LAYER_GZIP = LAYER_MEDIA_TYPE_GZIP
OCI_LAYER_ZSTD = LAYER_MEDIA_TYPE_ZSTD
OCI_LAYER_ND_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_ND_ZSTD = LAYER_MEDIA_TYPE_ND_ZSTD

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"  # seen from some tools
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)

# Layer media type -> compression it declares ("gzip", "zstd", "none").
LAYER_TYPES: dict[str, str] = {
    OCI_LAYER_TAR: "none",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    OCI_LAYER_ND_TAR: "none",
    OCI_LAYER_ND_GZIP: "gzip",
    OCI_LAYER_ND_ZSTD: "zstd",
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_LAYER_TAR: "none",
    DOCKER_LAYER_FOREIGN_GZIP: "gzip",
}
# Foreign / non-distributable layers must not be re-uploaded or rewritten.
FOREIGN_LAYER_TYPES = (OCI_LAYER_ND_TAR, OCI_LAYER_ND_GZIP, OCI_LAYER_ND_ZSTD, DOCKER_LAYER_FOREIGN_GZIP)

# Annotation tags use in OCI layouts (index.json) and that podman's
# add_compression puts on index entries of zstd instances.
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
# (INDEX_ZSTD_ANNOTATION, the add_compression one, comes from chunked/format.py.)

# Manifests and configs are small; refuse to read absurd ones into memory.
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
MAX_CONFIG_SIZE = 64 * 1024 * 1024


# -------------------------------------------------------------------- digests

_DIGEST_RE = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")


def check_digest(digest: object, what: str = "digest") -> str:
    """Return `digest` if it is a well-formed sha256/sha512 digest, else BadInputError.

    Well-formedness matters beyond neatness: the hex part becomes a file name
    in layouts, so anything else (like `../`) must never get through.
    """
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise BadInputError(f"{what}: malformed digest {digest!r}")
    return digest


def split_digest(digest: str) -> tuple[str, str]:
    algo, _, hexpart = check_digest(digest).partition(":")
    return algo, hexpart


def new_hasher(digest: str) -> hashlib._Hash:
    return hashlib.new(split_digest(digest)[0])


def copy_verified(stream: BinaryIO, out: BinaryIO, desc: Descriptor, what: str) -> None:
    """Copy a blob stream to `out`, checking it against its descriptor.

    Stops as soon as the stream runs past the descriptor's size (a hostile or
    broken source cannot fill the disk) and raises BadInputError naming `what`
    when size or digest differ.
    """
    h = new_hasher(desc.digest)
    n = 0
    while True:
        buf = stream.read(1 << 20)
        if not buf:
            break
        n += len(buf)
        if n > desc.size:
            raise BadInputError(f"{what}: blob {short(desc.digest)} is larger than its {desc.size}-byte descriptor")
        h.update(buf)
        out.write(buf)
    got = f"{split_digest(desc.digest)[0]}:{h.hexdigest()}"
    if n != desc.size or got != desc.digest:
        raise BadInputError(f"{what}: blob {short(desc.digest)} does not match its descriptor ({n} bytes, {got})")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def short(digest: str) -> str:
    """`sha256:0123456789ab` for messages."""
    return digest[:19] if digest.startswith("sha256:") else digest[:26]


# ---------------------------------------------------------------- canonical JSON


def canonical_json(obj: Any) -> bytes:
    """Deterministic compact JSON: same object -> same bytes -> same digest.

    Key order is whatever the dict has (our `to_dict` methods build them in a
    fixed order); annotation maps are sorted when they are built.
    """
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _sorted_map(m: Mapping[str, str] | None) -> dict[str, str]:
    return {k: m[k] for k in sorted(m)} if m else {}


# ------------------------------------------------------- typed JSON fields
# Every field we use is checked where it is parsed: a hostile document gets
# one BadInputError line naming the field, never a TypeError later on.


def _brief(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 40 else r[:37] + "..."


def _opt_str(d: Mapping[str, Any], key: str, where: str) -> str | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise BadInputError(f"{where}: field {key!r} must be a string, not {_brief(v)}")
    return v


def _str_list(d: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    v = d.get(key)
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise BadInputError(f"{where}: field {key!r} must be a list of strings, not {_brief(v)}")
    return tuple(v)


def _annotations(d: Mapping[str, Any], where: str) -> dict[str, str]:
    ann = d.get("annotations")
    if ann is None:
        return {}
    if not isinstance(ann, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ann.items()):
        raise BadInputError(f"{where}: annotations must map strings to strings")
    return _sorted_map(ann)


# ---------------------------------------------------------------- descriptors


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()
    features: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: Any, where: str = "platform") -> Platform:
        if not isinstance(d, Mapping):
            raise BadInputError(f"{where}: platform is not a JSON object")
        return cls(
            os=_opt_str(d, "os", where) or "",
            architecture=_opt_str(d, "architecture", where) or "",
            variant=_opt_str(d, "variant", where),
            os_version=_opt_str(d, "os.version", where),
            os_features=_str_list(d, "os.features", where),
            features=_str_list(d, "features", where),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant:
            out["variant"] = self.variant
        if self.features:
            out["features"] = list(self.features)
        return out

    def __str__(self) -> str:
        s = f"{self.os}/{self.architecture}"
        return f"{s}/{self.variant}" if self.variant else s


@dataclass(frozen=True, eq=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str = "descriptor") -> Descriptor:
        if not isinstance(d, Mapping):
            raise BadInputError(f"{where}: descriptor is not a JSON object")
        mt = d.get("mediaType")
        size = d.get("size")
        if not isinstance(mt, str) or not mt:
            raise BadInputError(f"{where}: descriptor without mediaType")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_INT64:
            raise BadInputError(f"{where}: descriptor with invalid size {_brief(size)}")
        plat = d.get("platform")
        return cls(
            media_type=mt,
            digest=check_digest(d.get("digest"), where),
            size=size,
            annotations=_annotations(d, where),
            platform=Platform.from_dict(plat, f"{where} platform") if plat is not None else None,
            urls=_str_list(d, "urls", where),
            artifact_type=_opt_str(d, "artifactType", where),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = _sorted_map(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_dict()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    def with_annotations(self, extra: Mapping[str, str], drop: Iterable[str] = ()) -> Descriptor:
        ann = {k: v for k, v in self.annotations.items() if k not in set(drop)}
        ann.update(extra)
        return replace(self, annotations=_sorted_map(ann))

    @property
    def ref_name(self) -> str | None:
        return self.annotations.get(REF_NAME_ANNOTATION)


# ------------------------------------------------------ manifests and indexes


def _document_dict(doc: Manifest | Index, body: dict[str, Any]) -> dict[str, Any]:
    """The JSON of a manifest or index, keys in the order they are written:
    schemaVersion, mediaType, artifactType, `body`, subject, annotations."""
    out: dict[str, Any] = {"schemaVersion": 2, "mediaType": doc.media_type}
    if doc.artifact_type:
        out["artifactType"] = doc.artifact_type
    out.update(body)
    if doc.subject is not None:
        out["subject"] = doc.subject.to_dict()
    if doc.annotations:
        out["annotations"] = _sorted_map(doc.annotations)
    return out


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI or Docker schema 2, `media_type` tells which)."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)
    subject: Descriptor | None = None
    artifact_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _document_dict(
            self,
            {"config": self.config.to_dict(), "layers": [layer.to_dict() for layer in self.layers]},
        )

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())


@dataclass(frozen=True)
class Index:
    """An image index (OCI) or manifest list (Docker)."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)
    subject: Descriptor | None = None
    artifact_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _document_dict(self, {"manifests": [m.to_dict() for m in self.manifests]})

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())


def descriptor_for(media_type: str, data: bytes, **kw: Any) -> Descriptor:
    return Descriptor(media_type=media_type, digest=sha256_digest(data), size=len(data), **kw)


def _load_json(data: bytes, where: str, max_size: int | None = MAX_MANIFEST_SIZE) -> dict[str, Any]:
    doc = load_json(data, where, max_size=max_size)
    if not isinstance(doc, dict):
        raise BadInputError(f"{where}: JSON document is not an object")
    return doc


def parse_config(data: bytes, media_type: str, where: str) -> dict[str, Any] | None:
    """The config as a JSON object, for image configs and other JSON media types; None for the rest.

    An image config that is not a JSON object is an error (exit 2): consumers
    parse it, so a conversion must not pass it on as if it were fine.
    """
    if media_type in (OCI_CONFIG, DOCKER_CONFIG) or media_type.endswith(("+json", "/json")):
        return _load_json(data, where, max_size=MAX_CONFIG_SIZE)
    return None


def detect_media_type(doc: Mapping[str, Any], hint: str | None = None) -> str:
    mt = doc.get("mediaType")
    if isinstance(mt, str) and mt:
        return mt
    if hint:
        return hint
    # mediaType is optional in OCI manifests and indexes.
    if "manifests" in doc:
        return OCI_INDEX
    if "layers" in doc or "config" in doc:
        return OCI_MANIFEST
    return ""


def parse_manifest_or_index(data: bytes, hint: str | None = None, where: str = "manifest") -> Manifest | Index:
    """Parse manifest or index bytes; `hint` is the media type of the descriptor that pointed here."""
    doc = _load_json(data, where)
    mt = detect_media_type(doc, hint)
    if mt in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise BadInputError(
            f"{where}: Docker schema 1 manifests are not supported (re-push the image with a current tool)"
        )
    if doc.get("schemaVersion") != 2:
        raise BadInputError(f"{where}: unsupported schemaVersion {_brief(doc.get('schemaVersion'))}")
    ann = _annotations(doc, where)
    subject = Descriptor.from_dict(doc["subject"], f"{where} subject") if doc.get("subject") is not None else None
    artifact_type = _opt_str(doc, "artifactType", where)
    if mt in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise BadInputError(f"{where}: index without a manifests list")
        return Index(
            media_type=mt,
            manifests=tuple(Descriptor.from_dict(m, f"{where} entry {i}") for i, m in enumerate(entries)),
            annotations=ann,
            subject=subject,
            artifact_type=artifact_type,
        )
    if mt in MANIFEST_TYPES:
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise BadInputError(f"{where}: manifest without a layers list")
        return Manifest(
            media_type=mt,
            config=Descriptor.from_dict(doc.get("config"), f"{where} config"),
            layers=tuple(Descriptor.from_dict(d, f"{where} layer {i}") for i, d in enumerate(layers)),
            annotations=ann,
            subject=subject,
            artifact_type=artifact_type,
        )
    raise BadInputError(f"{where}: unknown manifest media type {mt!r}")


# ------------------------------------------------------------ verified reading


class VerifyingReader(io.RawIOBase):
    """Wraps a blob stream; hashes and counts while it is read.

    Raises BadInputError as soon as more than `size` bytes arrive, and at EOF
    when fewer arrived or the digest differs. `finish()` drains what the
    consumer left unread and runs the same checks, so a consumer that stops
    early (a decompressor at the end of its frame) cannot skip them.
    """

    def __init__(self, raw: BinaryIO, digest: str, size: int, what: str) -> None:
        super().__init__()
        self._raw = raw
        self._digest = digest
        self._size = size
        self.what = what
        self._hash = new_hasher(digest)
        self._count = 0
        self._verified = False

    def readable(self) -> bool:
        return True

    def _account(self, data: bytes) -> None:
        self._count += len(data)
        if self._count > self._size:
            raise BadInputError(f"{self.what}: blob is larger than the {self._size} bytes its descriptor declares")
        self._hash.update(data)

    def readinto(self, b: Any) -> int:
        data = self._raw.read(len(b))
        if not data:
            self._check_end()
            return 0
        self._account(data)
        n = len(data)
        b[:n] = data
        return n

    def read(self, size: int = -1) -> bytes:
        """Like a buffered read: returns `size` bytes unless EOF comes first."""
        if size is None or size < 0:
            return self.readall()
        parts = []
        while size > 0:
            data = self._raw.read(size)
            if not data:
                self._check_end()
                break
            self._account(data)
            parts.append(data)
            size -= len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readall(self) -> bytes:
        parts: list[bytes] = []
        while True:
            data = self.read(1 << 20)
            if not data:
                return b"".join(parts)
            parts.append(data)

    def _check_end(self) -> None:
        if self._verified:
            return
        if self._count < self._size:
            raise BadInputError(f"{self.what}: blob is truncated ({self._count} of {self._size} bytes)")
        got = f"{self._digest.split(':')[0]}:{self._hash.hexdigest()}"
        if got != self._digest:
            raise BadInputError(f"{self.what}: blob digest mismatch (descriptor says {self._digest}, content is {got})")
        self._verified = True

    def finish(self) -> None:
        while self.read(1 << 20):
            pass
        self._check_end()

    @property
    def verified(self) -> bool:
        return self._verified

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


def verify_bytes(data: bytes, desc: Descriptor, what: str) -> bytes:
    if len(data) != desc.size:
        raise BadInputError(f"{what}: size {len(data)} does not match the descriptor's {desc.size}")
    h = new_hasher(desc.digest)
    h.update(data)
    got = f"{desc.digest.split(':')[0]}:{h.hexdigest()}"
    if got != desc.digest:
        raise BadInputError(f"{what}: digest mismatch (descriptor says {desc.digest}, content is {got})")
    return data


# ------------------------------------------------------------------ transport options


# Blobs above this go up to registries in PATCH chunks (here, not in the registry package, so that
# command-line defaults can name it without importing the HTTP stack).
DEFAULT_CHUNK_SIZE = 32 * 1024 * 1024


@dataclass(frozen=True)
class TransportOptions:
    """Options that only some transports use (today: registries)."""

    creds: str | None = None  # "USER:PASS"
    tls_verify: bool = True
    cert_dir: str | None = None
    auth_file: str | None = None
    plain_http: bool | None = None  # None: only for localhost/127.0.0.1
    timeout: float | None = None  # seconds a registry request may go without progress (None: 60)
    # converter.image.registry.RetryPolicy from --retry-times/--retry-delay (None: its defaults)
    retry: Any = None


# ------------------------------------------------------------------ interfaces


@dataclass(frozen=True)
class RangeCheck:
    """Whether a place answers HTTP Range requests correctly (partial pulls need them)."""

    ok: bool
    message: str


class ImageSource(ABC):
    """A place images are read from. Use as a context manager (close() releases temp dirs/sessions)."""

    #: How the user wrote the reference, for messages ("oci:/tmp/img:v1").
    description: str = ""
    #: The tag (or "@sha256:..." digest) the reference named, None if none.
    reference_tag: str | None = None
    #: Blobs come over the network (a registry), not from files read by seeking.
    remote: bool = False

    def check_range_requests(self, desc: Descriptor) -> RangeCheck | None:
        """Does this place answer HTTP Range requests correctly for the blob? None where that does not apply."""
        return None

    @abstractmethod
    def list_tags(self) -> list[str]:
        """All tags this place holds for the referenced repository/layout, sorted."""

    @abstractmethod
    def resolve(self, tag: str) -> Descriptor:
        """Descriptor (media type, digest, size) of the manifest or index `tag` points at.

        `tag` may also be "@sha256:..." / "sha256:..." for by-digest references.
        Raises BadInputError (or RegistryError) naming the tag when it does not exist.
        """

    def targets(self) -> list[tuple[str | None, Descriptor]]:
        """What the reference designates: [(tag, top-level descriptor)].

        With a tag: just that one. Without: every tag (transports may add
        untagged entries, as OCI layouts without ref names have).
        """
        if self.reference_tag is not None:
            return [(self.reference_tag, self.resolve(self.reference_tag))]
        tags = self.list_tags()
        if not tags:
            raise BadInputError(f"{self.description}: no images (no tags) found")
        return [(t, self.resolve(t)) for t in tags]

    @abstractmethod
    def get_manifest(self, desc: Descriptor) -> bytes:
        """Manifest or index bytes for `desc`, verified against its digest and size."""

    @abstractmethod
    def open_blob(self, desc: Descriptor) -> VerifyingReader:
        """A fresh stream of the blob, verifying size and digest while it is read.

        May be called several times for the same blob (each call is a new stream).
        """

    def check_range(self, desc: Descriptor, offset: int, length: int) -> None:
        """BadInputError unless [offset, offset+length) lies within the blob (what every ranged read checks first)."""
        if offset < 0 or length < 0 or offset + length > desc.size:
            raise BadInputError(
                f"{self.description}: range {offset}+{length} outside blob {short(desc.digest)} of {desc.size} bytes"
            )

    def read_blob_range(self, desc: Descriptor, offset: int, length: int) -> bytes:
        """`length` bytes of the blob from `offset` (not digest-verified: it is a part).

        Used to read a zstd:chunked TOC without the whole layer. This default
        streams from the start; layouts seek, registries send a Range request.
        """
        self.check_range(desc, offset, length)
        with self.open_blob(desc) as r:
            remaining = offset
            while remaining:
                got = r.read(min(remaining, 1 << 20))
                if not got:
                    break
                remaining -= len(got)
            data = r.read(length)
        if len(data) != length:
            raise BadInputError(f"{self.description}: blob {short(desc.digest)} is truncated")
        return data

    def read_blob_ranges(self, desc: Descriptor, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of every (offset, length) of the blob, in the order given (not digest-verified).

        For many small reads at once (--reuse-from's frames). This default
        streams the blob once, up to the last byte asked, keeping only the
        asked bytes; layouts seek, registries send one GET with many ranges
        (multipart/byteranges).
        """
        for offset, length in ranges:
            self.check_range(desc, offset, length)
        spans: list[list[int]] = []  # the asked ranges merged, in blob order
        for offset, length in sorted(r for r in ranges if r[1] > 0):
            if spans and offset <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], offset + length)
            else:
                spans.append([offset, offset + length])
        got: list[tuple[int, bytes]] = []
        if spans:
            with self.open_blob(desc) as r:
                pos = 0
                for start, end in spans:
                    while pos < start:
                        skipped = len(r.read(min(start - pos, 1 << 20)) or b"")
                        if not skipped:
                            raise BadInputError(f"{self.description}: blob {short(desc.digest)} is truncated")
                        pos += skipped
                    data = r.read(end - start) or b""
                    if len(data) != end - start:
                        raise BadInputError(f"{self.description}: blob {short(desc.digest)} is truncated")
                    got.append((start, data))
                    pos = end
        out = []
        for offset, length in ranges:
            i = bisect.bisect_right(got, offset, key=lambda g: g[0]) - 1
            start, data = got[i] if length else (offset, b"")
            out.append(data[offset - start : offset - start + length])
        return out

    def read_blob(self, desc: Descriptor, limit: int = MAX_CONFIG_SIZE) -> bytes:
        """The whole (small) blob, verified; for configs and other JSON."""
        if desc.size > limit:
            raise BadInputError(
                f"{self.description}: blob {short(desc.digest)} is {desc.size} bytes, over the {limit} limit"
            )
        with self.open_blob(desc) as r:
            data = r.read(desc.size + 1)
            r.finish()
        return data

    def close(self) -> None:  # noqa: B027  (optional hook: sources that hold nothing open need no close)
        pass

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ImageSink(ABC):
    """A place images are written to.

    Nothing becomes visible under a tag before `commit()`. Until then blobs and
    manifests may be staged; `abort()` (also called by `__exit__` on an
    exception or without commit) removes what was staged, so a failed run
    leaves the destination as it was (registries keep unreferenced blobs,
    which no tag points at).
    """

    description: str = ""
    #: Tag the reference named (None: keep the source's tags).
    reference_tag: str | None = None

    def check_range_requests(self, desc: Descriptor) -> RangeCheck | None:
        """After the blob was written: is it served with correct HTTP Range answers? None where that does not apply."""
        return None

    @abstractmethod
    def has_blob(self, desc: Descriptor) -> bool:
        """True when the blob is already there (then put_blob can be skipped)."""

    def temp_dir(self) -> str | None:
        """Directory where the converter should create big temp files (None: system default).

        A layout sink returns a directory on the same filesystem, so that
        put_blob_file() is a rename.
        """
        return None

    @abstractmethod
    def put_blob(self, desc: Descriptor, stream: BinaryIO) -> None:
        """Store the blob read from `stream` (to its end); verifies digest and size."""

    def put_blob_file(self, desc: Descriptor, path: str) -> None:
        """Store the blob whose complete bytes are in file `path`; the sink may move the file away."""
        with open(path, "rb") as f:
            self.put_blob(desc, f)

    def put_blob_bytes(self, desc: Descriptor, data: bytes) -> None:
        self.put_blob(desc, io.BytesIO(data))

    def blob_location(self) -> tuple[str, str] | None:
        """(registry host, repository) a blob put here can later be mounted from; None where mounts do not exist."""
        return None

    def mount_from(self, desc: Descriptor, repositories: list[str]) -> bool:
        """Link a blob that other repositories of the same registry hold, without uploading it; True when done."""
        return False

    @abstractmethod
    def put_manifest(self, desc: Descriptor, data: bytes) -> None:
        """Store a manifest or index by digest (not under any tag yet).

        Callers put children before parents (layers, config, manifest, index).
        """

    @abstractmethod
    def tag(self, tag: str | None, desc: Descriptor) -> None:
        """Record that `tag` must point at `desc`; applied by commit().

        tag None: an untagged top-level entry (layouts only; registries refuse).
        """

    @abstractmethod
    def commit(self) -> None:
        """Make everything visible; tags last."""

    def abort(self) -> None:  # noqa: B027  (optional hook: a sink that stages nothing has nothing to remove)
        """Remove staged data; the destination stays as it was."""

    def close(self) -> None:  # noqa: B027  (optional hook: sinks that hold nothing open need no close)
        pass

    def __enter__(self) -> ImageSink:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            if exc_type is not None:
                self.abort()
        finally:
            self.close()


def parse_tag_or_digest(tag: str) -> tuple[str | None, str | None]:
    """ "@sha256:..." / "sha256:..." -> (None, digest); anything else -> (tag, None)."""
    t = tag[1:] if tag.startswith("@") else tag
    if _DIGEST_RE.match(t):
        return None, t
    if tag.startswith("@"):
        raise UsageError(f"malformed digest reference {tag!r}")
    return tag, None
