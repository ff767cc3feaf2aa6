"""`zconv convert SRC DST`: every layer of an image to zstd:chunked.

Argument parsing and printing only; the work is in converter/convert.py.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Optional

import typer

from converter.chunked.writer import DEFAULT_LEVEL
from converter.cli_app import app
from converter.commands import (
    AUTHFILE_HELP,
    EXIT_CODES_HELP,
    RETRY_DELAY_HELP,
    RETRY_TIMES_HELP,
    TIMEOUT_HELP,
    check_platform_flags,
    side_options,
    write_digestfile,
)
from converter.errors import UsageError, ZconvError
from converter.image.model import TransportOptions
from converter.textsafe import printable


@app.command(
    epilog=(
        "Examples:\n\n"
        "  zconv convert oci:./img:v1 oci:./img:v1-zstd\n\n"
        "  podman build -t localhost/app:1 . && "
        "zconv convert containers-storage:localhost/app:1 docker://registry.example/app:1\n\n" + EXIT_CODES_HELP
    )
)
def convert(
    src: str = typer.Argument(
        ...,
        help="Source image: oci:PATH[:TAG], oci-archive:PATH[:TAG], "
        "docker-archive:PATH[:NAME:TAG], docker://HOST/REPO[:TAG|@DIGEST] or "
        "containers-storage:IMAGE (podman's/buildah's local store). "
        "Without a tag, every tagged image of a layout/archive is converted.",
    ),
    dst: str = typer.Argument(
        ...,
        help="Destination: oci:PATH[:TAG], oci-archive:PATH[:TAG] or docker://HOST/REPO:TAG. "
        "Without a tag the source tags are kept. Left untouched if anything fails.",
    ),
    level: Optional[int] = typer.Option(
        None,
        "--level",
        "-l",
        min=1,
        max=22,
        help=f"zstd compression level (default {DEFAULT_LEVEL}: the lowest at which "
        "the output is no larger than containers/storage's writer).",
    ),
    threads: int = typer.Option(
        0,
        "--threads",
        "-t",
        min=0,
        help="Frames compressed in parallel; 0 = one per CPU. Output is identical for any value.",
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Fail (exit 3) instead of writing plain zstd when a layer cannot be zstd:chunked."
    ),
    force: bool = typer.Option(False, "--force", help="Re-encode layers that are already zstd:chunked."),
    dual: bool = typer.Option(
        False,
        "--dual",
        help="Write an index with both the original and the zstd:chunked "
        "instance of every image (clients without zstd keep using the original).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no summary; warnings and errors only."),
    json_out: bool = typer.Option(
        False,
        "--json",
        help="Print a JSON report on stdout: per layer the old and new "
        "digest and size, DiffID, whether it is chunked (or why not), seconds.",
    ),
    creds: Optional[str] = typer.Option(None, "--creds", help="USER:PASS for registries (source and destination)."),
    src_creds: Optional[str] = typer.Option(None, "--src-creds", help="USER:PASS for the source registry."),
    dest_creds: Optional[str] = typer.Option(None, "--dest-creds", help="USER:PASS for the destination registry."),
    tls_verify: str = typer.Option(
        "true", "--tls-verify", metavar="BOOL", help="Verify registry TLS certificates (true/false)."
    ),
    cert_dir: Optional[str] = typer.Option(
        None, "--cert-dir", help="Directory of CA certificates (*.crt) for registries."
    ),
    authfile: Optional[str] = typer.Option(None, "--authfile", help=AUTHFILE_HELP),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.1, help=TIMEOUT_HELP),
    retry_times: Optional[int] = typer.Option(
        None, "--retry-times", "--retry", min=0, max=100, metavar="N", help=RETRY_TIMES_HELP
    ),
    retry_delay: Optional[str] = typer.Option(None, "--retry-delay", metavar="DURATION", help=RETRY_DELAY_HELP),
    src_tls_verify: Optional[str] = typer.Option(
        None, "--src-tls-verify", metavar="BOOL", help="Verify the source registry's TLS (default: --tls-verify)."
    ),
    dest_tls_verify: Optional[str] = typer.Option(
        None, "--dest-tls-verify", metavar="BOOL", help="Verify the destination registry's TLS (default: --tls-verify)."
    ),
    digestfile: Optional[str] = typer.Option(
        None, "--digestfile", help="Write the digest of what was written (one line per image) to FILE."
    ),
    summary: Optional[str] = typer.Option(
        None,
        "--summary",
        help="Append a Markdown report to FILE (e.g. "
        "$GITHUB_STEP_SUMMARY): per layer old/new size, zstd:chunked or why not, time.",
    ),
    platform: Optional[str] = typer.Option(
        None,
        "--platform",
        metavar="OS/ARCH[/VARIANT]",
        help="Of a multi-platform source convert only this instance, written as a "
        "plain manifest (as skopeo --multi-arch system does for it).",
    ),
    all_platforms: bool = typer.Option(
        False,
        "--all",
        help="Every instance of a multi-platform source, the index "
        "kept (the default; as skopeo --all / --multi-arch all).",
    ),
    estimate_against: Optional[str] = typer.Option(
        None,
        "--estimate-against",
        metavar="REF",
        help="With --summary: also say what a client that has REF (the previous tag) fetches to pull the result.",
    ),
    cache_dir: Optional[str] = typer.Option(
        None,
        "--cache-dir",
        help="Frame cache and layer memo directory "
        "(default $ZCONV_CACHE_DIR, else $XDG_CACHE_HOME/zconv, else ~/.cache/zconv).",
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor fill the cache."),
    cache_max_size: Optional[str] = typer.Option(
        None, "--cache-max-size", metavar="SIZE", help="Prune the cache to SIZE (e.g. 500M, 2G; default 2G) at the end."
    ),
    reuse_from: Optional[list[str]] = typer.Option(
        None,
        "--reuse-from",
        metavar="REF",
        help="An earlier zstd:chunked image (any transport) whose frames "
        "are fetched with ranged reads instead of compressing again; repeatable.",
    ),
) -> None:
    """Convert every layer of an image (all tags, all platforms) to zstd:chunked.

    Configs stay byte for byte (DiffIDs and image IDs do not change); manifests
    become OCI manifests whose layers carry the zstd:chunked annotations;
    Docker schema 2 manifests and lists become OCI ones. The same input gives
    the same output digests.
    """
    from converter.commands.cache import parse_size
    from converter.convert import ConvertOptions, convert_refs
    from converter.progress import Progress, human

    check_platform_flags(platform, all_platforms)
    if estimate_against and not summary:
        raise UsageError("--estimate-against needs --summary FILE (it is part of the summary)")
    progress = Progress(enabled=False if (quiet or json_out) else None)
    dst_options = side_options(
        "dest", dest_creds or creds, tls_verify, dest_tls_verify, cert_dir, authfile, timeout, retry_times, retry_delay
    )
    started = time.monotonic()
    report = convert_refs(
        src,
        dst,
        ConvertOptions(
            level=level,
            threads=threads,
            strict=strict,
            force=force,
            dual=dual,
            platform=platform,
            cache=not no_cache,
            cache_dir=cache_dir,
            cache_max_size=parse_size(cache_max_size) if cache_max_size else None,
            reuse_from=tuple(reuse_from or ()),
        ),
        progress,
        src_options=side_options(
            "src", src_creds or creds, tls_verify, src_tls_verify, cert_dir, authfile, timeout, retry_times, retry_delay
        ),
        dst_options=dst_options,
    )
    seconds = time.monotonic() - started
    if digestfile:
        write_digestfile(digestfile, "".join(f"{img.digest}\n" for img in report.images))
    if summary:
        _write_summary(summary, report, src, dst, seconds, estimate_against, dst_options)
    if json_out:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    if quiet:
        return
    converted = [r for r in report.layers if r.action == "converted"]
    old = sum(r.old_size for r in converted)
    new = sum(r.new_size for r in converted)
    chunked = sum(1 for r in report.layers if r.chunked)
    typer.echo(
        f"converted {len(converted)} layer(s), {human(old)} -> {human(new)}; "
        f"{chunked} of {len(report.layers)} layer(s) zstd:chunked"
    )
    earlier = sum(1 for r in report.layers if r.action in ("present", "mounted"))
    if earlier:
        typer.echo(f"{earlier} layer(s) converted by an earlier run, not read again")
    fr = report.frames
    if fr and (fr["cache"] or fr["reuse"]):
        got = [
            f"{fr[k]['frames']} from {what}" for k, what in (("cache", "the cache"), ("reuse", "--reuse-from")) if fr[k]
        ]
        typer.echo(f"frames: {', '.join(got)}, {fr['compressed']['frames']} compressed")
    for img in report.images:
        tag = img.tag if img.tag is not None else "(untagged)"
        typer.echo(printable(f"{dst} tag {tag}: {img.digest}"))


def _write_summary(
    path: str, report: Any, src: str, dst: str, seconds: float, against: Optional[str], options: TransportOptions
) -> None:
    from converter.image.refs import open_source
    from converter.summary import append_summary, render_summary

    est = None
    if against:
        try:
            from converter.estimate import estimate_sources

            with open_source(against, options) as old, open_source(dst, options) as new:
                est = estimate_sources([old], new)
        except ZconvError as e:  # the image is written; a missing previous tag only loses that column
            print(printable(f"zconv: warning: no estimate against {against}: {e}"), file=sys.stderr)
    try:
        append_summary(path, render_summary(report, src, dst, seconds, est, against))
    except OSError as e:
        raise ZconvError(f"--summary {path}: {e.strerror}") from None
