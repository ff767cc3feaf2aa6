"""One error type per kind of failure a user can act on.

Every message is one line that names the file, layer or reference and says
what went wrong; the CLI prints it as `zconv: error: <message>` and exits
with the class's exit code.
"""

from __future__ import annotations


class ZconvError(Exception):
    """Base class; `exit_code` is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadInputError(ZconvError):
    """Corrupt, truncated or hostile input (blobs, tars, layouts, manifests)."""

    exit_code = 2


class UsageError(ZconvError):
    """Bad command-line arguments or image references."""

    exit_code = 64


class IncompatibleLayerError(ZconvError):
    """A layer zstd:chunked cannot represent, raised only under --strict."""

    exit_code = 3


class RegistryError(ZconvError):
    """The registry refused or failed a request, or could not be reached."""

    exit_code = 4


class AuthError(RegistryError):
    """Credentials missing or rejected."""

    exit_code = 5


class VerifyError(ZconvError):
    """`zconv verify` found the image not consumable."""

    exit_code = 6
