"""docker-archive:PATH[:NAME:TAG|:@N]: archives written by `docker save` and `podman save`.

The archive is a tar holding manifest.json

    [{"Config": "<file>", "RepoTags": ["name:tag", ...], "Layers": ["<file>", ...]}, ...]

with the config JSON and one (normally uncompressed) tar per layer. There are
no registry manifests in it, so this source synthesises a Docker schema 2
manifest per image: the config and layer descriptors get the sha256 and size
of the files (hashed once when the archive is opened), layer media types
follow the bytes (tar or gzip). Files are streamed from their offsets in the
archive; nothing is extracted.

As a destination it is refused: the format has no layer descriptors, so the
zstd:chunked annotations (which consumers need) would be lost.
"""

from __future__ import annotations

import hashlib
from typing import Any

from converter.errors import BadInputError, UsageError
from converter.image.layout import TarIndex
from converter.image.model import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_TAR,
    DOCKER_MANIFEST,
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    OCI_LAYER_ZSTD,
    Descriptor,
    ImageSink,
    ImageSource,
    Manifest,
    VerifyingReader,
    descriptor_for,
    parse_tag_or_digest,
    short,
    verify_bytes,
)
from converter.jsonload import load_json


def _normalise_name(name: str) -> str:
    """ "docker.io/library/x:1" and "x:1" are the same image name."""
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name


class _Image:
    def __init__(self, position: int, repo_tags: list[str], manifest_desc: Descriptor, manifest_bytes: bytes) -> None:
        self.position = position
        self.repo_tags = repo_tags
        self.desc = manifest_desc
        self.data = manifest_bytes


class DockerArchiveSource(ImageSource):
    def __init__(self, path: str, name: str | None = None, description: str | None = None) -> None:
        self.description = description or f"docker-archive:{path}"
        self.reference_tag = name
        self.path = path
        self._tar = TarIndex(path, self.description)
        self._blobs: dict[str, str] = {}  # digest -> member name
        self._images: list[_Image] = []
        self._load()

    # -- opening

    def _read_member(self, name: str, limit: int, what: str) -> bytes:
        try:
            with self._tar.open(name) as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise BadInputError(f"{self.description}: {what} {name!r} is missing from the archive") from None
        if len(data) > limit:
            raise BadInputError(f"{self.description}: {what} {name!r} is larger than {limit} bytes")
        return data

    def _hash_member(self, name: str, what: str) -> tuple[str, int, bytes]:
        h = hashlib.sha256()
        n = 0
        head = b""
        try:
            f = self._tar.open(name)
        except FileNotFoundError:
            raise BadInputError(f"{self.description}: {what} {name!r} is missing from the archive") from None
        with f:
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                if not head:
                    head = chunk[:4]
                h.update(chunk)
                n += len(chunk)
        return "sha256:" + h.hexdigest(), n, head

    def _load(self) -> None:
        raw = self._read_member("manifest.json", MAX_MANIFEST_SIZE, "file")
        doc = load_json(raw, f"{self.description}: manifest.json", max_size=MAX_MANIFEST_SIZE)
        if not isinstance(doc, list) or not doc:
            raise BadInputError(f"{self.description}: manifest.json does not list any image")
        hashed: dict[str, tuple[str, int, bytes]] = {}
        for pos, item in enumerate(doc):
            where = f"{self.description}: manifest.json image {pos}"
            if (
                not isinstance(item, dict)
                or not isinstance(item.get("Config"), str)
                or not isinstance(item.get("Layers"), list)
            ):
                raise BadInputError(f"{where}: needs Config and Layers")
            config_bytes = self._read_member(item["Config"], MAX_CONFIG_SIZE, "config")
            config_desc = descriptor_for(DOCKER_CONFIG, config_bytes)
            self._blobs[config_desc.digest] = item["Config"]
            config = load_json(config_bytes, f"{where}: config {item['Config']!r}", max_size=MAX_CONFIG_SIZE)
            rootfs = config.get("rootfs") if isinstance(config, dict) else None
            diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
            if not isinstance(diff_ids, list):
                raise BadInputError(f"{where}: config {item['Config']!r} has no rootfs.diff_ids")
            if len(diff_ids) != len(item["Layers"]):
                raise BadInputError(
                    f"{where}: {len(item['Layers'])} layers but the config lists {len(diff_ids)} diff_ids"
                )
            layers = []
            for i, member in enumerate(item["Layers"]):
                if not isinstance(member, str):
                    raise BadInputError(f"{where}: layer {i} is not a file name")
                if member not in hashed:
                    hashed[member] = self._hash_member(member, f"layer {i}")
                digest, size, head = hashed[member]
                if head[:2] == b"\x1f\x8b":
                    mt = DOCKER_LAYER_GZIP
                elif head == b"\x28\xb5\x2f\xfd":
                    mt = OCI_LAYER_ZSTD
                else:
                    mt = DOCKER_LAYER_TAR
                layers.append(Descriptor(mt, digest, size))
                self._blobs[digest] = member
            manifest = Manifest(DOCKER_MANIFEST, config_desc, tuple(layers))
            data = manifest.to_bytes()
            repo_tags = item.get("RepoTags")
            if repo_tags is not None and not isinstance(repo_tags, list):
                raise BadInputError(f"{where}: RepoTags is not a list")
            tags = [t for t in (repo_tags or []) if isinstance(t, str)]
            self._images.append(_Image(pos, tags, descriptor_for(DOCKER_MANIFEST, data), data))

    # -- ImageSource

    def list_tags(self) -> list[str]:
        return sorted({t for img in self._images for t in img.repo_tags})

    def _find(self, tag: str) -> _Image | None:
        if tag.startswith("@") and tag[1:].isdigit():
            n = int(tag[1:])
            return self._images[n] if n < len(self._images) else None
        _, digest = parse_tag_or_digest(tag)
        if digest is not None:
            return next((img for img in self._images if img.desc.digest == digest), None)
        want = _normalise_name(tag)
        hits = [img for img in self._images if any(_normalise_name(t) == want for t in img.repo_tags)]
        if not hits and ":" not in tag and "/" not in tag:
            # Just a tag: accept it when it names exactly one image.
            hits = [img for img in self._images if any(t.rsplit(":", 1)[-1] == tag for t in img.repo_tags)]
            if len(hits) > 1:
                raise BadInputError(f"{self.description}: tag {tag!r} matches several images; give NAME:TAG")
        return hits[0] if hits else None

    def resolve(self, tag: str) -> Descriptor:
        img = self._find(tag)
        if img is None:
            have = ", ".join(self.list_tags()) or "none"
            raise BadInputError(f"{self.description}: no image {tag!r} in the archive (names here: {have})")
        return img.desc

    def targets(self) -> list[tuple[str | None, Descriptor]]:
        if self.reference_tag is not None:
            return [
                (
                    self.reference_tag.rsplit(":", 1)[-1] if not self.reference_tag.startswith("@") else None,
                    self.resolve(self.reference_tag),
                )
            ]
        out: list[tuple[str | None, Descriptor]] = []
        for img in self._images:
            tag = img.repo_tags[0].rsplit(":", 1)[-1] if img.repo_tags else None
            out.append((tag, img.desc))
        return out

    def get_manifest(self, desc: Descriptor) -> bytes:
        for img in self._images:
            if img.desc.digest == desc.digest:
                return verify_bytes(img.data, desc, f"{self.description}: manifest {short(desc.digest)}")
        raise BadInputError(f"{self.description}: no manifest {desc.digest}")

    def open_blob(self, desc: Descriptor) -> VerifyingReader:
        member = self._blobs.get(desc.digest)
        if member is None:
            raise BadInputError(f"{self.description}: blob {desc.digest} is not in the archive")
        return VerifyingReader(self._tar.open(member), desc.digest, desc.size, f"{self.description}: {member}")


class DockerArchiveSink(ImageSink):
    def __init__(self, path: str, name: str | None = None, description: str | None = None) -> None:
        raise UsageError(
            f"{description or path}: docker-archive cannot be a destination (it has no layer descriptors, so the "
            "zstd:chunked annotations would be lost); write oci-archive:PATH or oci:PATH instead"
        )

    def has_blob(self, desc: Descriptor) -> bool:  # pragma: no cover - never constructed
        raise NotImplementedError

    def put_blob(self, desc: Descriptor, stream: Any) -> None:  # pragma: no cover
        raise NotImplementedError

    def put_manifest(self, desc: Descriptor, data: bytes) -> None:  # pragma: no cover
        raise NotImplementedError

    def tag(self, tag: str | None, desc: Descriptor) -> None:  # pragma: no cover
        raise NotImplementedError

    def commit(self) -> None:  # pragma: no cover
        raise NotImplementedError
