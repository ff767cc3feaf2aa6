"""Command line: the typer app with every command of converter/commands/, and the one error path.

Exit codes (converter/errors.py): 0 ok, 1 other failure, 2 bad input
(corrupt/truncated/mismatching image data), 3 layer not representable under
--strict, 4 registry error, 5 authentication, 6 verify failed, 64 usage,
70 internal error (a bug: please report it), 130 interrupted.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any, Optional

import typer

from converter.cli_app import app
from converter.commands import cache, convert, estimate, inspect, login, push, sync, verify  # noqa: F401  (register commands)
from converter.errors import UsageError, ZconvError
from converter.textsafe import printable

INTERNAL_ERROR = 70  # EX_SOFTWARE in sysexits.h
DEBUG_ENV = "ZCONV_DEBUG"


class _WarningFormatter(logging.Formatter):
    """`zconv: warning: <message>`, on one line, with control characters escaped."""

    def format(self, record: logging.LogRecord) -> str:
        msg = " ".join(record.getMessage().splitlines())
        return printable(f"zconv: {record.levelname.lower()}: {msg}")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (main() may run many times in one process)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _setup_logging() -> None:
    """Warnings of the library (logger "zconv") go to stderr as `zconv: warning: ...`."""
    log = logging.getLogger("zconv")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_WarningFormatter())
        log.addHandler(handler)
        log.setLevel(logging.WARNING)
        log.propagate = False


def _error(message: str) -> None:
    sys.stdout.flush()
    print(printable("zconv: error: " + " ".join(message.splitlines())), file=sys.stderr)


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point: run one command; every failure ends as one line on stderr and an exit code."""
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
        _error(str(e))
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
    except Exception as e:  # noqa: BLE001  (last resort: a bug must not show the user a traceback)
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        _error(
            f"internal error ({type(e).__name__}: {e}); this is a bug in zconv, please report it "
            f"with the command line (run with {DEBUG_ENV}=1 for a traceback)"
        )
        return INTERNAL_ERROR
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
