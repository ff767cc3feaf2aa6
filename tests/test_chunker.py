"""Chunk boundaries against the plain byte-by-byte model of the reference."""

import os
import random

import pytest

from converter.chunked import chunker
from converter.chunked.chunker import NativeChunker
from converter.chunked.chunker_numpy import NumpyChunker
from support.plain_chunker import plain_chunks

IMPLS = {"numpy": NumpyChunker, "native": NativeChunker}


@pytest.fixture(params=sorted(IMPLS))
def chunk_boundaries(request):
    if request.param == "native" and chunker._rollsum is None:
        pytest.fail("the native scanner was not built (is a C compiler installed?)")
    impl = IMPLS[request.param]
    return lambda data, block=1 << 22: chunker.chunk_boundaries(data, block, impl=impl)


def _payloads():
    rnd = random.Random(42)
    cases = {}
    for n in (0, 1, 511, 512, 513, 65536, 200_000):
        cases[f"random-{n}"] = rnd.randbytes(n)
    body = rnd.randbytes(50_000)
    for run in (1023, 1024, 1025):
        z = bytes(run)
        cases[f"zeros{run}-start"] = z + body
        cases[f"zeros{run}-middle"] = body[:25_000] + z + body[25_000:]
        cases[f"zeros{run}-end"] = body + z
        cases[f"zeros{run}-only"] = z
    cases["alternating-runs"] = b"".join(
        rnd.randbytes(rnd.randint(1, 3000)) + bytes(rnd.choice((1000, 1023, 1024, 1025, 5000))) for _ in range(60)
    )
    cases["text-like"] = b"".join(rnd.choice([b"the ", b"quick ", b"fox\n", b"\x00\x00"]) for _ in range(60_000))
    cases["constant"] = b"A" * 300_000
    cases["multi-mib"] = rnd.randbytes(3 << 20) + bytes(100_000) + rnd.randbytes(1 << 20)
    return cases


PAYLOADS = _payloads()


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_chunks_match_plain_model(name, chunk_boundaries):
    data = PAYLOADS[name]
    expected = plain_chunks(data)
    assert chunk_boundaries(data) == expected
    # Block boundaries must not matter, whatever they cut through.
    for block in (1, 63, 64, 1000, 4096) if len(data) < 300_000 else (65_536, 1_000_003):
        if block == 1 and len(data) > 20_000:
            continue
        assert chunk_boundaries(data, block=block) == expected, block


def test_random_structured_payloads_match_plain_model(chunk_boundaries):
    rnd = random.Random(7)
    for _ in range(60):
        parts = []
        for _ in range(rnd.randint(1, 8)):
            kind = rnd.random()
            if kind < 0.35:
                parts.append(bytes(rnd.choice((1, 100, 1023, 1024, 1025, 4000))))
            elif kind < 0.5:
                parts.append(b"\x00\x01" * rnd.randint(1, 3000))
            else:
                parts.append(rnd.randbytes(rnd.randint(1, 90_000)))
        data = b"".join(parts)
        block = rnd.choice((1000, 4096, 65536, 1 << 22))
        assert chunk_boundaries(data, block=block) == plain_chunks(data)


def test_chunks_cover_payload_and_average_near_64k(chunk_boundaries):
    data = os.urandom(8 << 20)
    chunks = chunk_boundaries(data)
    assert sum(size for _, size, _ in chunks) == len(data)
    assert all(a[0] + a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    # 16 rollsum bits: about one split every 64 KiB of random data.
    assert 60 <= len(chunks) <= 200


def test_hole_is_one_zeros_chunk_however_long(chunk_boundaries):
    data = b"a" * 10 + bytes(10 << 20) + b"b" * 10
    assert chunk_boundaries(data, block=1 << 20) == [(0, 10, ""), (10, 10 << 20, "zeros"), ((10 << 20) + 10, 10, "")]


def test_native_and_numpy_agree_on_large_random_payload():
    if chunker._rollsum is None:
        pytest.fail("the native scanner was not built")
    data = os.urandom(24 << 20)
    assert chunker.chunk_boundaries(data, impl=NativeChunker) == chunker.chunk_boundaries(data, impl=NumpyChunker)


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_one_piece_scan_matches_plain_model(name):
    """payload_chunks (one native call, as the writer uses for small files) gives the model's chunks."""
    assert chunker.payload_chunks(PAYLOADS[name]) == plain_chunks(PAYLOADS[name])


def test_vector_path_matches_byte_by_byte_path():
    """Fed in 64-byte blocks the native scanner never takes its 8-byte vector path; fed whole it does.

    Low-entropy data with zero runs of every length around the 8-byte
    groups and the hole threshold, and enough splits to matter.
    """
    if chunker._rollsum is None:
        pytest.fail("the native scanner was not built")
    rnd = random.Random(7)
    parts = []
    for _ in range(3000):
        parts.append(bytes(rnd.choice(b"\x00\x01\x02ab") for _ in range(rnd.randint(1, 300))))
        parts.append(bytes(rnd.choice((1, 7, 8, 9, 15, 16, 17, 1015, 1016, 1017, 1023, 1024, 1025))))
        parts.append(rnd.randbytes(rnd.randint(0, 2000)))
    data = b"".join(parts)
    whole = chunker.chunk_boundaries(data, impl=NativeChunker)
    assert sum(1 for c in whole if c[2] == "zeros") > 100 and len(whole) > 200
    assert chunker.chunk_boundaries(data, block=64, impl=NativeChunker) == whole
    assert chunker.payload_chunks(data) == whole
    assert plain_chunks(data[:400_000]) == chunker.payload_chunks(data[:400_000])
