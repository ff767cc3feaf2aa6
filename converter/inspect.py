"""`zconv inspect`: what an image is made of, and how chunked its layers are.

For zstd:chunked layers the TOC is fetched with one ranged read (the
manifest-position annotation says where it is), checked against the
manifest-checksum annotation, and summarised: entries, regular files,
chunks, zero chunks, bytes in the largest file. The layer itself is never
read whole, so inspecting a registry image costs a few small requests.
"""

from __future__ import annotations

from typing import Any, Callable

from converter.chunked.format import (
    CHUNK_TYPE_ZEROS,
    TARSPLIT_POSITION_KEY,
    TYPE_CHUNK,
    TYPE_REG,
    is_chunked,
    parse_position,
)
from converter.chunked.reader import TocEntry
from converter.errors import BadInputError
from converter.image.model import (
    INDEX_TYPES,
    INDEX_ZSTD_ANNOTATION,
    LAYER_TYPES,
    MANIFEST_TYPES,
    Descriptor,
    ImageSource,
    Index,
    Manifest,
    short,
)
from converter.imageread import Node, read_layer_toc, walk
from converter.progress import human
from converter.textsafe import printable_lines


def toc_stats(toc: dict[str, Any]) -> dict[str, int]:
    """Counts over a checked TOC (see the format spec, section 4)."""
    entries: list[TocEntry] = toc["entries"]
    files = chunks = zero_chunks = largest = 0
    for e in entries:
        if e.type == TYPE_REG:
            files += 1
            largest = max(largest, e.size)
            if e.size > 0:
                chunks += 1
                if e.chunk_type == CHUNK_TYPE_ZEROS:
                    zero_chunks += 1
        elif e.type == TYPE_CHUNK:
            chunks += 1
            if e.chunk_type == CHUNK_TYPE_ZEROS:
                zero_chunks += 1
    return {
        "entries": sum(1 for e in entries if e.type != TYPE_CHUNK),
        "toc_entries": len(entries),
        "regular_files": files,
        "chunks": chunks,
        "zero_chunks": zero_chunks,
        "largest_file_bytes": largest,
    }


def _layer_info(src: ImageSource, layer: Descriptor, with_toc: bool) -> dict[str, Any]:
    info: dict[str, Any] = {
        "mediaType": layer.media_type,
        "digest": layer.digest,
        "size": layer.size,
        "compression": LAYER_TYPES.get(layer.media_type, "unknown"),
        "chunked": is_chunked(layer),
    }
    if layer.annotations:
        info["annotations"] = dict(layer.annotations)
    if info["chunked"] and with_toc:
        try:
            toc, toc_len = read_layer_toc(src, layer)
            stats = toc_stats(toc)
            stats["toc_bytes"] = toc_len
            if TARSPLIT_POSITION_KEY in layer.annotations:
                try:
                    stats["tarsplit_bytes"] = parse_position(
                        layer.annotations[TARSPLIT_POSITION_KEY], 3, TARSPLIT_POSITION_KEY
                    )[1]
                except ValueError:
                    pass
            info["toc"] = stats
        except (BadInputError, ValueError) as e:
            info["toc_error"] = str(e)
    return info


def _node(src: ImageSource, desc: Descriptor, with_toc: bool) -> dict[str, Any]:
    def where(d: Descriptor, _label: str) -> str:
        return f"{src.description}: {short(d.digest)}"

    def check_type(d: Descriptor) -> None:
        if d.media_type not in INDEX_TYPES and d.media_type not in MANIFEST_TYPES:
            raise BadInputError(f"{where(d, '')}: unknown media type {d.media_type!r}")

    def head(node: Node) -> dict[str, Any]:
        return {"mediaType": node.desc.media_type, "digest": node.desc.digest, "size": node.desc.size}

    def on_manifest(node: Node) -> dict[str, Any]:
        doc = node.doc
        assert isinstance(doc, Manifest)
        out = head(node)
        out["kind"] = "manifest"
        out["config"] = {"mediaType": doc.config.media_type, "digest": doc.config.digest, "size": doc.config.size}
        out["layers"] = [_layer_info(src, layer, with_toc) for layer in doc.layers]
        out["total_layer_bytes"] = sum(layer.size for layer in doc.layers)
        out["chunked_layers"] = sum(1 for layer in out["layers"] if layer["chunked"])
        return out

    def on_index(node: Node, descend: Callable[[Descriptor, str], dict[str, Any]]) -> dict[str, Any]:
        assert isinstance(node.doc, Index)
        out = head(node)
        out["kind"] = "index"
        out["manifests"] = []
        for child in node.doc.manifests:
            entry: dict[str, Any] = {}
            if child.platform:
                entry["platform"] = str(child.platform)
            if child.annotations:
                entry["annotations"] = dict(child.annotations)
            check_type(child)
            entry.update(descend(child, node.label))
            out["manifests"].append(entry)
        return out

    check_type(desc)
    return walk(src, desc, where(desc, ""), on_manifest, on_index, where=where)


def _first_chunked(node: dict[str, Any]) -> dict[str, Any] | None:
    for layer in node.get("layers", []):
        if layer["chunked"]:
            return layer
    for child in node.get("manifests", []):
        found = _first_chunked(child)
        if found:
            return found
    return None


def inspect_source(src: ImageSource, with_toc: bool = True) -> dict[str, Any]:
    images = []
    for tag, desc in src.targets():
        images.append({"tag": tag, **_node(src, desc, with_toc)})
    result: dict[str, Any] = {"reference": src.description, "images": images}
    layer = next((x for x in (_first_chunked(i) for i in images) if x), None)
    if layer is not None:
        check = src.check_range_requests(
            Descriptor(media_type=layer.get("media_type", ""), digest=layer["digest"], size=layer["size"])
        )
        if check is not None:
            result["range_check"] = {"ok": check.ok, "message": check.message}
    return result


def toc_errors(result: dict[str, Any]) -> list[str]:
    errs: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        for layer in node.get("layers", []):
            if "toc_error" in layer:
                errs.append(layer["toc_error"])
        for child in node.get("manifests", []):
            walk(child)

    for img in result["images"]:
        walk(img)
    return errs


# ------------------------------------------------------------------ text output


def format_text(result: dict[str, Any]) -> str:
    lines: list[str] = []

    def manifest_lines(node: dict[str, Any], indent: str) -> None:
        cfg = node["config"]
        lines.append(f"{indent}config   {cfg['digest']}  {human(cfg['size'])}  {cfg['mediaType']}")
        n = len(node["layers"])
        lines.append(
            f"{indent}layers   {n}, {human(node['total_layer_bytes'])} total, {node['chunked_layers']} zstd:chunked"
        )
        for i, layer in enumerate(node["layers"], 1):
            kind = "zstd:chunked" if layer["chunked"] else layer["compression"]
            lines.append(f"{indent}  {i:>2}. {layer['digest']}  {human(layer['size']):>10}  {kind}")
            lines.append(f"{indent}      {layer['mediaType']}")
            for k, v in sorted(layer.get("annotations", {}).items()):
                lines.append(f"{indent}      {k}: {v}")
            if "toc" in layer:
                t = layer["toc"]
                lines.append(
                    f"{indent}      TOC: {t['entries']} entries, {t['regular_files']} regular files, "
                    f"{t['chunks']} chunks ({t['zero_chunks']} zero), largest file {human(t['largest_file_bytes'])}, "
                    f"TOC {human(t['toc_bytes'])}"
                )
            if "toc_error" in layer:
                lines.append(f"{indent}      TOC ERROR: {layer['toc_error']}")

    def node_lines(node: dict[str, Any], indent: str) -> None:
        if node["kind"] == "index":
            lines.append(f"{indent}index    {node['digest']}  {node['size']} B  {node['mediaType']}")
            for child in node["manifests"]:
                plat = child.get("platform", "?")
                zstd = " [zstd]" if child.get("annotations", {}).get(INDEX_ZSTD_ANNOTATION) == "true" else ""
                lines.append(f"{indent}- {plat}{zstd}")
                if "kind" in child:
                    node_lines(child, indent + "  ")
        else:
            lines.append(f"{indent}manifest {node['digest']}  {node['size']} B  {node['mediaType']}")
            manifest_lines(node, indent)

    for img in result["images"]:
        tag = img["tag"] if img["tag"] is not None else "(untagged)"
        lines.append(f"{result['reference']}  tag {tag}")
        node_lines(img, "  ")
    if "range_check" in result:
        rc = result["range_check"]
        lines.append(f"HTTP Range requests: {'ok' if rc['ok'] else 'NOT OK'}: {rc['message']}")
    return printable_lines(lines)
