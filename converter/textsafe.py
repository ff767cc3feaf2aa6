"""Text from outside (registries, layouts, archives) made safe to print on a terminal.

Registry error messages, annotation values, tag and file names are chosen by
whoever made the image or runs the registry. Printed raw, an ESC sequence can
rewrite the user's terminal (move the cursor, retitle the window, hide a
warning), a CR can overwrite a line and a newline can forge one. `printable`
is applied where text leaves zconv (the error line in cli.main, the warning
formatter, the text reports), so the library keeps the exact strings.
"""

from __future__ import annotations

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(cp: int) -> str:
    c = chr(cp)
    if c in _NAMED:
        return _NAMED[c]
    if 0xDC80 <= cp <= 0xDCFF:  # a byte that was not UTF-8, kept by surrogateescape (file names)
        return f"\\x{cp - 0xDC00:02x}"
    if cp <= 0xFF:
        return f"\\x{cp:02x}"
    return f"\\u{cp:04x}"


# C0 controls, DEL, C1 controls (0x9b is a one-byte CSI on some terminals), lone surrogates (they
# cannot be encoded, so printing them raises), and the Unicode line separators.
_TABLE = {cp: _escape(cp) for cp in (*range(0x20), *range(0x7F, 0xA0), *range(0xD800, 0xE000), 0x2028, 0x2029)}


def printable(text: str) -> str:
    """`text` with control characters written as escapes (`\\x1b`, `\\r`, `\\x07`, ...), on one line."""
    return text.translate(_TABLE)


def printable_lines(lines: list[str]) -> str:
    """Lines joined by newlines, each made printable (a newline inside a line is escaped, not kept)."""
    return "\n".join(printable(line) for line in lines)
