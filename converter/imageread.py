"""Walking images: the one reader of manifest trees (index -> manifests -> config and layers).

convert, push, inspect, estimate and verify all go through `walk` (or
`iter_manifests`, built on it), so every command reads, parses and bounds a
manifest tree the same way: an index chain deeper than MAX_INDEX_DEPTH is
refused with one line wherever it is met. Layers are read through ranged
reads (seeks in layouts and archives, HTTP Range requests on registries).
"""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TypeVar

from converter.errors import BadInputError, UsageError
from converter.image.model import (
    INDEX_TYPES,
    INDEX_ZSTD_ANNOTATION,
    MANIFEST_TYPES,
    Descriptor,
    ImageSource,
    Index,
    Manifest,
    Platform,
    parse_manifest_or_index,
    short,
)
from converter.jsonload import load_json

if TYPE_CHECKING:
    from converter.chunked.reader import BlobAccess

# Real images nest one index (a multi-platform list, or podman's --dual
# index); a chain of more than a few is either a mistake or an attack on the
# recursion, so every command stops at the same depth.
MAX_INDEX_DEPTH = 4

T = TypeVar("T")


@dataclass(frozen=True)
class Node:
    """One manifest or index of a tree, read and parsed."""

    desc: Descriptor
    label: str  # how messages name this node
    data: bytes  # the bytes as stored (pushed and copied unchanged)
    doc: Manifest | Index
    depth: int  # 0 for the top; an index's children are one deeper


def read_node(src: ImageSource, desc: Descriptor, label: str, depth: int = 0, where: str | None = None) -> Node:
    """Read and parse one node; `where` (default `label`) names the document in parse errors."""
    if depth > MAX_INDEX_DEPTH:
        raise BadInputError(f"{label}: index chain deeper than {MAX_INDEX_DEPTH} levels")
    data = src.get_manifest(desc)
    return Node(desc, label, data, parse_manifest_or_index(data, desc.media_type, where or label), depth)


#: Index entries with this annotation are attestations (buildx), not images.
DOCKER_REFERENCE_TYPE = "vnd.docker.reference.type"


def pick_instance(manifests: Iterable[Descriptor], want: Platform) -> Descriptor | None:
    """The entry of an index for platform `want`, ranked as containers/image's chooseInstance.

    Matching platform first, then entries without one; zstd instances
    (podman's annotation) before others; then index order. Attestation
    manifests (docker's reference-type annotation) are never chosen. None if nothing matches.
    """
    ranked = []
    for pos, m in enumerate(manifests):
        if m.annotations.get(DOCKER_REFERENCE_TYPE):
            continue
        p = m.platform
        if p is None:
            prio = 1
        elif (
            p.os == want.os
            and p.architecture == want.architecture
            and (want.variant is None or p.variant in (None, want.variant))
        ):
            prio = 0
        else:
            continue
        ranked.append(((prio, m.annotations.get(INDEX_ZSTD_ANNOTATION) != "true", pos), m))
    return min(ranked, key=lambda r: r[0])[1] if ranked else None


def choose_instance(src: ImageSource, desc: Descriptor, label: str, platform: str) -> tuple[Descriptor, str]:
    """The manifest of an index (nested ones followed) for `platform` (OS/ARCH[/VARIANT]), and its label.

    Ranked by pick_instance. No match is a BadInputError naming the platforms
    the index has. A manifest is returned as it is.
    """
    want = parse_platform(platform)
    depth = 0
    while desc.media_type in INDEX_TYPES:
        index = read_node(src, desc, label, depth, where=f"{label} {short(desc.digest)}").doc
        depth += 1
        if not isinstance(index, Index):
            return desc, label
        best = pick_instance(index.manifests, want)
        if best is None:
            have = ", ".join(str(m.platform) for m in index.manifests if m.platform) or "none"
            raise BadInputError(f"{label}: no image for {platform} (it has: {have})")
        desc = best
        label = f"{label} [{desc.platform}]" if desc.platform else label
    return desc, label


def walk(
    src: ImageSource,
    desc: Descriptor,
    label: str,
    on_manifest: Callable[[Node], T],
    on_index: Callable[[Node, Callable[[Descriptor, str], T]], T],
    *,
    where: Callable[[Descriptor, str], str] | None = None,
    depth: int = 0,
) -> T:
    """Fold a manifest tree: `on_manifest(node)` for a manifest, `on_index(node, descend)` for an index.

    `descend(child, child_label)` walks a child one level deeper and returns
    its result, so the caller chooses which children to enter and in what
    order, and sees their results before it finishes the index (children
    first, as sinks need). `where(desc, label)` names a document in parse
    errors when that differs from its label.
    """

    def descend_from(d: int) -> Callable[[Descriptor, str], T]:
        def descend(child: Descriptor, child_label: str) -> T:
            return step(child, child_label, d + 1)

        return descend

    def step(d: Descriptor, lab: str, dep: int) -> T:
        node = read_node(src, d, lab, dep, where(d, lab) if where else None)
        if isinstance(node.doc, Index):
            return on_index(node, descend_from(dep))
        return on_manifest(node)

    return step(desc, label, depth)


def target_label(src: ImageSource, tag: str | None) -> str:
    """How messages name one of the images `src.targets()` lists."""
    return f"{src.description}" + (f" ({tag})" if tag and tag not in src.description else "")


def iter_manifests(src: ImageSource) -> Iterator[tuple[str, Descriptor, Manifest]]:
    """(label, descriptor, manifest) for every image the reference designates (indexes expanded)."""
    out: list[tuple[str, Descriptor, Manifest]] = []

    def on_manifest(node: Node) -> None:
        assert isinstance(node.doc, Manifest)
        out.append((node.label, node.desc, node.doc))

    def on_index(node: Node, descend: Callable[[Descriptor, str], None]) -> None:
        assert isinstance(node.doc, Index)
        for i, child in enumerate(node.doc.manifests):
            if child.media_type in MANIFEST_TYPES or child.media_type in INDEX_TYPES:
                plat = f" {child.platform}" if child.platform else ""
                descend(child, f"{node.label} [{i}{plat}]")

    for tag, desc in src.targets():
        walk(src, desc, target_label(src, tag), on_manifest, on_index)
        yield from out
        out.clear()


def layer_name(label: str, index: int, count: int, desc: Descriptor) -> str:
    """How every command names layer `index` (0-based) of the `count` layers of the image `label`."""
    return f"{label} layer {index + 1}/{count} ({short(desc.digest)})"


def config_diff_ids(data: bytes) -> list[str] | None:
    """The config's rootfs.diff_ids, or None when the config does not have a list of strings there."""
    try:
        ids = load_json(data, "config")["rootfs"]["diff_ids"]
    except (BadInputError, KeyError, TypeError):
        return None
    if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
        return ids
    return None


def config_platform(data: bytes) -> Platform | None:
    """The platform a config names (os, architecture, variant), or None when it names none."""
    try:
        doc = load_json(data, "config")
    except BadInputError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("os"), str) or not isinstance(doc.get("architecture"), str):
        return None
    if not doc["os"] or not doc["architecture"]:
        return None
    variant = doc.get("variant")
    return Platform(
        os=doc["os"],
        architecture=doc["architecture"],
        variant=variant if isinstance(variant, str) and variant else None,
    )


def layer_access(src: ImageSource, desc: Descriptor, name: str) -> BlobAccess:
    """Random access to a layer blob through `src.read_blob_range` (a Range request on registries)."""

    def fetch(offset: int, length: int) -> bytes:
        return src.read_blob_range(desc, offset, length)

    from converter.chunked.reader import BlobAccess  # the reader only for commands that read layers

    return BlobAccess(fetch, desc.size, name)


def host_platform() -> Platform:
    m = _platform.machine().lower()
    arch, variant = {
        "x86_64": ("amd64", None),
        "amd64": ("amd64", None),
        "aarch64": ("arm64", None),
        "arm64": ("arm64", None),
        "armv7l": ("arm", "v7"),
        "armv6l": ("arm", "v6"),
        "ppc64le": ("ppc64le", None),
        "s390x": ("s390x", None),
        "riscv64": ("riscv64", None),
        "i686": ("386", None),
    }.get(m, (m, None))
    return Platform("linux", arch, variant)


def parse_platform(value: str | None) -> Platform:
    if not value:
        return host_platform()
    parts = value.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(f"--platform {value!r}: expected OS/ARCH[/VARIANT]")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def read_layer_toc(src: ImageSource, layer: Descriptor) -> tuple[dict[str, Any], int]:
    """Fetch, check and parse the TOC of a zstd:chunked layer; returns (toc, compressed TOC length).

    The TOC dict has "version", "entries" (typed, compact TocEntry objects)
    and "tarSplitDigest". Only the TOC's byte range is read (a Range request
    on registries).
    """
    what = f"{src.description}: layer {short(layer.digest)}"
    from converter.chunked.reader import load_toc

    toc = load_toc(layer_access(src, layer, what), layer.annotations)
    return {"version": 1, "entries": toc.entries, "tarSplitDigest": toc.tarsplit_digest}, toc.annotations.toc.length
