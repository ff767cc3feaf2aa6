"""`zconv estimate OLD [OLD...] NEW [--json]`: bytes a partial pull of NEW costs a client that has OLD.

Argument parsing and printing only; the model is in converter/estimate.py.
"""

from __future__ import annotations

import contextlib
import json
from typing import Optional

import typer

from converter.cli_app import app
from converter.commands import (
    AUTHFILE_HELP,
    CERT_DIR_HELP,
    CREDS_HELP,
    TIMEOUT_HELP,
    TLS_HELP,
    parse_bool,
    transport_options,
)
from converter.errors import UsageError


@app.command(
    epilog="Exit codes: 0 estimate printed; 2 unreadable image data; 4/5 registry or authentication error; 64 usage error."
)
def estimate(
    refs: list[str] = typer.Argument(
        ...,
        help="OLD image(s) the client has, then the NEW image it pulls "
        "(oci:, oci-archive:, docker-archive: or docker:// references).",
    ),
    json_out: bool = typer.Option(
        False,
        "--json",
        help="Print one JSON object; its `total` has missing_bytes, "
        "total_bytes, fetch_bytes, skipped_percent and disk_bytes.",
    ),
    hard_links: str = typer.Option(
        "false",
        "--hard-links",
        metavar="BOOL",
        help="Model a store with use_hard_links=true (files are found by digest, "
        "owner, mode and xattrs instead of by digest alone).",
    ),
    reflinks: str = typer.Option(
        "true",
        "--reflinks",
        metavar="BOOL",
        help="Whether the client's store can reflink (btrfs, XFS). containers/storage "
        "v1.65+ reuses chunks of changed files only then; false models ext4/overlay stores.",
    ),
    platform: Optional[str] = typer.Option(
        None, "--platform", help="OS/ARCH or OS/ARCH/VARIANT to pick from indexes (default: this machine's)."
    ),
    creds: Optional[str] = typer.Option(None, "--creds", help=CREDS_HELP),
    tls_verify: str = typer.Option("true", "--tls-verify", metavar="BOOL", help=TLS_HELP),
    cert_dir: Optional[str] = typer.Option(None, "--cert-dir", help=CERT_DIR_HELP),
    authfile: Optional[str] = typer.Option(None, "--authfile", help=AUTHFILE_HELP),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.1, help=TIMEOUT_HELP),
) -> None:
    """Predict a partial pull of NEW by a client that already has OLD, decided the way containers/storage decides.

    Per layer and in total: the uncompressed bytes still missing out of the
    total (the figure containers/storage logs as "Missing X bytes out of Y"),
    the compressed bytes to fetch (TOC, tar-split and merged ranges), the
    percentage skipped, and the disk a hard-link-deduplicating store adds.
    Only the TOCs and tar-splits are read (range requests on registries).
    """
    from converter.estimate import estimate_sources, format_estimate
    from converter.image.refs import open_source, parse_ref

    if len(refs) < 2:
        raise UsageError("estimate needs at least one OLD image and the NEW image")
    options = transport_options(creds, tls_verify, cert_dir, authfile, timeout)
    with contextlib.ExitStack() as stack:
        sources = [stack.enter_context(open_source(parse_ref(r), options)) for r in refs]
        res = estimate_sources(
            sources[:-1],
            sources[-1],
            parse_bool(hard_links, "--hard-links"),
            platform,
            reflinks=parse_bool(reflinks, "--reflinks"),
        )
    if json_out:
        typer.echo(json.dumps(res.to_json(), indent=2))
    else:
        typer.echo(format_estimate(res))
