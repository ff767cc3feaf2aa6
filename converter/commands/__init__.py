"""One module per command; each registers itself on converter.cli_app.app and only parses and prints.

Shared here: the registry options (podman's spelling and meaning) and the one
builder of TransportOptions from them. Errors are not handled here: a command
raises ZconvError and converter.cli.main prints it.
"""

from __future__ import annotations

import re

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

RETRY_TIMES_HELP = (
    "Retries of a registry request after a 429/5xx answer or a dropped connection (skopeo's --retry-times, "
    "podman's --retry; default 3, 0 = fail at the first error)."
)
RETRY_DELAY_HELP = (
    "Wait this long before each retry: a duration (500ms, 2s, 1m30s) or seconds (default: 2s, doubling "
    "up to 30s; an explicit delay stays the same, as skopeo's and podman's)."
)
DIGESTFILE_HELP = "After success, write the digest of what was written to FILE (atomically)."
PLATFORM_HELP = (
    "Of a multi-platform source take only this instance, written as a plain manifest (skopeo's "
    "--override-os/--override-arch with --multi-arch system). A single-platform source is taken as it is."
)
ALL_HELP = "Every instance of a multi-platform source, the index kept (the default; skopeo's --all / --multi-arch all)."

_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_RETRY_DELAY = 3600.0


def parse_duration(value: str, option: str) -> float:
    """Seconds from a Go duration ("500ms", "2s", "1m30s") or a plain number of seconds."""
    v = value.strip()
    try:
        seconds = float(v)
    except ValueError:
        pos, seconds = 0, 0.0
        for m in _DURATION_RE.finditer(v):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
            pos = m.end()
        if pos != len(v) or not v:
            raise UsageError(f"{option} takes a duration such as 500ms, 2s or 1m30s, not {value!r}") from None
    if not (0.0 <= seconds <= MAX_RETRY_DELAY):  # also rejects nan
        raise UsageError(f"{option} {value!r}: must be between 0 and {MAX_RETRY_DELAY:g} seconds")
    return seconds


def check_platform_flags(platform: str | None, all_platforms: bool) -> None:
    """--platform and --all exclude each other; a malformed --platform is a usage error before anything is read."""
    if platform and all_platforms:
        raise UsageError("--platform and --all exclude each other")
    if platform:
        from converter.imageread import parse_platform

        parse_platform(platform)


def write_digestfile(path: str, text: str) -> None:
    """--digestfile: written whole (temporary file, then rename) after success; a failure is one line."""
    from converter.errors import ZconvError
    from converter.fsutil import write_file_atomic

    try:
        write_file_atomic(path, text.encode())
    except OSError as e:
        raise ZconvError(f"--digestfile {path}: {e.strerror or e}") from None


def parse_bool(value: str, option: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise UsageError(f"{option} takes true or false, not {value!r}")


def side_options(
    side: str,
    creds: str | None,
    tls_verify: str,
    side_tls_verify: str | None,
    cert_dir: str | None,
    authfile: str | None,
    timeout: float | None,
    retry_times: int | None,
    retry_delay: str | None,
) -> TransportOptions:
    """The options of one side ("src" or "dest") of a copy: --SIDE-tls-verify, when given, wins over --tls-verify."""
    return transport_options(
        creds,
        side_tls_verify or tls_verify,
        cert_dir,
        authfile,
        timeout,
        f"--{side}-tls-verify" if side_tls_verify else "--tls-verify",
        retry_times,
        retry_delay,
    )


def transport_options(
    creds: str | None,
    tls_verify: str,
    cert_dir: str | None,
    authfile: str | None,
    timeout: float | None = None,
    tls_option: str = "--tls-verify",
    retry_times: int | None = None,
    retry_delay: str | None = None,
) -> TransportOptions:
    """TransportOptions from the shared registry flags (--creds, --tls-verify, --cert-dir, --authfile, --timeout,
    --retry-times, --retry-delay).

    `tls_option` names the flag the value came from (--src-tls-verify...) in the error for a bad value.
    Without --retry-times and --retry-delay the registry layer's default RetryPolicy applies.
    """
    retry = None
    if retry_times is not None or retry_delay is not None:
        from converter.image.registry.http import RetryPolicy

        if retry_times is not None and retry_times < 0:
            raise UsageError(f"--retry-times takes a number >= 0, not {retry_times}")
        delay = parse_duration(retry_delay, "--retry-delay") if retry_delay is not None else None
        retry = RetryPolicy.from_flags(retry_times, delay)
    return TransportOptions(
        creds=creds,
        tls_verify=parse_bool(tls_verify, tls_option),
        cert_dir=cert_dir,
        auth_file=authfile,
        timeout=timeout,
        retry=retry,
    )
