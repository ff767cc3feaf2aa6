"""The numpy chunk scanner: the fallback when _rollsum.c was not built.

Vectorised. Only s2's low 16 bits matter, and u32 wrap-around keeps them
exact, so the whole computation runs in uint16:

    s1_k = 64*31 + W_k               (W_k: sum of the last 64 bytes)
    s2_k = s2_{k-1} + W_k - 64*d_k   (d_k: the byte leaving the window)

A zero run at the end of a block may continue in the next one, so decisions
about it are held back (it is all zeros, so only its length and the few
split candidates inside it are kept).
"""

from __future__ import annotations

import numpy as np

from converter.chunked.chunker import DATA, ZEROS
from converter.chunked.format import CHAR_OFFSET, HOLES_THRESHOLD, ROLLSUM_BITS, WINDOW

_MASK = (1 << ROLLSUM_BITS) - 1
_S2_INIT = (WINDOW * (WINDOW - 1) * CHAR_OFFSET) & 0xFFFF


class NumpyChunker:
    """Feed a file's payload in blocks; collect chunk ends as (end_offset, type).

    `feed()` returns the chunk ends now decided, and the offset up to which
    bytes are final (bytes past it are held zeros). `finish()` returns the
    remaining ends, the last one at the file size.
    """

    def __init__(self) -> None:
        self._s2 = np.uint16(_S2_INIT)
        self._window = np.zeros(WINDOW, dtype=np.uint8)
        self.pos = 0  # bytes fed so far
        self._run_start = -1  # start of the zero run reaching self.pos, -1 if none
        self._run_cands: list[int] = []  # split candidates inside that run (while < threshold)

    def _rollsum_candidates(self, arr: np.ndarray) -> np.ndarray:
        """Offsets (relative to arr, exclusive end) after which s2 says split."""
        ext = np.concatenate((self._window, arr)).astype(np.uint16)
        prefix = np.cumsum(ext, dtype=np.uint16)
        n = len(arr)
        # W_k = sum(ext[k+1 .. k+64]) = prefix[k+64] - prefix[k]
        w = prefix[WINDOW:] - prefix[:n]
        t = w - (ext[:n] << 6)
        s2 = np.cumsum(t, dtype=np.uint16)
        s2 += self._s2
        self._s2 = s2[-1]
        self._window = ext[n:].astype(np.uint8)
        return np.flatnonzero((s2 & _MASK) == _MASK) + 1

    def feed(self, data) -> tuple[list[tuple[int, str]], int]:
        arr = np.frombuffer(data, dtype=np.uint8)
        n = len(arr)
        base = self.pos
        if n == 0:
            return [], self._safe()
        cands = self._rollsum_candidates(arr) + base
        self.pos = base + n

        # Zero runs of this block: starts and ends (exclusive), absolute.
        z = np.concatenate(([False], arr == 0, [False]))
        edges = np.flatnonzero(z[1:] != z[:-1])
        starts, ends = edges[0::2] + base, edges[1::2] + base
        # A run starting at the block start continues the held run.
        if len(starts) and starts[0] == base and self._run_start >= 0:
            starts[0] = self._run_start
        cuts: list[tuple[int, str]] = []
        held_start = self._run_start
        held_cands = self._run_cands
        if held_start >= 0 and not (len(starts) and starts[0] == held_start):
            # The held run ended exactly at the block start.
            cuts.extend(self._close_run(held_start, base, held_cands))
        self._run_start, self._run_cands = -1, []

        long = (ends - starts) >= HOLES_THRESHOLD
        trailing = len(ends) and ends[-1] == self.pos
        holes_s = starts[long]
        holes_e = ends[long]
        if trailing:
            # The last run may go on in the next block: hold it back.
            tail_start = int(starts[-1])
            if long[-1]:
                holes_s, holes_e = holes_s[:-1], holes_e[:-1]
            limit = tail_start
        else:
            tail_start = -1
            limit = self.pos
        # Candidates outside holes and before the held tail are final.
        if held_start >= 0 and len(starts) and starts[0] == held_start:
            cands = np.concatenate((np.asarray(held_cands, dtype=np.int64), cands))
        keep = cands <= limit
        if len(holes_s):
            idx = np.searchsorted(holes_s, cands, side="left") - 1
            inside = (idx >= 0) & (cands > holes_s[np.maximum(idx, 0)]) & (cands <= holes_e[np.maximum(idx, 0)])
            keep &= ~inside
        final = cands[keep]
        cuts.extend(self._merge(final, holes_s, holes_e))
        if trailing:
            self._run_start = tail_start
            if (self.pos - tail_start) < HOLES_THRESHOLD:
                tc = cands[cands > tail_start]
                self._run_cands = tc.tolist()
        return cuts, self._safe()

    def _safe(self) -> int:
        return self._run_start if self._run_start >= 0 else self.pos

    @staticmethod
    def _merge(cands: np.ndarray, holes_s: np.ndarray, holes_e: np.ndarray) -> list[tuple[int, str]]:
        if not len(holes_s):
            return [(int(c), DATA) for c in cands]
        events = [(int(c), DATA) for c in cands]
        for s, e in zip(holes_s.tolist(), holes_e.tolist()):
            events.append((s, DATA))  # the data chunk before the hole ends here
            events.append((e, ZEROS))
        events.sort(key=lambda x: (x[0], x[1] == ZEROS))
        return events

    @staticmethod
    def _close_run(start: int, end: int, cands: list[int]) -> list[tuple[int, str]]:
        if end - start >= HOLES_THRESHOLD:
            return [(start, DATA), (end, ZEROS)]
        return [(c, DATA) for c in cands if c <= end]

    def finish(self) -> list[tuple[int, str]]:
        cuts: list[tuple[int, str]] = []
        if self._run_start >= 0:
            cuts.extend(self._close_run(self._run_start, self.pos, self._run_cands))
            self._run_start, self._run_cands = -1, []
        cuts.append((self.pos, DATA))
        return cuts
