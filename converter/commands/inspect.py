"""`zconv inspect REF`: manifests, layers and zstd:chunked TOC summaries of an image.

Argument parsing and printing only; the work is in converter/inspect.py.
"""

from __future__ import annotations

import json
import logging
from typing import Optional

import typer

from converter.cli_app import app
from converter.commands import AUTHFILE_HELP, EXIT_CODES_HELP, TIMEOUT_HELP, transport_options
from converter.errors import BadInputError


@app.command(epilog=EXIT_CODES_HELP)
def inspect(
    ref: str = typer.Argument(
        ...,
        help="Image: oci:PATH[:TAG], oci-archive:PATH[:TAG], docker-archive:PATH[:NAME:TAG] "
        "or docker://HOST/REPO[:TAG|@DIGEST].",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    creds: Optional[str] = typer.Option(None, "--creds", help="USER:PASS for the registry."),
    tls_verify: str = typer.Option("true", "--tls-verify", metavar="BOOL", help="Verify registry TLS (true/false)."),
    cert_dir: Optional[str] = typer.Option(None, "--cert-dir", help="Directory of CA certificates for the registry."),
    authfile: Optional[str] = typer.Option(None, "--authfile", help=AUTHFILE_HELP),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.1, help=TIMEOUT_HELP),
) -> None:
    """Show manifests, layers, sizes, media types and zstd:chunked annotations.

    For zstd:chunked layers the TOC is read (one ranged read, checked against
    the manifest-checksum annotation) and summarised: entries, regular files,
    chunks, zero chunks and the size of the largest file. Exits 2 when a
    chunked layer's TOC cannot be read or does not match.
    """
    from converter.image.refs import open_source, parse_ref
    from converter.inspect import format_text, inspect_source, toc_errors

    with open_source(parse_ref(ref), transport_options(creds, tls_verify, cert_dir, authfile, timeout)) as src:
        result = inspect_source(src)
    if json_out:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(format_text(result))
    rc = result.get("range_check")
    if rc is not None and not rc["ok"]:
        logging.getLogger("zconv").warning("%s", rc["message"])
    errs = toc_errors(result)
    if errs:
        raise BadInputError(f"{len(errs)} zstd:chunked layer(s) with a bad TOC; first: {errs[0]}")
