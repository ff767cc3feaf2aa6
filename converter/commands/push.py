"""`zconv push SRC docker://HOST/REPO[:TAG]`: copy an image or index to a registry, blobs untouched.

Argument parsing and printing only; the work is in converter/push.py.
"""

from __future__ import annotations

import json
import sys
import threading

import typer

from converter.cli_app import app
from converter.commands import CERT_DIR_HELP, CREDS_HELP, TLS_HELP, transport_options
from converter.image.registry import DEFAULT_CHUNK_SIZE, RetryPolicy
from converter.push import push_image
from converter.textsafe import printable


@app.command()
def push(
    source: str = typer.Argument(..., help="image to push: oci:PATH[:TAG], oci-archive:..., docker-archive:..., docker://..."),
    destination: str = typer.Argument(..., help="docker://HOST[:PORT]/REPO[:TAG|@DIGEST]"),
    creds: str = typer.Option(None, "--creds", help=CREDS_HELP, metavar="USER:PASS"),
    src_creds: str = typer.Option(None, "--src-creds", help="USER:PASSWORD for a docker:// source on another registry", metavar="USER:PASS"),
    authfile: str = typer.Option(None, "--authfile", help="auth file to read credentials from (default: podman's lookup order)", metavar="PATH"),
    tls_verify: str = typer.Option("true", "--tls-verify", help=TLS_HELP, metavar="BOOL"),
    cert_dir: str = typer.Option(None, "--cert-dir", help=CERT_DIR_HELP, metavar="DIR"),
    retry: int = typer.Option(3, "--retry", min=0, max=100, help="retries per request after 429/5xx/dropped connections"),
    retry_delay: float = typer.Option(2.0, "--retry-delay", min=0.0, max=300.0, help="first retry delay in seconds (doubles each time)"),
    timeout: float = typer.Option(60.0, "--timeout", min=0.1, help="seconds without progress before a request counts as failed"),
    chunk_size: int = typer.Option(DEFAULT_CHUNK_SIZE // (1024 * 1024), "--chunk-size", min=1, help="MiB; larger blobs are uploaded in resumable chunks"),
    jobs: int = typer.Option(3, "--jobs", "-j", min=1, max=16, help="blobs uploaded at the same time"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON report on stdout"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress messages"),
) -> None:
    """Push an image (or a whole index) to a registry with its blobs untouched; the tag is written last."""
    opts = transport_options(creds, tls_verify, cert_dir, authfile)
    sopts = transport_options(src_creds, tls_verify, cert_dir, authfile)
    lock = threading.Lock()

    def log(m: str) -> None:
        if not (quiet or as_json):
            with lock:  # blobs upload in several threads: whole lines only
                sys.stderr.write(printable(m) + "\n")
                sys.stderr.flush()

    report = push_image(
        source, destination, options=opts, src_options=sopts,
        retry=RetryPolicy(retries=retry, delay=retry_delay, max_delay=max(30.0, retry_delay)),
        timeout=timeout, chunk_size=chunk_size * 1024 * 1024, log=log, jobs=jobs,
    )
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    elif not quiet:
        b = report.blobs
        where = report.destination if "@" in report.destination else f"{report.destination}@{report.digest}"
        print(printable(f"pushed {where} ({b['uploaded']} uploaded, {b['mounted']} mounted, {b['skipped']} already there)"))

