"""Reading images without pulling them, shared by verify, estimate and inspect.

Manifests and indexes are read by descriptor, and layers through ranged reads
(seeks in layouts and archives, HTTP Range requests on registries), so the
read-only commands name, open and walk images the same way.
"""

from __future__ import annotations

from typing import Iterator

from converter.chunked.reader import BlobAccess
from converter.errors import BadInputError
from converter.image.model import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    Descriptor,
    ImageSource,
    Index,
    Manifest,
    parse_manifest_or_index,
    short,
)


def read_manifest(src: ImageSource, desc: Descriptor, label: str) -> Manifest | Index:
    """The manifest or index `desc` points to, parsed; `label` names it in errors."""
    return parse_manifest_or_index(src.get_manifest(desc), desc.media_type, label)


def layer_name(label: str, index: int, desc: Descriptor) -> str:
    """How messages name layer `index` of the image `label`."""
    return f"{label} layer {index} {short(desc.digest)}"


def layer_access(src: ImageSource, desc: Descriptor, name: str) -> BlobAccess:
    """Random access to a layer blob through `src.read_blob_range` (a Range request on registries)."""

    def fetch(offset: int, length: int) -> bytes:
        return src.read_blob_range(desc, offset, length)

    return BlobAccess(fetch, desc.size, name)


def iter_manifests(src: ImageSource, max_depth: int = 4) -> Iterator[tuple[str, Descriptor, Manifest]]:
    """(label, descriptor, manifest) for every image the reference designates (indexes expanded)."""

    def walk(desc: Descriptor, label: str, depth: int) -> Iterator[tuple[str, Descriptor, Manifest]]:
        if depth > max_depth:
            raise BadInputError(f"{label}: indexes nested too deeply")
        doc = read_manifest(src, desc, label)
        if isinstance(doc, Index):
            for i, child in enumerate(doc.manifests):
                if child.media_type in MANIFEST_TYPES or child.media_type in INDEX_TYPES:
                    plat = f" {child.platform}" if child.platform else ""
                    yield from walk(child, f"{label} [{i}{plat}]", depth + 1)
        else:
            yield label, desc, doc

    for tag, desc in src.targets():
        label = f"{src.description}" + (f" ({tag})" if tag and tag not in src.description else "")
        yield from walk(desc, label, 0)
