"""`zconv verify REF [--full] [--json]`: will this image really be partially pulled?

Argument parsing and printing only; the checks are in converter/verify.py.
"""

from __future__ import annotations

import json
from typing import Optional

import typer

from converter.cli_app import app
from converter.commands import AUTHFILE_HELP, CERT_DIR_HELP, CREDS_HELP, TIMEOUT_HELP, TLS_HELP, transport_options
from converter.errors import VerifyError


@app.command(
    epilog="Exit codes: 0 every zstd:chunked layer is consumable; 6 a check failed; 2 unreadable image data; "
    "4/5 registry or authentication error; 64 usage error."
)
def verify(
    ref: str = typer.Argument(
        ...,
        help="Image: oci:PATH[:TAG], oci-archive:PATH[:TAG], docker-archive:PATH[:NAME:TAG] "
        "or docker://HOST/REPO[:TAG|@DIGEST]. Without a tag, every tagged image.",
    ),
    full: bool = typer.Option(
        False,
        "--full",
        help="On a registry, also download every zstd:chunked layer and check "
        "payloads, chunks and DiffIDs (local images always get the full check).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON report on stdout."),
    creds: Optional[str] = typer.Option(None, "--creds", help=CREDS_HELP),
    tls_verify: str = typer.Option("true", "--tls-verify", metavar="BOOL", help=TLS_HELP),
    cert_dir: Optional[str] = typer.Option(None, "--cert-dir", help=CERT_DIR_HELP),
    authfile: Optional[str] = typer.Option(None, "--authfile", help=AUTHFILE_HELP),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.1, help=TIMEOUT_HELP),
) -> None:
    """Check every zstd:chunked layer the way containers/storage does before a partial pull, and more.

    Metadata: annotations, limits, manifest-checksum, tar-split digest, footer,
    TOC entries (types, names, duplicates, chunk ranges) and that TOC and
    tar-split describe the same entries. Full: every payload range and chunk
    decompresses on its own to its size and digest, zero chunks are zeros,
    the tar rebuilt from tar-split and payloads and the whole decompressed
    blob both have the config's DiffID. On a registry it also says whether
    range requests are honoured.
    """
    from converter.image.refs import open_source, parse_ref
    from converter.verify import format_report, verify_source

    options = transport_options(creds, tls_verify, cert_dir, authfile, timeout)
    with open_source(parse_ref(ref), options) as src:
        report = verify_source(src, full=True if full else None, reference=ref)
    if json_out:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        typer.echo(format_report(report))
    if not report.ok:
        first = next(
            (p for i in report.images for p in i.problems + [q for layer in i.layers for q in layer.problems]),
            report.problems[0] if report.problems else "see the report",
        )
        raise VerifyError(f"{ref}: not consumable as zstd:chunked; first problem: {first}")
