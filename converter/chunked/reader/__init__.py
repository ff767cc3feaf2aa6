"""Parse and validate a zstd:chunked blob, trusting nothing in it.

The reader works on random access to the blob: a seekable file, or a
callable `fetch_range(offset, length) -> bytes` (a registry range request),
plus the layer descriptor's annotations, which is all the consumer
(containers/storage) looks at before it decides on a partial pull.

Every failure raises BadInputError naming the layer and, where it applies,
the TOC entry or tar-split line and the offset. Sizes are checked before
anything is read or allocated, and every decompression is bounded, so a
hostile blob costs at most its declared sizes in memory, disk and time.

Modules: `access` (blob access, bounded decompression, frames, footer),
`toc` (typed TOC entries, the streaming TOC parser, files and chunks),
`tarsplit` (the streamed tar-split, its tar headers, and the TOC/tar-split
agreement the consumer requires), `layer` (reading a whole layer's
metadata). Format constants and the annotation parser live in
converter.chunked.format; they are re-exported here for existing callers.
"""

from converter.chunked.format import (
    CHUNK_TYPES,
    DIGEST_RE,
    INT64_MAX,
    SHA256_EMPTY,
    TOC_TYPES,
    ChunkedAnnotations,
    Position,
    is_chunked,
    legacy_annotations,
    parse_annotations,
)
from converter.chunked.format import TYPE_CHUNK as CHUNK_TYPE
from converter.chunked.reader.access import (
    MAX_WINDOW_SIZE,
    BlobAccess,
    BlobSource,
    FetchRange,
    as_access,
    decompress_bounded,
    decompress_to_file,
    iter_decompressed,
    read_footer,
    read_frame,
)
from converter.chunked.reader.layer import (
    ChunkedLayer,
    Findings,
    Toc,
    load_layer,
    load_toc,
    parse_toc_frame,
    payload_end_of,
    read_chunk,
    read_tarsplit,
    read_tarsplit_bytes,
    read_toc,
    read_toc_bytes,
    read_toc_compressed,
)
from converter.chunked.reader.tarsplit import (
    TarSplitEntry,
    _HeaderError,
    check_toc_matches_tarsplit,
    compare_entry,
    expected_toc_fields,
    iter_tarsplit,
    iter_tarsplit_headers,
    parse_tar_header,
    tar_size_from_tarsplit,
    toc_type,
)
from converter.chunked.reader.toc import (
    PayloadChunk,
    TocEntry,
    TocFile,
    entry_from_json,
    format_time,
    group_files,
    normalize_time,
    parse_rfc3339,
    parse_toc,
    parse_toc_entries,
    toc_entries,
)
from converter.chunked.toc import go_clean

__all__ = [
    "CHUNK_TYPE",
    "CHUNK_TYPES",
    "DIGEST_RE",
    "INT64_MAX",
    "MAX_WINDOW_SIZE",
    "SHA256_EMPTY",
    "TOC_TYPES",
    "BlobAccess",
    "BlobSource",
    "ChunkedAnnotations",
    "ChunkedLayer",
    "FetchRange",
    "Findings",
    "PayloadChunk",
    "Position",
    "TarSplitEntry",
    "Toc",
    "TocEntry",
    "TocFile",
    "_HeaderError",
    "as_access",
    "check_toc_matches_tarsplit",
    "compare_entry",
    "decompress_bounded",
    "decompress_to_file",
    "entry_from_json",
    "expected_toc_fields",
    "format_time",
    "go_clean",
    "group_files",
    "is_chunked",
    "iter_decompressed",
    "iter_tarsplit",
    "iter_tarsplit_headers",
    "legacy_annotations",
    "load_layer",
    "load_toc",
    "normalize_time",
    "parse_annotations",
    "parse_rfc3339",
    "parse_tar_header",
    "parse_toc",
    "parse_toc_entries",
    "payload_end_of",
    "read_chunk",
    "read_footer",
    "read_frame",
    "read_tarsplit",
    "read_tarsplit_bytes",
    "read_toc",
    "read_toc_bytes",
    "read_toc_compressed",
    "parse_toc_frame",
    "tar_size_from_tarsplit",
    "toc_entries",
    "toc_type",
]
