"""Commands that live outside converter/cli.py; each module registers itself on converter.cli_app.app.

Shared here: the registry options (podman's spelling) and the error exit.
"""

from __future__ import annotations

import sys
from typing import Callable, NoReturn, TypeVar

import typer

from converter.errors import UsageError, ZconvError

T = TypeVar("T")


def parse_bool(value: str, option: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise UsageError(f"{option} takes true or false, not {value!r}")


def fail(err: ZconvError) -> NoReturn:
    """One line on stderr, the error type's exit code."""
    print(f"zconv: error: {err.message}", file=sys.stderr)
    raise typer.Exit(err.exit_code)


def run_command(fn: Callable[[], T]) -> T:
    """Run the body of a command; ZconvError -> one line and its exit code, Ctrl-C -> 130."""
    try:
        return fn()
    except ZconvError as e:
        fail(e)
    except KeyboardInterrupt:
        print("zconv: interrupted", file=sys.stderr)
        raise typer.Exit(130) from None


# Option declarations shared by push and login (podman's names and meanings).
CREDS_HELP = "USER:PASSWORD for the registry (overrides auth files)"
TLS_HELP = "true (default) or false: verify the registry's TLS certificate; false also allows plain HTTP"
CERT_DIR_HELP = "directory of CA certificates (*.crt) and client certificates (*.cert/*.key), as podman's --cert-dir"
