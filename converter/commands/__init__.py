"""One module per command; each registers itself on converter.cli_app.app and only parses and prints.

Shared here: the registry options (podman's spelling and meaning) and the one
builder of TransportOptions from them. Errors are not handled here: a command
raises ZconvError and converter.cli.main prints it.
"""

from __future__ import annotations

from converter.errors import UsageError
from converter.image.model import TransportOptions

EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 other error; 2 bad input (corrupt, truncated or mismatching image data); "
    "3 layer not representable as zstd:chunked under --strict; 4 registry error; 5 authentication error; "
    "6 verification failed; 64 usage error; 70 internal error (please report it)."
)
CREDS_HELP = "USER:PASSWORD for the registry (overrides auth files)"
TLS_HELP = "true (default) or false: verify the registry's TLS certificate; false also allows plain HTTP"
CERT_DIR_HELP = "directory of CA certificates (*.crt) and client certificates (*.cert/*.key), as podman's --cert-dir"
AUTHFILE_HELP = "Registry credentials file (auth.json; default: podman's lookup order)."
TIMEOUT_HELP = (
    "Seconds a registry request may go without progress (connect, headers and body together) "
    "before it fails (default 60)."
)


def parse_bool(value: str, option: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise UsageError(f"{option} takes true or false, not {value!r}")


def transport_options(
    creds: str | None,
    tls_verify: str,
    cert_dir: str | None,
    authfile: str | None,
    timeout: float | None = None,
    tls_option: str = "--tls-verify",
) -> TransportOptions:
    """TransportOptions from the shared registry flags (--creds, --tls-verify, --cert-dir, --authfile, --timeout).

    `tls_option` names the flag the value came from (--src-tls-verify...) in the error for a bad value.
    """
    return TransportOptions(
        creds=creds,
        tls_verify=parse_bool(tls_verify, tls_option),
        cert_dir=cert_dir,
        auth_file=authfile,
        timeout=timeout,
    )
