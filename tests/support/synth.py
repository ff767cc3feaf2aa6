"""Generated layer tars for the writer's tests and benchmarks (deterministic).

- ``node_modules_tar(files, seed)``: a node_modules-like tree of many small
  text files (about 2 KB each) in package directories, with the odd symlink
  and hardlink; 150,000 files make a tar of about 445 MB. Written by
  Python's tarfile (PAX format, fixed times and owners), so the bytes depend
  only on the arguments. ``sizes`` sets the range of file sizes: ``(100,
  300)`` makes tiny files (1 KiB of tar each, a header block and a payload
  block) for measuring the writer's memory per entry.
- ``mixed_tar(seed)``: a few large files that cross the writer's internal
  block and frame sizes: random data, zero holes, data that ends in zeros,
  a file over the stream-frame size, many header-only entries in a row.

``cached(name, make)`` keeps a generated tar under the corpus directory
(tests/support/corpus.py), written once under a lock.
"""

from __future__ import annotations

import io
import os
import random
import tarfile
from pathlib import Path
from typing import Callable

MTIME = 1_700_000_000

_TOKENS = (
    "function var let const return if else for while this module exports require "
    "undefined null true false new typeof instanceof prototype Object Array String "
    "length push call apply bind arguments callback err data options value key index "
    "=== !== = + - * / ( ) { } [ ] ; , . => && || ! ? : 0 1 2 'use strict' "
).split(" ")


def _text_pool(rng: random.Random, size: int) -> bytes:
    words = []
    n = 0
    while n < size:
        w = rng.choice(_TOKENS)
        if rng.random() < 0.15:
            w = f"{w}{rng.randrange(1000)}"
        if rng.random() < 0.08:
            w += "\n" + " " * rng.choice((0, 2, 4, 6))
        words.append(w)
        n += len(w) + 1
    return " ".join(words).encode()


def _info(name: str, type_=tarfile.REGTYPE, size: int = 0, mode: int = 0o644, **kw) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = type_
    ti.size = size
    ti.mode = mode
    ti.mtime = MTIME
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def write_node_modules(f, files: int, seed: int = 1, sizes: tuple[int, int] = (300, 4000)) -> None:
    """Write the node_modules-like tar to a binary file object (file sizes drawn from `sizes`, inclusive)."""
    rng = random.Random(seed)
    pool = _text_pool(rng, 1 << 20)
    with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(_info("node_modules/", tarfile.DIRTYPE, mode=0o755))
        tf.addfile(_info("node_modules/.bin/", tarfile.DIRTYPE, mode=0o755))
        done = 0
        pkg = 0
        while done < files:
            base = f"node_modules/pkg-{pkg:05d}-{rng.randrange(1 << 20):05x}"
            pkg += 1
            tf.addfile(_info(base + "/", tarfile.DIRTYPE, mode=0o755))
            tf.addfile(_info(base + "/lib/", tarfile.DIRTYPE, mode=0o755))
            for i in range(min(rng.randint(4, 24), files - done)):
                sub = "lib/" if i > 1 else ""
                name = f"{base}/{sub}{'package.json' if i == 0 else f'file{i}.js'}"
                size = rng.randint(*sizes)
                off = rng.randrange(len(pool) - size)
                header = f"// {name} {done}\n".encode()
                data = (header + pool[off : off + size])[:size]
                tf.addfile(_info(name, size=len(data)), io.BytesIO(data))
                done += 1
            if pkg % 7 == 0:
                tf.addfile(_info(f"node_modules/.bin/cmd{pkg}", tarfile.SYMTYPE, linkname=f"../{base[13:]}/file2.js"))
            if pkg % 50 == 0 and done < files:
                tf.addfile(_info(f"{base}/lib/copy.js", tarfile.LNKTYPE, linkname=f"{base}/lib/file2.js"))


def node_modules_bytes(files: int, seed: int = 1, sizes: tuple[int, int] = (300, 4000)) -> bytes:
    buf = io.BytesIO()
    write_node_modules(buf, files, seed, sizes)
    return buf.getvalue()


def mixed_tar(seed: int = 7) -> bytes:
    """Large files crossing READ_BLOCK (4 MiB), STREAM_FRAME (16 MiB) and HEADER_FRAME_MAX (8 MiB)."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:

        def add(name: str, data: bytes, **kw) -> None:
            tf.addfile(_info(name, size=len(data), **kw), io.BytesIO(data))

        add("random-9m", rng.randbytes(9 << 20))
        holes = bytearray(rng.randbytes(6 << 20))
        for start, n in ((100, 5000), ((4 << 20) - 700, 3000), (5 << 20, 1023), ((5 << 20) + 4096, 1024)):
            holes[start : start + n] = bytes(n)
        add("holes", bytes(holes) + bytes(2 << 20))  # ends inside a hole
        add("zeros-only", bytes(5 << 20))
        add("big-stream", rng.randbytes(17 << 20) + bytes(4096) + rng.randbytes(1000))
        add("text", _text_pool(rng, 3 << 20))
        for i in range(17_000):  # over 8 MiB of headers in a row
            tf.addfile(_info(f"dirs/{i:05d}/" + "d" * 120 + "/", tarfile.DIRTYPE, mode=0o755))
        add("after-dirs", rng.randbytes(70_000))
        add("empty", b"")
    return buf.getvalue()


def cached(name: str, make: Callable[[Path], None]) -> Path:
    """The tar `name` under the corpus directory, made by make(tmp_path) once."""
    from support.corpus import CORPUS_DIR, _locked

    CORPUS_DIR.mkdir(parents=True, exist_ok=True)
    out = CORPUS_DIR / name
    with _locked(CORPUS_DIR / f".{name}.lock"):
        if not out.exists():
            tmp = out.with_name(out.name + ".part")
            make(tmp)
            os.replace(tmp, out)
    return out


def node_modules_tar(files: int = 150_000, seed: int = 1, sizes: tuple[int, int] = (300, 4000)) -> Path:
    def make(path: Path) -> None:
        with open(path, "wb") as f:
            write_node_modules(f, files, seed, sizes)

    # The default sizes keep the name the cached corpus already has.
    tag = "" if sizes == (300, 4000) else f"-{sizes[0]}-{sizes[1]}b"
    return cached(f"node-modules-{files}-{seed}{tag}.tar", make)
