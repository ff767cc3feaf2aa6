"""Progress and warnings on stderr.

On a terminal a single line is redrawn while a layer converts (at most ten
times a second) and a summary line is left per layer. Anywhere else, and
with --quiet, there is no progress output. Warnings (a layer written as plain
zstd, and why; logged by the writer on the "zconv" logger, which the CLI
prints as `zconv: warning: ...`) show in every mode: they matter in CI logs.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from converter.textsafe import printable


def human(n: float | None) -> str:
    """A byte count for people: `512 B`, `1.5 MiB`; `?` when unknown."""
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    def __init__(self, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled
        self._name = ""
        self._size = 0
        self._done = 0
        self._last = 0.0
        self._drawn = False

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False

    def layer_start(self, name: str, size: int) -> None:
        self._name, self._size, self._done = name, size, 0
        self._draw(force=True)

    def restart(self) -> None:
        """The writer re-reads its input (fallback to plain zstd)."""
        self._done = 0

    def advance(self, n: int) -> None:
        self._done += n
        if self.enabled:
            self._draw()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        pct = f"{100 * self._done / self._size:3.0f}%" if self._size else ""
        self._clear()
        self.stream.write(printable(f"{self._name}: {pct} {human(self._done)} of {human(self._size)}"))
        self.stream.flush()
        self._drawn = True

    def layer_done(self, old_size: int, new_size: int, chunked: bool, reason: str | None, seconds: float) -> None:
        # No warning here for a plain-zstd layer: the writer logs it (logger "zconv"), also when disabled.
        if not self.enabled:
            return
        self._clear()
        kind = "zstd:chunked" if chunked else "zstd"
        self.stream.write(
            printable(f"{self._name}: {human(old_size)} -> {human(new_size)} {kind} in {seconds:.1f}s") + "\n"
        )
        self.stream.flush()

    def note(self, msg: str) -> None:
        if self.enabled:
            self._clear()
            self.stream.write(printable(msg) + "\n")
            self.stream.flush()

    def warning(self, msg: str) -> None:
        self._clear()
        self.stream.write(printable(f"zconv: warning: {msg}") + "\n")
        self.stream.flush()
