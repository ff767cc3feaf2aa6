"""A plain, obviously-correct model of the reference chunker, byte by byte.

It follows the structure of containers/storage's compressor: a holes finder
that hands out bytes one at a time (or a whole run of >= 1024 zeros), and a
rolling checksum tested after every data byte. Slow on purpose; tests only.
"""

THRESHOLD = 1024


class RollSum:
    def __init__(self):
        self.s1 = 64 * 31
        self.s2 = 64 * 63 * 31
        self.window = [0] * 64
        self.wofs = 0

    def roll(self, ch):
        drop = self.window[self.wofs]
        self.s1 = (self.s1 + ch - drop) & 0xFFFFFFFF
        self.s2 = (self.s2 + self.s1 - 64 * (drop + 31)) & 0xFFFFFFFF
        self.window[self.wofs] = ch
        self.wofs = (self.wofs + 1) % 64

    def on_split(self):
        return self.s2 & 0xFFFF == 0xFFFF


def plain_chunks(data: bytes):
    """[(offset, size, 'zeros' or '')] for one file payload."""
    rs = RollSum()
    chunks = []
    start = 0
    i = 0
    n = len(data)

    def cut(end, typ):
        nonlocal start
        if end > start:
            chunks.append((start, end - start, typ))
            start = end

    while i < n:
        if data[i] == 0:
            j = i
            while j < n and data[j] == 0:
                j += 1
            if j - i >= THRESHOLD:
                cut(i, "")
                for _ in range(j - i):
                    rs.roll(0)
                cut(j, "zeros")
                i = j
                continue
            # a short run: ordinary data bytes
            for k in range(i, j):
                rs.roll(0)
                if rs.on_split():
                    cut(k + 1, "")
            i = j
            continue
        rs.roll(data[i])
        if rs.on_split():
            cut(i + 1, "")
        i += 1
    cut(n, "")
    return chunks
