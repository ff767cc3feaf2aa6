"""`zconv push SRC docker://HOST/REPO[:TAG]`: copy an image or index to a registry, blobs untouched.

Argument parsing and printing only; the work is in converter/push.py.
"""

from __future__ import annotations

import json
import sys
import threading

import typer

from converter.cli_app import app
from converter.commands import (
    ALL_HELP,
    CERT_DIR_HELP,
    CREDS_HELP,
    DIGESTFILE_HELP,
    PLATFORM_HELP,
    RETRY_DELAY_HELP,
    RETRY_TIMES_HELP,
    TLS_HELP,
    check_platform_flags,
    side_options,
    write_digestfile,
)
from converter.image.model import DEFAULT_CHUNK_SIZE
from converter.textsafe import printable


@app.command()
def push(
    source: str = typer.Argument(
        ..., help="image to push: oci:PATH[:TAG], oci-archive:..., docker-archive:..., docker://..."
    ),
    destination: str = typer.Argument(..., help="docker://HOST[:PORT]/REPO[:TAG|@DIGEST]"),
    creds: str = typer.Option(None, "--creds", help=CREDS_HELP, metavar="USER:PASS"),
    src_creds: str = typer.Option(
        None, "--src-creds", help="USER:PASSWORD for a docker:// source on another registry", metavar="USER:PASS"
    ),
    authfile: str = typer.Option(
        None, "--authfile", help="auth file to read credentials from (default: podman's lookup order)", metavar="PATH"
    ),
    tls_verify: str = typer.Option("true", "--tls-verify", help=TLS_HELP, metavar="BOOL"),
    cert_dir: str = typer.Option(None, "--cert-dir", help=CERT_DIR_HELP, metavar="DIR"),
    src_tls_verify: str = typer.Option(
        None, "--src-tls-verify", metavar="BOOL", help="Verify a docker:// source's TLS (default: --tls-verify)."
    ),
    dest_tls_verify: str = typer.Option(
        None, "--dest-tls-verify", metavar="BOOL", help="Verify the destination registry's TLS (default: --tls-verify)."
    ),
    retry_times: int = typer.Option(
        None, "--retry-times", "--retry", min=0, max=100, metavar="N", help=RETRY_TIMES_HELP
    ),
    retry_delay: str = typer.Option(None, "--retry-delay", metavar="DURATION", help=RETRY_DELAY_HELP),
    timeout: float = typer.Option(
        None, "--timeout", min=0.1, help="seconds without progress before a request counts as failed (default 60)"
    ),
    chunk_size: int = typer.Option(
        DEFAULT_CHUNK_SIZE // (1024 * 1024),
        "--chunk-size",
        min=1,
        help="MiB; larger blobs are uploaded in resumable chunks",
    ),
    jobs: int = typer.Option(3, "--jobs", "-j", min=1, max=16, help="blobs uploaded at the same time"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON report on stdout"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress messages"),
    digestfile: str = typer.Option(
        None,
        "--digestfile",
        metavar="FILE",
        help=DIGESTFILE_HELP + " The digest the tag points to: the index, or with --platform the chosen manifest.",
    ),
    platform: str = typer.Option(None, "--platform", metavar="OS/ARCH[/VARIANT]", help=PLATFORM_HELP),
    all_platforms: bool = typer.Option(False, "--all", help=ALL_HELP),
) -> None:
    """Push an image (or a whole index) to a registry with its blobs untouched; the tag is written last."""
    check_platform_flags(platform, all_platforms)
    opts = side_options(
        "dest", creds, tls_verify, dest_tls_verify, cert_dir, authfile, timeout, retry_times, retry_delay
    )
    sopts = side_options(
        "src", src_creds, tls_verify, src_tls_verify, cert_dir, authfile, timeout, retry_times, retry_delay
    )
    lock = threading.Lock()

    def log(m: str) -> None:
        if not (quiet or as_json):
            with lock:  # blobs upload in several threads: whole lines only
                sys.stderr.write(printable(m) + "\n")
                sys.stderr.flush()

    from converter.push import push_image  # the HTTP stack, imported only by the commands that use it

    report = push_image(
        source,
        destination,
        options=opts,
        src_options=sopts,
        chunk_size=chunk_size * 1024 * 1024,
        log=log,
        jobs=jobs,
        platform=platform,
    )
    if digestfile:
        write_digestfile(digestfile, f"{report.digest}\n")
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    elif not quiet:
        b = report.blobs
        where = report.destination if "@" in report.destination else f"{report.destination}@{report.digest}"
        print(
            printable(
                f"pushed {where} ({b['uploaded']} uploaded, {b['mounted']} mounted, {b['skipped']} already there)"
            )
        )
