"""zconv: convert container images to zstd:chunked layers."""

__version__ = "0.1.0"
