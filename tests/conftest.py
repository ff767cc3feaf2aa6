"""Shared fixtures. tests/ is on sys.path, so `from support.x import ...` works."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.interop import InteropError, InteropTool, build_interop_binary  # noqa: E402
from support.registry import RegistryServer  # noqa: E402

# Fuzz settings and the time-bounded `make fuzz` run (inactive unless FUZZ_SECONDS is set).
pytest_plugins = ["support.fuzzing"]


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """Every test (and every zconv it starts) gets a cache of its own, never ~/.cache: what one
    test converted or pushed must not turn another's conversions into memo hits or mounts."""
    path = tmp_path_factory.mktemp("zconv-cache")
    monkeypatch.setenv("ZCONV_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def registry():
    """An anonymous docker-registry on 127.0.0.1 (plain http) for the whole session."""
    with RegistryServer() as reg:
        yield reg


@pytest.fixture(scope="session")
def interop_bin() -> Path:
    """The Go interop helper (tests/interop), built on first use; fails loudly if it can't."""
    try:
        return build_interop_binary()
    except InteropError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def interop(interop_bin) -> InteropTool:
    return InteropTool(interop_bin)
