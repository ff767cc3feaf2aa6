"""Command line: argument parsing and printing only; the work is in converter/.

Exit codes (converter/errors.py): 0 ok, 1 other failure, 2 bad input
(corrupt/truncated/mismatching image data), 3 layer not representable under
--strict, 4 registry error, 5 authentication, 6 verify failed, 64 usage.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from converter.chunked.writer import DEFAULT_LEVEL
from converter.cli_app import app
from converter.commands import parse_bool
from converter.errors import UsageError, ZconvError
from converter.image.model import TransportOptions

EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 other error; 2 bad input (corrupt, truncated or mismatching image data); "
    "3 layer not representable as zstd:chunked under --strict; 4 registry error; 5 authentication error; "
    "6 verification failed; 64 usage error."
)


def transport_options(creds: Optional[str], tls_verify: str, cert_dir: Optional[str],
                      authfile: Optional[str], timeout: Optional[float] = None) -> TransportOptions:
    return TransportOptions(
        creds=creds,
        tls_verify=parse_bool(tls_verify, "--tls-verify"),
        cert_dir=cert_dir,
        auth_file=authfile,
        timeout=timeout,
    )


TIMEOUT_HELP = "Seconds a registry request may go without progress (connect, headers and body together) before it fails (default 60)."


@app.command(
    epilog=(
        "Examples:\n\n"
        "  zconv convert oci:./img:v1 oci:./img:v1-zstd\n\n"
        "  podman save --format oci-archive -o app.tar localhost/app:1 && "
        "zconv convert oci-archive:app.tar docker://registry.example/app:1\n\n" + EXIT_CODES_HELP
    )
)
def convert(
    src: str = typer.Argument(..., help="Source image: oci:PATH[:TAG], oci-archive:PATH[:TAG], "
                              "docker-archive:PATH[:NAME:TAG] or docker://HOST/REPO[:TAG|@DIGEST]. "
                              "Without a tag, every tagged image of a layout/archive is converted."),
    dst: str = typer.Argument(..., help="Destination: oci:PATH[:TAG], oci-archive:PATH[:TAG] or docker://HOST/REPO:TAG. "
                              "Without a tag the source tags are kept. Left untouched if anything fails."),
    level: Optional[int] = typer.Option(None, "--level", "-l", min=1, max=22,
                                        help=f"zstd compression level (default {DEFAULT_LEVEL}: the lowest at which "
                                        "the output is no larger than containers/storage's writer)."),
    threads: int = typer.Option(0, "--threads", "-t", min=0,
                                help="Frames compressed in parallel; 0 = one per CPU. Output is identical for any value."),
    strict: bool = typer.Option(False, "--strict",
                                help="Fail (exit 3) instead of writing plain zstd when a layer cannot be zstd:chunked."),
    force: bool = typer.Option(False, "--force", help="Re-encode layers that are already zstd:chunked."),
    dual: bool = typer.Option(False, "--dual", help="Write an index with both the original and the zstd:chunked "
                              "instance of every image (clients without zstd keep using the original)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no summary; warnings and errors only."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON report on stdout: per layer the old and new "
                                  "digest and size, DiffID, whether it is chunked (or why not), seconds."),
    creds: Optional[str] = typer.Option(None, "--creds", help="USER:PASS for registries (source and destination)."),
    src_creds: Optional[str] = typer.Option(None, "--src-creds", help="USER:PASS for the source registry."),
    dest_creds: Optional[str] = typer.Option(None, "--dest-creds", help="USER:PASS for the destination registry."),
    tls_verify: str = typer.Option("true", "--tls-verify", metavar="BOOL",
                                   help="Verify registry TLS certificates (true/false)."),
    cert_dir: Optional[str] = typer.Option(None, "--cert-dir", help="Directory of CA certificates (*.crt) for registries."),
    authfile: Optional[str] = typer.Option(None, "--authfile", help="Registry credentials file (auth.json)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.1, help=TIMEOUT_HELP),
) -> None:
    """Convert every layer of an image (all tags, all platforms) to zstd:chunked.

    Configs stay byte for byte (DiffIDs and image IDs do not change); manifests
    become OCI manifests whose layers carry the zstd:chunked annotations;
    Docker schema 2 manifests and lists become OCI ones. The same input gives
    the same output digests.
    """
    from converter.convert import ConvertOptions, convert_refs
    from converter.progress import Progress, human

    progress = Progress(enabled=False if (quiet or json_out) else None)
    report = convert_refs(
        src,
        dst,
        ConvertOptions(level=level, threads=threads, strict=strict, force=force, dual=dual),
        progress,
        src_options=transport_options(src_creds or creds, tls_verify, cert_dir, authfile, timeout),
        dst_options=transport_options(dest_creds or creds, tls_verify, cert_dir, authfile, timeout),
    )
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
    for img in report.images:
        tag = img.tag if img.tag is not None else "(untagged)"
        typer.echo(f"{dst} tag {tag}: {img.digest}")


@app.command(epilog=EXIT_CODES_HELP)
def inspect(
    ref: str = typer.Argument(..., help="Image: oci:PATH[:TAG], oci-archive:PATH[:TAG], docker-archive:PATH[:NAME:TAG] "
                              "or docker://HOST/REPO[:TAG|@DIGEST]."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    creds: Optional[str] = typer.Option(None, "--creds", help="USER:PASS for the registry."),
    tls_verify: str = typer.Option("true", "--tls-verify", metavar="BOOL", help="Verify registry TLS (true/false)."),
    cert_dir: Optional[str] = typer.Option(None, "--cert-dir", help="Directory of CA certificates for the registry."),
    authfile: Optional[str] = typer.Option(None, "--authfile", help="Registry credentials file (auth.json)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.1, help=TIMEOUT_HELP),
) -> None:
    """Show manifests, layers, sizes, media types and zstd:chunked annotations.

    For zstd:chunked layers the TOC is read (one ranged read, checked against
    the manifest-checksum annotation) and summarised: entries, regular files,
    chunks, zero chunks and the size of the largest file. Exits 2 when a
    chunked layer's TOC cannot be read or does not match.
    """
    from converter.errors import BadInputError
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
        print(f"zconv: warning: {rc['message']}", file=sys.stderr)
    errs = toc_errors(result)
    if errs:
        raise BadInputError(f"{len(errs)} zstd:chunked layer(s) with a bad TOC; first: {errs[0]}")


# Command modules of other parts register themselves on import (one line each).
from converter.commands import login, push  # noqa: F401,E402  (registers push, login, logout)
from converter.commands import estimate as _estimate_cmd, verify as _verify_cmd  # noqa: F401,E402  (registers verify, estimate)


def _setup_logging() -> None:
    """Warnings of the library (logger "zconv") as `zconv: warning: ...` on stderr."""
    import logging

    log = logging.getLogger("zconv")
    if not any(getattr(h, "_zconv", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("zconv: %(levelname_lower)s: %(message)s"))
        handler.addFilter(_LevelLower())
        handler._zconv = True  # type: ignore[attr-defined]
        log.addHandler(handler)
        log.setLevel(logging.WARNING)
        log.propagate = False


class _LevelLower:
    def filter(self, record: object) -> bool:
        record.levelname_lower = record.levelname.lower()  # type: ignore[attr-defined]
        return True


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point: `zconv:error: <message>` and the error's exit code for ZconvError."""
    try:  # typer >= 0.20 vendors click
        from typer._click.exceptions import ClickException
        from typer._click.exceptions import UsageError as ClickUsageError
        from typer.exceptions import Abort
    except ImportError:  # pragma: no cover - older typer on plain click
        from click.exceptions import Abort, ClickException  # type: ignore[no-redef]
        from click.exceptions import UsageError as ClickUsageError  # type: ignore[no-redef]

    _setup_logging()
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="zconv", standalone_mode=False)
    except ZconvError as e:
        sys.stdout.flush()
        msg = " ".join(str(e).splitlines())
        print(f"zconv: error: {msg}", file=sys.stderr)
        return e.exit_code
    except ClickUsageError as e:
        e.show()
        return UsageError.exit_code
    except ClickException as e:
        e.show()
        return e.exit_code
    except (Abort, KeyboardInterrupt):
        print("zconv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
